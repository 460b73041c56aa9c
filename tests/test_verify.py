"""drs-verify building blocks on tiny shards written with the project's own writer (no Blender)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from generator.dataset_format import (
    MANIFEST_NAME,
    SequenceRecord,
    read_manifest,
    sha256_file,
    shard_entry,
    shard_path,
    write_json_atomic,
    write_shard,
)
from generator.manifest import part_path
from generator.verify import main, quarantine, repair, verify_dataset
from tests.fixtures_data import make_sequence, make_tiny_dataset

NUM_SEQUENCES, PER_SHARD, K, SIZE, SEED = 5, 2, 2, 16, 7
CONFIG = {
    "num_sequences": NUM_SEQUENCES,
    "sequences_per_shard": PER_SHARD,
    "sequence_length": K,
    "resolution": SIZE,
}


def render_shard(dataset: Path, index: int) -> None:
    """Stands in for `drs-generate shard=I`: deterministic records, shard then part, as the pipeline writes them."""
    first = index * PER_SHARD
    ids = range(first, min(first + PER_SHARD, NUM_SEQUENCES))
    records = []
    for sid in ids:
        inputs, target, occluder = make_sequence(np.random.default_rng([SEED, sid]), K, SIZE)
        records.append(SequenceRecord(sid, inputs, target, {"occluder": occluder}, {"sequence_id": sid}))
    path = write_shard(
        shard_path(dataset, index),
        records,
        seed=SEED,
        config=CONFIG,
        generator_version="t",
        blender_version="none",
    )
    part = {
        "shard_index": index,
        "seed": SEED,
        "config": CONFIG,
        "generator_version": "t",
        "blender_version": "none",
        "device": "CPU",
        "shard": shard_entry(dataset, path, first, len(records)),
        "rejected": {"covers": [], "frames": [], "sequences": []},
        "timings": {"render": 1.0},
    }
    write_json_atomic(part_path(dataset, index), part)


@pytest.fixture
def farm_dataset(tmp_path) -> Path:
    """3 shards (2 + 2 + 1 sequences), one manifest part each, no manifest.json yet: a finished sweep."""
    dataset = tmp_path / "ds"
    for index in range(3):
        render_shard(dataset, index)
    return dataset


def _digests(dataset: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((dataset / "shards").glob("*.h5"))}


def test_finished_sweep_verifies_and_gets_its_manifest(farm_dataset, capsys):
    assert main([str(farm_dataset), "--no-progress"]) == 0
    assert "OK, 3 shards, 5 sequences" in capsys.readouterr().out
    manifest = read_manifest(farm_dataset)
    assert [s["file"] for s in manifest["shards"]] == [f"shards/shard-0000{i}.h5" for i in range(3)]
    assert manifest["missing_shards"] == [] and manifest["num_sequences"] == NUM_SEQUENCES


def test_flipped_byte_and_deleted_shard_are_named_and_repaired_to_identical_bytes(
    farm_dataset, tmp_path, capsys
):
    clean = _digests(farm_dataset)
    victim = shard_path(farm_dataset, 0)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    shard_path(farm_dataset, 2).unlink()

    assert main([str(farm_dataset), "--no-progress", "--json", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "shard-00000.h5): corrupt: sha256" in err and "shard-00002.h5): missing" in err
    assert "shard-00001" not in err
    assert json.loads((tmp_path / "r.json").read_text())["bad_shards"] == [0, 2]

    calls = []

    def render_shards(indices: list[int]) -> None:
        calls.append(list(indices))
        for index in indices:
            render_shard(farm_dataset, index)

    after = repair(farm_dataset, render_shards, progress=False)
    assert after.ok, after.summary()
    assert calls == [[0, 2]]  # exactly the bad ones, in one call (one launcher sweep)
    assert _digests(farm_dataset) == clean
    assert (farm_dataset / "quarantine" / "shards" / "shard-00000.h5").read_bytes() == bytes(data)


def test_missing_part_and_leftover_temp_files_do_not_pass_as_complete(farm_dataset):
    part_path(farm_dataset, 1).unlink()  # a task killed between writing the shard and its part
    (farm_dataset / "shards" / ".shard-00002.h5.abc.partial").write_bytes(b"torn")
    report = verify_dataset(farm_dataset, progress=False)
    assert [(p.index, p.kind) for p in report.problems] == [(1, "unrecorded")]
    assert read_manifest(farm_dataset)["missing_shards"] == [1]


def test_a_shard_never_finished_anywhere_is_missing(farm_dataset):
    """The last shard's task never ran: no file, no part; the config still says it should exist."""
    quarantine(farm_dataset, [2])
    report = verify_dataset(farm_dataset, progress=False)
    assert report.expected_shards == 3 and [(p.index, p.kind) for p in report.problems] == [(2, "missing")]


def test_recorded_hash_of_a_broken_file_still_fails_decoding(farm_dataset):
    path = shard_path(farm_dataset, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, then "recorded"
    part = json.loads(part_path(farm_dataset, 1).read_text())
    part["shard"].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    write_json_atomic(part_path(farm_dataset, 1), part)
    report = verify_dataset(farm_dataset, progress=False)
    assert report.bad_shards == [1] and {p.kind for p in report.problems} == {"invalid"}


def test_unparseable_part_is_reported_not_crashed_on(farm_dataset):
    part_path(farm_dataset, 0).write_text("{not json")
    report = verify_dataset(farm_dataset, progress=False)
    assert [(p.index, p.kind) for p in report.problems] == [(0, "unrecorded")]


def test_manifest_only_dataset(tmp_path, capsys):
    """Datasets without parts (drs-ingest, fixtures) are checked against manifest.json."""
    dataset = make_tiny_dataset(tmp_path / "t", num_sequences=4, k=2, size=16, sequences_per_shard=2)
    assert main([str(dataset), "--no-progress"]) == 0
    shard_path(dataset, 1).write_bytes(b"not hdf5")
    assert main([str(dataset), "--no-progress"]) == 1
    assert "shard-00001.h5): corrupt" in capsys.readouterr().err


def test_not_a_dataset_names_the_manifest(tmp_path, capsys):
    assert main([str(tmp_path), "--no-progress"]) == 2
    assert MANIFEST_NAME in capsys.readouterr().err
