"""Shard schema 2 (Zstd + predictor + fletcher32) and the upgrade from schema 1, on real HDF5 files.

The schema-1 inputs are written by the v1 path of the project's own writer (`schema_version=1`),
whose bytes are pinned below to what the pre-v2 writer produced, so "v1 still readable" is tested
on the files today's datasets are made of, not on a committed binary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from generator.dataset_format import (
    SCHEMA_VERSION,
    DatasetFormatError,
    SequenceRecord,
    ShardReader,
    read_manifest,
    sha256_file,
    shard_entry,
    shard_path,
    validate_shard,
    write_json_atomic,
    write_manifest,
    write_shard,
)
from generator.inspect_cli import main as inspect_main
from generator.manifest import PARTS_DIR, part_path
from generator.verify import main as verify_main
from tests.fixtures_data import make_sequence
from trainer.data import ItemRequest, ShardSetDataset, collate_sets

ROOT = Path(__file__).resolve().parent.parent
K, SIZE, SEED, PER_SHARD, NUM = 3, 24, 5, 2, 5
CONFIG = {"num_sequences": NUM, "sequences_per_shard": PER_SHARD, "sequence_length": K, "resolution": SIZE}
ATTRS = {"seed": SEED, "config": CONFIG, "generator_version": "t", "blender_version": "none"}
# sha256 of shard 0 of `v1_dataset` as written by generator/dataset_format.py before schema 2
# (commit 4e236a2), with the libhdf5 (2.0.0) that h5py 3.16.0 bundles.
V1_SHARD0_SHA256 = "5ba1df9dd9175de09d41c001abecc357acb9cc79bbdd9d73d3929db7be49d2bd"
V1_HDF5_VERSION = "2.0.0"


def records(first: int, count: int, with_target: bool = True) -> list[SequenceRecord]:
    """Deterministic sequences with two masks and float-valued params (JSON must round-trip)."""
    out = []
    for sid in range(first, first + count):
        inputs, target, occluder = make_sequence(np.random.default_rng([SEED, sid]), K, SIZE)
        shadow = np.roll(occluder, 3, axis=2)
        params = {"sequence_id": sid, "light": [0.1 * sid, 1 / 3, 2.5e-7], "name": "cover-é"}
        out.append(SequenceRecord(sid, inputs, target if with_target else None,
                                  {"occluder": occluder, "shadow": shadow}, params))
    return out


def write_dataset(dataset: Path, schema_version: int, parts: bool = True) -> Path:
    """NUM sequences in shards of PER_SHARD, as drs-generate leaves them: a part per shard (farm)
    or only manifest.json."""
    entries = []
    for index, first in enumerate(range(0, NUM, PER_SHARD)):
        recs = records(first, min(PER_SHARD, NUM - first))
        path = write_shard(shard_path(dataset, index), recs, schema_version=schema_version, **ATTRS)
        entry = shard_entry(dataset, path, first, len(recs))
        entries.append(entry)
        if parts:
            write_json_atomic(part_path(dataset, index), {
                "shard_index": index, **ATTRS, "device": "CPU", "shard": entry,
                "rejected": {"covers": [], "frames": [], "sequences": []}, "timings": {"render": 1.0}})
    if not parts:
        write_manifest(dataset, seed=SEED, config=CONFIG, shards=entries, schema_version=schema_version)
    return dataset


@pytest.fixture(params=["parts", "manifest"])
def v1_dataset(request, tmp_path) -> Path:
    return write_dataset(tmp_path / "v1", 1, parts=request.param == "parts")


def shard_bytes(dataset: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((dataset / "shards").glob("*.h5"))}


def assert_same(got: SequenceRecord, want: SequenceRecord) -> None:
    assert got.sequence_id == want.sequence_id and got.params == want.params
    assert np.array_equal(got.inputs, want.inputs)
    assert (got.target is None and want.target is None) or np.array_equal(got.target, want.target)
    assert got.masks.keys() == want.masks.keys()
    assert all(np.array_equal(got.masks[m], want.masks[m].astype(np.uint8)) for m in got.masks)


def flip_byte_in_chunk(path: Path, dataset: str, row: int) -> None:
    """Flip one bit in the middle of the stored chunk of `dataset` that holds sequence row `row`."""
    with h5py.File(path, "r") as f:
        first = row - row % f[dataset].chunks[0]
        info = f[dataset].id.get_chunk_info_by_coord((first,) + (0,) * (f[dataset].ndim - 1))
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------------------------
# round trip, determinism


@pytest.mark.parametrize("with_target", [True, False])
def test_v2_round_trip_every_dataset_checked(tmp_path, with_target):
    recs = records(10, 3, with_target)
    path = write_shard(tmp_path / "s.h5", recs, source="synthetic" if with_target else "real", **ATTRS)
    with ShardReader(path) as reader:
        assert reader.attrs["schema_version"] == SCHEMA_VERSION == 2
        assert reader.predictors == ({"inputs": "target_up", "target": "up"} if with_target else {"inputs": "up"})
        for row, want in enumerate(recs):
            assert_same(reader.read(row), want)
        sub = reader.read(1, frames=[2, 0])
        assert np.array_equal(sub.inputs, recs[1].inputs[[2, 0]])
        assert np.array_equal(sub.masks["shadow"], recs[1].masks["shadow"][[2, 0]])
        assert reader.read(0, masks=False).masks == {}
        storage = reader.storage()
    for name, info in storage.items():
        if name != "params":  # variable-length strings take no filters; they carry a crc32 instead
            assert info["fletcher32"] and info["filters"] == ["zstd(6)"], name
    assert validate_shard(path, 3) == []


def test_same_records_same_bytes_and_v2_smaller_than_v1(tmp_path):
    recs = records(0, 3)
    a = write_shard(tmp_path / "a.h5", recs, **ATTRS)
    b = write_shard(tmp_path / "b.h5", records(0, 3), **ATTRS)
    v1 = write_shard(tmp_path / "v1.h5", recs, schema_version=1, **ATTRS)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_size < v1.stat().st_size
    with pytest.raises(DatasetFormatError, match="schema_version 3"):
        write_shard(tmp_path / "c.h5", recs, schema_version=3, **ATTRS)


# ----------------------------------------------------------------------------------------------
# schema 1


def test_v1_writer_is_the_pre_v2_writer_and_stays_readable(v1_dataset):
    shard0 = shard_path(v1_dataset, 0)
    if h5py.version.hdf5_version == V1_HDF5_VERSION:
        assert sha256_file(shard0) == V1_SHARD0_SHA256
    with ShardReader(shard0) as reader:
        assert reader.attrs["schema_version"] == 1 and reader.predictors == {"inputs": "none", "target": "none"}
        for row, want in enumerate(records(0, 2)):
            assert_same(reader.read(row), want)
    assert validate_shard(shard0, 2) == []
    assert verify_main([str(v1_dataset), "--no-progress"]) == 0  # also merges the parts into manifest.json
    ds = ShardSetDataset(v1_dataset, augment=False)
    assert len(ds) == NUM and ds[ItemRequest(4, K, 0)]["sequence_id"] == 4


# ----------------------------------------------------------------------------------------------
# corruption: every chunk is checked on read


@pytest.mark.parametrize("dataset", ["inputs", "target", "masks/shadow", "sequence_id"])
def test_flipped_byte_in_a_chunk_raises_naming_file_dataset_and_sequence(tmp_path, dataset):
    path = write_shard(tmp_path / "s.h5", records(20, 3), **ATTRS)
    flip_byte_in_chunk(path, dataset, 1)
    if dataset == "sequence_id":  # one chunk for all rows, read when the shard is opened
        with pytest.raises(DatasetFormatError, match=r"s\.h5.*sequence_id"):
            ShardReader(path)
        return
    with ShardReader(path) as reader:
        with pytest.raises(DatasetFormatError, match=rf"s\.h5: dataset '{dataset}', sequence row 1 \(sequence_id 21\).*damaged"):
            reader.read(1)
        assert_same(reader.read(0), records(20, 1)[0])
        assert_same(reader.read(2), records(22, 1)[0])
    assert len(validate_shard(path)) == 1


def test_damaged_params_string_is_caught_by_its_crc(tmp_path):
    path = write_shard(tmp_path / "s.h5", records(0, 2), **ATTRS)
    raw = path.read_bytes()
    needle = b'"sequence_id": 1'
    assert raw.count(needle) == 1  # the JSON text sits uncompressed in HDF5's global heap
    path.write_bytes(raw.replace(needle, b'"sequence_id": 7'))
    with ShardReader(path) as reader:
        reader.read(0)
        with pytest.raises(DatasetFormatError, match=r"dataset 'params', sequence row 1 .*crc32"):
            reader.read(1)


def test_60kb_of_random_bytes_is_found(tmp_path):
    recs = [SequenceRecord(i, np.random.default_rng(i).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), None)
            for i in range(8)]  # noise: ~50 KB a sequence, so the damage spans whole chunks
    path = write_shard(tmp_path / "s.h5", recs, source="real", **ATTRS)
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 60_000] = np.random.default_rng(0).integers(0, 256, 60_000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    problems = validate_shard(path)
    assert len(problems) >= 2 and all("s.h5" in p and "sequence_id" in p for p in problems)


def test_trainer_raises_or_skips_and_counts_a_corrupt_chunk(tmp_path):
    dataset = write_dataset(tmp_path / "ds", SCHEMA_VERSION, parts=False)
    bad = shard_path(dataset, 1)
    flip_byte_in_chunk(bad, "inputs", 0)  # sequence_id 2
    raising = ShardSetDataset(dataset, augment=False)
    with pytest.raises(DatasetFormatError, match=rf"{bad.name}: dataset 'inputs', sequence row 0 \(sequence_id 2\)"):
        raising[ItemRequest(2, K, 0)]
    skipping = ShardSetDataset(dataset, augment=False, on_corrupt="skip")
    batch = collate_sets([skipping[ItemRequest(i, K, 0)] for i in range(NUM)])
    assert batch["skipped"] == 1 and batch["sequence_id"].tolist() == [0, 1, 3, 4]
    assert torch.equal(batch["inputs"][2], torch.from_numpy(records(3, 1)[0].inputs).permute(0, 3, 1, 2))


def test_drs_train_stops_on_or_skips_and_counts_one_flipped_byte(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.fixtures_data import make_tiny_dataset
    from trainer.train import train

    data = make_tiny_dataset(tmp_path / "ds", num_sequences=8, sequences_per_shard=4)
    flip_byte_in_chunk(shard_path(data, 1), "inputs", 2)  # sequence_id 6

    def run(*overrides: str) -> dict:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["debug=tiny", f"data.train={data}", *overrides])
        return train(cfg)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(DatasetFormatError, match=r"shard-00001\.h5: dataset 'inputs', sequence row 2 \(sequence_id 6\)"):
            run(f"out_dir={tmp_path / 'raise'}", "trainer.max_steps=8")
        # 8 steps of batch 2 are two epochs of the 8 sequences: the bad one comes up twice.
        summary = run(f"out_dir={tmp_path / 'skip'}", "trainer.max_steps=8", "data.on_corrupt=skip")
    finally:
        torch.set_num_threads(threads)
    assert summary["step"] == 8 and summary["skipped_items"] == 2


# ----------------------------------------------------------------------------------------------
# drs-verify --upgrade


def test_upgrade_gives_the_bytes_of_a_fresh_v2_write_and_is_idempotent(v1_dataset, tmp_path, capsys):
    fresh = shard_bytes(write_dataset(tmp_path / "fresh", SCHEMA_VERSION))
    assert verify_main(["--upgrade", str(v1_dataset), "--no-progress"]) == 0
    assert "upgraded 3 shard(s) to schema 2, 0 already were" in capsys.readouterr().err
    assert shard_bytes(v1_dataset) == fresh
    manifest = read_manifest(v1_dataset)
    assert manifest["schema_version"] == 2
    assert all("upgrade" not in e and e["sha256"] == sha256_file(v1_dataset / e["file"]) for e in manifest["shards"])
    for index in range(3):
        with ShardReader(shard_path(v1_dataset, index)) as reader:
            for row, want in enumerate(records(index * PER_SHARD, len(reader))):
                assert_same(reader.read(row), want)
    before = {p: p.read_bytes() for p in sorted(v1_dataset.rglob("*")) if p.is_file() and ".locks" not in p.parts}
    assert verify_main(["--upgrade", str(v1_dataset), "--no-progress"]) == 0
    assert "upgraded 0 shard(s) to schema 2, 3 already were" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in sorted(v1_dataset.rglob("*")) if p.is_file() and ".locks" not in p.parts}
    assert after == before
    assert not list(v1_dataset.rglob("*.partial"))


def test_upgrade_leaves_a_corrupt_v1_shard_alone_and_names_it(tmp_path, capsys):
    dataset = write_dataset(tmp_path / "v1", 1)
    bad = shard_path(dataset, 1)
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 1
    bad.write_bytes(bytes(raw))
    damaged = bad.read_bytes()
    assert verify_main(["--upgrade", str(dataset), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "upgraded 2 shard(s)" in err and "shard 1 (shards/shard-00001.h5): not upgraded: corrupt" in err
    assert bad.read_bytes() == damaged
    with ShardReader(shard_path(dataset, 2)) as reader:
        assert reader.attrs["schema_version"] == 2


# Each kill point is a real SIGKILL of the upgrading process, at one step of shard 1's upgrade.
_KILLER = """
import os, signal, sys
from pathlib import Path
import generator.upgrade as up
point, dataset = sys.argv[1], Path(sys.argv[2])
shard1 = dataset / "shards" / "shard-00001.h5"
def die():
    os.kill(os.getpid(), signal.SIGKILL)
