"""drs-verify's per-shard checks one by one (generator/verify.py verify_shard), on real shards:
each kind of damage is named with the detail a user needs, and nothing sound is flagged.

Written from the gaps mutation testing found (tests/mutation.py): the end-to-end tests in
tests/test_verify.py exercise whole datasets and did not pin these details down."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generator.dataset_format import (
    DatasetFormatError,
    SequenceRecord,
    shard_entry,
    shard_path,
    write_manifest,
    write_shard,
)
from generator.verify import (
    ShardProblem,
    expected_entries,
    expected_shard_count,
    verify_dataset,
    verify_shard,
)

PER_SHARD = 2
CONFIG = {"sequences_per_shard": PER_SHARD}


def shard(root, index, ids):
    """Shard `index` holding sequences `ids`; returns its manifest entry as the pipeline records it."""
    recs = [SequenceRecord(i, np.full((2, 8, 8, 3), i, np.uint8), np.zeros((8, 8, 3), np.uint8),
                           {"occluder": np.zeros((2, 8, 8), np.uint8)}, {}) for i in ids]
    path = write_shard(shard_path(root, index), recs, seed=1, config=CONFIG, generator_version="t",
                       blender_version="none")
    return shard_entry(root, path, index * PER_SHARD, len(ids))


def problems(root, index, entry, config=CONFIG):
    return [(p.kind, p.detail) for p in verify_shard(root, index, entry, config)]


def test_a_sound_shard_passes_gaps_included(tmp_path):
    assert problems(tmp_path, 1, shard(tmp_path, 1, [2, 3])) == []
    assert problems(tmp_path, 2, shard(tmp_path, 2, [5])) == []  # sequence 4 rejected by QA: a gap is fine
    assert problems(tmp_path, 2, shard(tmp_path, 2, [5]), config=None) == []


def test_missing_and_unrecorded_files(tmp_path):
    assert problems(tmp_path, 0, None) == [("missing", "file absent and never recorded as finished")]
    entry = shard(tmp_path, 0, [0, 1])
    assert problems(tmp_path, 0, entry) == []
    assert problems(tmp_path, 0, None) == [
        ("unrecorded", "file present but no manifest part records it (an interrupted task?); "
                       "expected manifest.parts/shard-00000.json")]
    shard_path(tmp_path, 0).unlink()
    assert problems(tmp_path, 0, entry) == [("missing", "file absent")]
    [p] = verify_shard(tmp_path, 0, entry, CONFIG)
    assert p == ShardProblem(0, "shards/shard-00000.h5", "missing", "file absent")


def test_size_and_hash_mismatches_are_corrupt(tmp_path):
    entry = shard(tmp_path, 0, [0, 1])
    size = entry["bytes"]
    assert problems(tmp_path, 0, {**entry, "bytes": size + 1}) == [("corrupt", f"{size} bytes, recorded {size + 1}")]
    wrong = {**entry, "sha256": "ab" * 32}
    assert problems(tmp_path, 0, wrong) == [
        ("corrupt", f"sha256 {entry['sha256'][:12]}..., recorded {'ab' * 6}...")]


def test_a_pending_upgrade_record_vouches_for_the_new_bytes_only(tmp_path):
    """drs-verify --upgrade killed between its rename and its record: the part still names the old
    file and carries the new one's size and hash under `upgrade`."""
    entry = shard(tmp_path, 0, [0, 1])
    old = {**entry, "bytes": entry["bytes"] + 7, "sha256": "cd" * 32}
    assert problems(tmp_path, 0, {**old, "upgrade": {"bytes": entry["bytes"], "sha256": entry["sha256"]}}) == []
    assert problems(tmp_path, 0, {**old, "upgrade": {"bytes": entry["bytes"], "sha256": "ef" * 32}})[0][0] == "corrupt"
    assert problems(tmp_path, 0, {**old, "upgrade": {"bytes": 1, "sha256": entry["sha256"]}})[0][0] == "corrupt"


