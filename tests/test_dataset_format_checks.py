"""The shard format's refusals and diagnoses one by one (generator/dataset_format.py): what the
writer refuses and why, how a damaged or foreign shard is named, and the exact on-disk details
other readers rely on (JSON layout, attribute types, the manifest's keys).

Written from the survivors of mutation testing (tests/mutation.py); tests/test_dataset_format_v2.py
covers round trips, bytes and corruption end to end.
"""

from __future__ import annotations

import json
import zlib

import h5py
import numpy as np
import pytest

from generator.dataset_format import (
    DatasetFormatError,
    SequenceRecord,
    ShardReader,
    read_manifest,
    validate_shard,
    write_json_atomic,
    write_manifest,
    write_shard,
)

K, S = 3, 8


def rec(sid: int = 0, *, inputs=None, target="default", masks=None) -> SequenceRecord:
    inputs = np.full((K, S, S, 3), sid, np.uint8) if inputs is None else inputs
    target = np.full((S, S, 3), 100 + sid, np.uint8) if isinstance(target, str) else target
    masks = {"occluder": np.zeros((K, S, S), np.uint8)} if masks is None else masks
    return SequenceRecord(sid, inputs, target, masks, {"sequence_id": sid})


def write(path, records, **kw):
    args = dict(seed=1, config={"a": 1}, generator_version="t", blender_version="none")
    return write_shard(path, records, **{**args, **kw})


# ----------------------------------------------------------------------------------------------
# what the writer refuses


@pytest.mark.parametrize("field, value, got", [
    ("inputs", np.zeros((S, S, 3), np.uint8), f"uint8 {(S, S, 3)}"),           # no K axis
    ("inputs", np.zeros((K, S, S, 3), np.float32), f"float32 {(K, S, S, 3)}"),   # right shape, wrong type
    ("inputs", np.zeros((K, S, S, 4), np.uint8), f"uint8 {(K, S, S, 4)}"),      # RGBA
    ("target", np.zeros((S, S, 3), np.uint16), f"uint16 {(S, S, 3)}"),
    ("target", np.zeros((S, S), np.uint8), f"uint8 {(S, S)}"),
])
def test_inputs_and_target_must_be_uint8_rgb(tmp_path, field, value, got):
    expected = "uint8 (K, H, W, 3)" if field == "inputs" else f"uint8 {(S, S, 3)}"
    with pytest.raises(DatasetFormatError) as exc:
        write(tmp_path / "s.h5", [rec(4, **{field: value})])
    assert str(exc.value) == f"sequence 4: {field} must be {expected}, got {got}"


def test_every_sequence_has_the_first_ones_shape(tmp_path):
    with pytest.raises(DatasetFormatError) as exc:
        write(tmp_path / "s.h5", [rec(0), rec(1, inputs=np.zeros((K + 1, S, S, 3), np.uint8))])
    assert str(exc.value) == f"sequence 1: inputs {(K + 1, S, S)} differ from the shard's first sequence {(K, S, S)}"


def test_a_mask_must_match_the_inputs(tmp_path):
    with pytest.raises(DatasetFormatError) as exc:
        write(tmp_path / "s.h5", [rec(0, masks={"occluder": np.zeros((K, S, S + 1), np.uint8)})])
    assert str(exc.value) == f"sequence 0: mask occluder must be {(K, S, S)}, got {(K, S, S + 1)}"


def test_shard_level_refusals_name_the_file(tmp_path):
    path = tmp_path / "s.h5"
    cases = [
        ([], {}, f"{path}: refusing to write a shard with no sequences"),
        ([rec(0)], {"source": "web"}, f"{path}: source must be one of ('synthetic', 'real'), got 'web'"),
        ([rec(0), rec(1, target=None)], {}, f"{path}: either every sequence of a shard has a target or none has"),
        ([rec(0), rec(1, masks={})], {}, f"{path}: sequence 1 has masks [], expected ['occluder']"),
    ]
    for records, kw, message in cases:
        with pytest.raises(DatasetFormatError) as exc:
            write(path, records, **kw)
        assert str(exc.value) == message
    assert not path.exists()


