"""Scene sampling, covers, shard writing and the farm-facing commands. Never imports bpy."""

__version__ = "0.1.0"