def test_a_wrong_count_is_invalid(tmp_path):
    entry = shard(tmp_path, 0, [0, 1])
    [(kind, detail)] = problems(tmp_path, 0, {**entry, "count": 3})
    assert kind == "invalid" and "3" in detail


def test_sequence_ids_must_be_unique_ascending_and_in_the_shard_slice(tmp_path):
    entry = shard(tmp_path, 1, [2, 3])
    assert problems(tmp_path, 1, {**entry, "first_sequence_id": 3}) == [
        ("invalid", "first_sequence_id 3, expected 2")]
    for ids, span in (([2, 4], "[2, 4)"), ([1, 2], "[2, 4)"), ([3, 2], "[2, 4)"), ([2, 2], "[2, 4)")):
        bad = shard(tmp_path, 1, ids)
        assert problems(tmp_path, 1, bad) == [
            ("invalid", f"sequence ids {ids}... not unique, ascending and in {span}")], ids
    # Without the config only the lower bound and the order are known.
    assert problems(tmp_path, 1, shard(tmp_path, 1, [2, 9]), config=None) == []
    assert problems(tmp_path, 1, shard(tmp_path, 1, [3, 2]), config=None) == [
        ("invalid", "sequence ids [3, 2]... not unique, ascending and in >= 2")]
    # An entry without first_sequence_id (an older manifest) starts at the shard's first id.
    no_first = {k: v for k, v in shard(tmp_path, 1, [2, 3]).items() if k != "first_sequence_id"}
    assert problems(tmp_path, 1, no_first) == []


# -- a dataset known only by its manifest.json (no manifest.parts/: drs-ingest output, or a copy) --


def manifest_only(root, shards, config, **extra):
    entries = [shard(root, i, ids) for i, ids in shards.items()]
    return write_manifest(root, seed=1, config=config, shards=entries, **extra)


def test_manifest_only_dataset_uses_the_manifest_config_and_missing_shards(tmp_path):
    # Shard 1 holds id 5, outside its slice [2, 4): only the manifest's config can tell.
    manifest_only(tmp_path, {0: [0, 1], 1: [2, 5]}, {"sequences_per_shard": PER_SHARD}, missing_shards=[3])
    count, entries, config = expected_entries(tmp_path)
    assert count == 4 and config == {"sequences_per_shard": PER_SHARD}
    assert entries[2] is None and entries[3] is None and entries[0]["file"] == "shards/shard-00000.h5"
    report = verify_dataset(tmp_path, merge=False, progress=False)
    assert report.dataset == str(tmp_path)
    assert [(p.index, p.kind) for p in report.problems] == [(1, "invalid"), (2, "missing"), (3, "missing")]


def test_a_manifest_entry_without_a_shard_file_name_is_an_error(tmp_path):
    manifest = manifest_only(tmp_path, {0: [0, 1]}, {})
    manifest["shards"][0]["file"] = "shards/other.h5"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetFormatError, match=rf"^{tmp_path / 'manifest.json'}: shard entry .*other.h5.* has no shard-N.h5 file$"):
        expected_entries(tmp_path)


def test_expected_shard_count():
    assert expected_shard_count({"num_sequences": 5, "sequences_per_shard": 2}, [0]) == 3
    assert expected_shard_count({"num_sequences": 4}, [0, 6, 2]) == 7  # incomplete config: what is known
    assert expected_shard_count(None, []) == 0


# -- the problem records themselves (drs-verify --json and the repair read index and file) --


def test_problems_name_their_shard_index_and_file(tmp_path):
    rel = "shards/shard-00001.h5"
    entry = shard(tmp_path, 1, [2, 3])
    assert verify_shard(tmp_path, 1, {**entry, "first_sequence_id": 3}, CONFIG) == [
        ShardProblem(1, rel, "invalid", "first_sequence_id 3, expected 2")]
    bad = shard(tmp_path, 1, [3, 2])
    assert verify_shard(tmp_path, 1, bad, CONFIG) == [
        ShardProblem(1, rel, "invalid", "sequence ids [3, 2]... not unique, ascending and in [2, 4)")]
    [p] = verify_shard(tmp_path, 1, {**bad, "count": 3}, CONFIG)
    assert (p.index, p.file, p.kind) == (1, rel, "invalid")