def test_sequence_ids_and_the_params_checksum_have_fixed_types(tmp_path):
    """Other readers (h5dump, a C++ loader) rely on the documented types, not on NumPy's defaults."""
    path = write(tmp_path / "s.h5", [rec(0), rec(1)])
    with h5py.File(path, "r") as f:
        assert f["sequence_id"].dtype == np.int64
        crc = f["params"].attrs["crc32"]
        assert crc.dtype == np.uint32
        params = [p.decode() for p in f["params"][()]]
        assert crc.tolist() == [zlib.crc32(p.encode()) for p in params]
        assert json.loads(params[1]) == {"sequence_id": 1}


# ----------------------------------------------------------------------------------------------
# reading: what a damaged or foreign shard says


def test_string_attributes_stored_as_bytes_are_decoded_as_utf8(tmp_path):
    """Fixed-length (bytes) attributes, as h5py writes np.bytes_ or other tools write strings."""
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        f.attrs["generator_version"] = np.bytes_("0.1-é".encode())
    with ShardReader(path) as reader:
        assert reader.attrs["generator_version"] == "0.1-é"


def test_an_unknown_predictor_is_refused(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        f["inputs"].attrs["predictor"] = "zigzag"
    with pytest.raises(DatasetFormatError) as exc:
        ShardReader(path)
    assert str(exc.value) == f"{path}: unknown predictor {{'inputs': 'zigzag'}} (written by a newer version?)"


def test_an_unreadable_header_is_named(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        del f["params"]
        f["params"] = h5py.ExternalLink("missing.h5", "/params")  # a link into a file that is gone
    with pytest.raises(DatasetFormatError, match=rf"^{path}: unreadable dataset header \("):
        ShardReader(path)


def test_a_shard_without_params_opens_and_names_the_missing_rows(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        del f["params"]
    with ShardReader(path) as reader:
        assert reader._params_crc is None
        with pytest.raises(DatasetFormatError, match="dataset 'params', sequence row 0 .sequence_id 0. is unreadable"):
            reader.read(0)


def test_a_row_past_the_end_is_named_without_a_sequence_id(tmp_path):
    path = write(tmp_path / "s.h5", [rec(5), rec(6)])
    with ShardReader(path) as reader:
        for index in (2, 9):
            with pytest.raises(DatasetFormatError) as exc:
                reader.read(index)
            # Not a damaged chunk, so no word about checksums.
            assert str(exc.value) == (f"{path}: dataset 'target', sequence row {index} (sequence_id ?) is "
                                      f"unreadable: {exc.value.__cause__}")


def test_a_damaged_chunk_says_the_bytes_are_damaged(tmp_path):
    path = write(tmp_path / "s.h5", [rec(5, inputs=np.random.default_rng(0).integers(0, 255, (K, S, S, 3), np.uint8))])
    with ShardReader(path) as reader:
        offset = reader._file["inputs"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x40
    path.write_bytes(bytes(data))
    with ShardReader(path) as reader, pytest.raises(DatasetFormatError) as exc:
        reader.read(0)
    assert str(exc.value).startswith(f"{path}: dataset 'inputs', sequence row 0 (sequence_id 5) is unreadable: ")
    assert str(exc.value).endswith(" (checksum or decompression failed: the bytes on disk are damaged)")


def test_a_params_checksum_mismatch_is_named(tmp_path):
    path = write(tmp_path / "s.h5", [rec(3)])
    with h5py.File(path, "r+") as f:
        f["params"].attrs["crc32"] = np.array([1], np.uint32)
    with ShardReader(path) as reader, pytest.raises(DatasetFormatError) as exc:
        reader.read(0)
    assert str(exc.value) == (f"{path}: dataset 'params', sequence row 0 (sequence_id 3) is unreadable: "
                              "crc32 mismatch")


def test_storage_of_a_schema_1_shard(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0), rec(1)], schema_version=1)
    with ShardReader(path) as reader:
        storage = reader.storage()
    assert {n: (i["filters"], i["fletcher32"], i["predictor"]) for n, i in storage.items()} == {
        "inputs": (["lzf"], False, "none"),
        "masks/occluder": (["lzf"], False, "none"),
        "params": ([], False, "none"),
        "sequence_id": ([], False, "none"),
        "target": (["lzf"], False, "none"),
    }


def test_an_unknown_filter_is_labelled_by_its_number(tmp_path):
    from generator.dataset_format import _filter_label

    assert _filter_label(31999, 0, (7,)) == "filter31999"
    assert _filter_label(h5py.h5z.FILTER_LZF, 0, (4, 0, 0)) == "lzf"  # only Zstd and gzip carry a level
    assert _filter_label(h5py.h5z.FILTER_DEFLATE, 0, (4,)) == "gzip(4)"


# ----------------------------------------------------------------------------------------------
# validate_shard, problem by problem


def test_validate_names_each_missing_attribute(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        del f.attrs["seed"], f.attrs["source"]
    assert validate_shard(path) == [f"{path}: attribute 'seed' missing", f"{path}: attribute 'source' missing"]


def test_validate_names_an_unknown_schema(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 3
    assert validate_shard(path) == [f"{path}: schema_version 3, expected one of (1, 2)"]


def test_validate_a_schema_2_label_on_unchecksummed_data(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)], schema_version=1)
    assert validate_shard(path) == []
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2
    assert validate_shard(path) == [
        f"{path}: schema 2 without fletcher32 checksums on "
        "['inputs', 'masks/occluder', 'sequence_id', 'target', 'params (crc32)']"]


def test_validate_a_schema_2_shard_without_the_params_checksum(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        del f["params"].attrs["crc32"]
    assert validate_shard(path) == [f"{path}: schema 2 without fletcher32 checksums on ['params (crc32)']"]


def test_validate_a_shard_without_inputs(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0)])
    with h5py.File(path, "r+") as f:
        del f["inputs"]
    assert validate_shard(path, expected_count=2) == [
        f"{path}: 1 sequences, manifest says 2", f"{path}: dataset 'inputs' missing"]


def test_validate_a_synthetic_shard_without_occluder_masks(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0, masks={})])
    assert validate_shard(path) == [f"{path}: synthetic shard without masks/occluder"]
    assert validate_shard(write(tmp_path / "r.h5", [rec(0, masks={})], source="real")) == []