import generator.dataset_format as df
real_write, real_replace, real_encode = up.write_shard, os.replace, df._encode
writing_shard1 = []
def write_shard(path, *args, **kwargs):
    writing_shard1[:] = [path.name.startswith(".shard-00001")]
    return real_write(path, *args, **kwargs)
def encode(*args):
    if point == "writing" and writing_shard1[0]:
        die()  # the new shard's temporary file is half written
    return real_encode(*args)
df._encode = encode
def replace(src, dst):
    if Path(dst) == shard1 and point == "before-rename":
        die()
    real_replace(src, dst)
    if Path(dst) == shard1 and point == "after-rename":
        die()
up.write_shard, up.os.replace = write_shard, replace
up.upgrade_dataset(dataset)
"""


@pytest.mark.parametrize("point", ["writing", "before-rename", "after-rename"])
def test_upgrade_killed_midway_leaves_a_whole_dataset_and_finishes_on_rerun(tmp_path, point, capsys):
    dataset = write_dataset(tmp_path / "v1", 1)
    v1_shard1 = shard_path(dataset, 1).read_bytes()
    run = subprocess.run([sys.executable, "-c", _KILLER, point, str(dataset)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    with ShardReader(shard_path(dataset, 0)) as reader:
        assert reader.attrs["schema_version"] == 2  # shard 0 was done before the kill
    if point == "after-rename":  # the new file is in place, recorded as the pending upgrade
        assert json.loads(part_path(dataset, 1).read_text())["shard"]["upgrade"]["sha256"] == sha256_file(shard_path(dataset, 1))
    else:
        assert shard_path(dataset, 1).read_bytes() == v1_shard1
    # Whatever the moment, the dataset verifies as whole, and a rerun finishes the job.
    assert verify_main([str(dataset), "--no-progress"]) == 0
    assert verify_main(["--upgrade", str(dataset), "--no-progress"]) == 0
    assert shard_bytes(dataset) == shard_bytes(write_dataset(tmp_path / "fresh", SCHEMA_VERSION))
    assert not [p for p in dataset.rglob("*.partial")]
    assert all("upgrade" not in json.loads(p.read_text())["shard"] for p in (dataset / PARTS_DIR).glob("*.json"))


# ----------------------------------------------------------------------------------------------
# drs-inspect


def test_inspect_prints_bytes_per_sequence_and_compression(tmp_path, capsys):
    v2 = write_dataset(tmp_path / "v2", SCHEMA_VERSION, parts=False)
    v1 = write_dataset(tmp_path / "v1", 1, parts=False)
    assert inspect_main([str(v2)]) == 0
    out = capsys.readouterr().out
    per_seq = sum(p.stat().st_size for p in (v2 / "shards").glob("*.h5")) / NUM / 1e6
    assert f"{NUM} sequences in 3 shard(s), {per_seq:.3f} MB/sequence" in out
    assert "schema 2: inputs" in out and "zstd(6) predictor target_up" in out
    assert "fletcher32 on every chunk" in out and "masks" in out
    assert inspect_main([str(shard_path(v1, 0))]) == 0
    out = capsys.readouterr().out
    assert "schema 1: inputs" in out and " lzf" in out and "no checksums" in out


def test_shards_of_the_first_schema_2_commit_still_read(tmp_path):
    """b07ff1b stored PNG's Sub (left neighbour) where schema 2 now stores Up; such files exist."""
    recs = records(0, 2)
    path = write_shard(tmp_path / "s.h5", recs, **ATTRS)
    sub = lambda x: np.concatenate([x[..., :1, :], x[..., 1:, :] - x[..., :-1, :]], axis=-2)  # noqa: E731
    with h5py.File(path, "r+") as f:
        f["inputs"].attrs["predictor"], f["target"].attrs["predictor"] = "target_sub", "sub"
        for row, rec in enumerate(recs):
            f["inputs"][row], f["target"][row] = sub(rec.inputs - rec.target), sub(rec.target)
    with ShardReader(path) as reader:
        for row, want in enumerate(recs):
            assert_same(reader.read(row), want)