def test_only_the_first_five_ids_are_quoted(tmp_path):
    ids = [0, 1, 2, 3, 4, 5, 5]
    entry = shard(tmp_path, 0, ids)
    assert problems(tmp_path, 0, entry, config={"sequences_per_shard": 10}) == [
        ("invalid", "sequence ids [0, 1, 2, 3, 4]... not unique, ascending and in [0, 10)")]


def test_the_recorded_file_name_is_the_one_checked(tmp_path):
    """A manifest entry names its file; verify_shard reads that one, not the default shard name."""
    entry = shard(tmp_path, 0, [0, 1])
    shard_path(tmp_path, 0).rename(tmp_path / "shards" / "renamed.h5")
    assert problems(tmp_path, 0, {**entry, "file": "shards/renamed.h5"}) == []
    (tmp_path / "shards" / "renamed.h5").unlink()
    assert verify_shard(tmp_path, 0, {**entry, "file": "shards/renamed.h5"}, CONFIG) == [
        ShardProblem(0, "shards/renamed.h5", "missing", "file absent")]


def test_a_manifest_without_shards_lists_only_missing_ones(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"schema_version": 2, "config": {"num_sequences": 4, "sequences_per_shard": 2}, "missing_shards": [0, 1]}))
    count, entries, _ = expected_entries(tmp_path)
    assert count == 2 and entries == {0: None, 1: None}


def test_a_manifest_entry_without_a_file_key_is_an_error(tmp_path):
    manifest = manifest_only(tmp_path, {0: [0, 1]}, {})
    del manifest["shards"][0]["file"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetFormatError, match="has no shard-N.h5 file$"):
        expected_entries(tmp_path)


def test_shard_files_on_disk_count_when_the_config_does_not_say(tmp_path):
    manifest_only(tmp_path, {0: [0, 1]}, {})  # no num_sequences: the count comes from what exists
    shard(tmp_path, 3, [6, 7])  # an unrecorded shard 3 on disk
    count, entries, _ = expected_entries(tmp_path)
    assert count == 4 and entries[3] is None and entries[0]["file"] == "shards/shard-00000.h5"


def test_parts_without_a_config_give_none(tmp_path):
    from generator.dataset_format import write_json_atomic
    from generator.manifest import part_path

    entry = shard(tmp_path, 0, [0, 1])
    write_json_atomic(part_path(tmp_path, 0), {"shard_index": 0, "shard": entry})
    assert expected_entries(tmp_path) == (1, {0: entry}, None)


def test_an_empty_shard_made_elsewhere_is_checked_not_crashed_on(tmp_path):
    """write_shard refuses empty shards, but another tool may leave one; its (absent) ids are no problem
    of their own, and the shard starts where its slice does."""
    import h5py

    from generator.dataset_format import shard_entry

    path = shard_path(tmp_path, 0)
    recs = [SequenceRecord(0, np.zeros((2, 8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8),
                           {"occluder": np.zeros((2, 8, 8), np.uint8)}, {})]
    write_shard(path, recs, seed=1, config=CONFIG, generator_version="t", blender_version="none",
                schema_version=1)
    with h5py.File(path, "r+") as f:
        for name in ("inputs", "target", "masks/occluder", "sequence_id", "params"):
            shape, dtype = f[name].shape, f[name].dtype
            del f[name]
            f.create_dataset(name, shape=(0, *shape[1:]), maxshape=(None, *shape[1:]), dtype=dtype,
                             chunks=(1, *shape[1:]))
    entry = {k: v for k, v in shard_entry(tmp_path, path, 0, 0).items() if k != "first_sequence_id"}
    assert problems(tmp_path, 0, entry) == []