def test_validate_rows_that_disagree_with_sequence_id(tmp_path):
    path = write(tmp_path / "s.h5", [rec(0), rec(1)], schema_version=1)  # (v1: no checksums to redo)
    with h5py.File(path, "r+") as f:
        del f["sequence_id"]
        f.create_dataset("sequence_id", data=np.array([0], np.int64))
    problems = validate_shard(path)
    assert problems == [f"{path}: {name} has 2 rows, sequence_id has 1"
                            for name in ("inputs", "target", "params", "masks/occluder")]


def test_validate_a_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "s.h5"
    path.write_bytes(b"not hdf5 at all")
    [problem] = validate_shard(path)
    assert problem.startswith(f"{path}: cannot open as HDF5 (")


# ----------------------------------------------------------------------------------------------
# JSON files and the manifest


def test_json_files_are_sorted_indented_and_end_with_a_newline(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"b": [1], "a": {"d": 2, "c": None}})
    assert (tmp_path / "x.json").read_text() == (
        '{\n  "a": {\n    "c": null,\n    "d": 2\n  },\n  "b": [\n    1\n  ]\n}\n')


def test_the_manifest_records_source_and_timings_to_the_millisecond(tmp_path):
    manifest = write_manifest(tmp_path, seed=3, config={}, shards=[], source="real",
                              timings={"render": 1.23456, "io": 0.0004})
    assert read_manifest(tmp_path) == manifest
    assert manifest["source"] == "real" and manifest["timings"] == {"io": 0.0, "render": 1.235}
    with pytest.raises(DatasetFormatError) as exc:
        write_manifest(tmp_path, seed=3, config={}, shards=[], source="web")
    assert str(exc.value) == f"{tmp_path}: source must be one of ('synthetic', 'real'), got 'web'"


def test_read_manifest_names_bad_json_and_unknown_schemas(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{torn")
    with pytest.raises(DatasetFormatError, match=rf"^{path}: not valid JSON \(Expecting"):
        read_manifest(tmp_path)
    path.write_text(json.dumps({"schema_version": 9}))
    with pytest.raises(DatasetFormatError) as exc:
        read_manifest(tmp_path)
    assert str(exc.value) == f"{path}: schema_version 9, expected one of (1, 2)"
