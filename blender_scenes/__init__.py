"""The only package that imports bpy. Its modules run inside spawned render workers."""
