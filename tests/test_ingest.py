"""`drs-ingest`: semi-real capture folders -> aligned, validated real shards; every rejection has a reason."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from generator import ingest as ing
from generator.dataset_format import DatasetFormatError, ShardReader, read_manifest, validate_shard
from generator.inspect_cli import contact_sheet, summarize
from tests.captures import corner_error, make_capture

REF = (192, 160)
RES = 96


def save(path: Path, img: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **kw)


def write_sequence(folder: Path, name: str, seed: int, k: int = 4, reference: bool = True,
                   exts=(".png",)) -> dict[str, np.ndarray]:
    """A capture folder; returns file name -> true homography (photo px -> reference px)."""
    cap = make_capture(name, k=k, seed=seed, ref_size=REF)
    if reference:
        save(folder / "reference.png", cap.reference)
    truth = {}
    for i, (photo, h) in enumerate(zip(cap.photos, cap.truth, strict=True)):
        fname = f"IMG_{i:02d}{exts[i % len(exts)]}"
        save(folder / fname, photo, **({"quality": 95} if fname.endswith((".jpg", ".webp")) else {}))
        truth[fname] = h
    return truth


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """Two good sequences with bad photos mixed in, one single-photo folder, one without reference."""
    root = tmp_path_factory.mktemp("captures")
    truth = {
        "cover_a": write_sequence(root / "cover_a", "astronaut", 0, exts=(".png", ".jpg", ".tif", ".webp")),
        "cover_b": write_sequence(root / "cover_b", "chelsea", 1),
        "cover_c": write_sequence(root / "cover_c", "coffee", 5, k=3, reference=False),
    }
    other = make_capture("coffee", k=1, seed=9, ref_size=REF).photos[0]
    save(root / "cover_a" / "IMG_90_other_object.png", other)
    save(root / "cover_b" / "IMG_91_blank.png", np.full((176, 224, 3), 90, np.uint8))
    good = (root / "cover_b" / "IMG_00.png").read_bytes()
    (root / "cover_b" / "IMG_92_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + good[100:400])
    save(root / "lonely" / "IMG_00.png", make_capture("astronaut", k=1, seed=3).photos[0])
    (root / "cover_a" / "notes.txt").write_text("not an image: ignored")
    return root, truth


@pytest.fixture(scope="module")
def dataset(captures, tmp_path_factory):
    root, _ = captures
    out = tmp_path_factory.mktemp("out") / "real"
    manifest = ing.ingest(root, out, resolution=RES, sequences_per_shard=2, progress=False)
    return out, manifest


def test_shards_are_valid_real_data(dataset):
    out, manifest = dataset
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shards"]
    assert read_manifest(out) == manifest
    assert manifest["source"] == "real" and manifest["num_sequences"] == 3
    assert [e["count"] for e in manifest["shards"]] == [2, 1]
    k = manifest["sequence_length"]
    assert k == 3  # cover_c has 3 photos, so every sequence keeps its 3 best
    for entry, has_target in zip(manifest["shards"], (True, False), strict=True):
        path = out / entry["file"]
        assert validate_shard(path, entry["count"]) == []
        with ShardReader(path) as r:
            assert r.attrs["source"] == "real" and r.has_target is has_target and r.mask_names == []
            assert r.sequence_length == k and r.image_size == (RES, RES)
            assert r.sequence_ids[0] == entry["first_sequence_id"]
            for rec in r:
                assert rec.inputs.dtype == np.uint8 and rec.inputs.shape == (k, RES, RES, 3)
                assert len(rec.params["images"]) == k
    assert not list(out.parent.glob(".*")), "staging directories left behind"


def test_homographies_in_params_are_within_a_pixel(dataset, captures):
    out, _ = dataset
    _, truth = captures
    seen = 0
    for shard in sorted((out / "shards").glob("*.h5")):
        with ShardReader(shard) as r:
            for rec in r:
                p = rec.params
                if p["reference"] is None:
                    # Aligned to the first photo: identity for it, the rest relative to it.
                    assert p["anchor"] == "IMG_00.png" and p["images"][0]["file"] == "IMG_00.png"
                    t = truth[p["sequence"]]
                    for im in p["images"]:
                        want = np.linalg.inv(t["IMG_00.png"]) @ t[im["file"]]
                        assert corner_error(np.array(im["homography"]), want, (224, 176)) < 1.0
                    continue
                for im in p["images"]:
                    err = corner_error(np.array(im["homography"]), truth[p["sequence"]][im["file"]], REF)
                    assert err < 1.0, (p["sequence"], im["file"], err)
                    assert im["inliers"] >= 25 and im["ecc"] >= 0.5 and im["size"] == [224, 176]
                    seen += 1
    assert seen == 6


def test_aligned_inputs_line_up_with_the_target(dataset):
    """Phase correlation between each written input and the target finds no shift. (It is itself
    thrown off a little by occluders and shadows, hence a median and a looser bound for each.)"""
    out, _ = dataset
    shifts = []
    with ShardReader(out / "shards" / "shard-00000.h5") as r:
        for rec in r:
            t = cv2.cvtColor(rec.target, cv2.COLOR_RGB2GRAY).astype(np.float32)
            win = cv2.createHanningWindow(t.shape[::-1], cv2.CV_32F)
            for img in rec.inputs:
                g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
                (dx, dy), _ = cv2.phaseCorrelate(t, g, win)
                shifts.append(np.hypot(dx, dy))
    assert len(shifts) == 6 and np.median(shifts) < 0.3 and max(shifts) < 1.0, shifts


def test_every_rejection_has_its_reason(dataset):
    _, manifest = dataset
    photos = {(r["sequence"], r["file"]): r["reason"] for r in manifest["rejected"]["photos"]}
    assert "unreadable" in photos[("cover_b", "IMG_92_corrupt.jpg")]
    assert "too few features" in photos[("cover_b", "IMG_91_blank.png")]
    assert any(w in photos[("cover_a", "IMG_90_other_object.png")] for w in ("matches", "inliers"))
    surplus = [key for key, why in photos.items() if why.startswith("surplus")]
    assert len(surplus) == 2  # cover_a and cover_b had 4 good photos each, K = 3
    assert ("cover_a", "notes.txt") not in photos
    seqs = {r["sequence"]: r["reason"] for r in manifest["rejected"]["sequences"]}
    assert list(seqs) == ["lonely"] and "at least 2 needed" in seqs["lonely"]


def test_inspect_shows_ingested_shards(dataset, tmp_path):
    out, _ = dataset
    text = summarize(out)
    assert "3 sequences in 2 shard(s)" in text and "source=real, target=yes" in text and "target=no" in text
    sheet = contact_sheet(out, sequences=3)
    assert sheet.size[0] > 4 * RES and sheet.size[1] > 3 * RES


def test_trainer_refuses_reference_less_data_and_reads_the_rest(dataset, captures, tmp_path):
    from trainer.data import ItemRequest, ShardSetDataset

    out, _ = dataset
    with pytest.raises(DatasetFormatError, match="has no 'target'"):
        ShardSetDataset(out, crop=64)
    root, _ = captures
    only_refs = tmp_path / "refs"
    only_refs.mkdir()
    for name in ("cover_a", "cover_b"):
        (only_refs / name).symlink_to(root / name, target_is_directory=True)
    ds_dir = tmp_path / "train"
    ing.ingest(only_refs, ds_dir, resolution=RES, progress=False)
    ds = ShardSetDataset(ds_dir, crop=64)
    item = ds[ItemRequest(1, 2, 0)]
    assert tuple(item["inputs"].shape) == (2, 3, 64, 64) and tuple(item["target"].shape) == (3, 64, 64)


def test_sequence_length_option(captures, tmp_path):
    root, _ = captures
    manifest = ing.ingest(root, tmp_path / "k4", resolution=64, sequence_length=4, progress=False)
    assert manifest["sequence_length"] == 4 and manifest["num_sequences"] == 2
    seqs = {r["sequence"]: r["reason"] for r in manifest["rejected"]["sequences"]}
    assert "3 usable photo(s) after alignment, at least 4 needed" in seqs["cover_c"]
    assert not [r for r in manifest["rejected"]["photos"] if r["reason"].startswith("surplus")]


def test_nothing_is_left_when_no_sequence_survives(tmp_path):
    root = tmp_path / "caps"
    save(root / "one" / "reference.png", np.zeros((64, 64, 3), np.uint8))
    save(root / "one" / "a.png", np.zeros((64, 64, 3), np.uint8))
    (root / "two").mkdir()
    (root / "two" / "reference.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "ds"
    with pytest.raises(ing.IngestError, match="no sequence could be ingested"):
        ing.ingest(root, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps"]


def test_a_failure_while_writing_leaves_nothing_half_written(captures, tmp_path, monkeypatch):
    root, _ = captures
    real_write, calls = ing.write_shard, []

    def write_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ing, "write_shard", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ing.ingest(root, tmp_path / "ds", resolution=64, sequences_per_shard=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(captures, tmp_path, capsys):
    root, _ = captures
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert ing.main([str(root), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "precious.txt").exists()
    # --overwrite replaces only a drs dataset: a folder of anything else is kept, whatever is asked.
    assert ing.main([str(root), "--out", str(out), "--quiet", "--overwrite"]) == 2
    assert "not a drs dataset" in capsys.readouterr().err and (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    assert ing.main([str(root), "--out", str(out), "--quiet", "--resolution", "32"]) == 0
    assert ing.main([str(root), "--out", str(out), "--overwrite", "--resolution", "64", "--no-ecc"]) == 0
    err = capsys.readouterr().err
    assert "3 sequences of K=3" in err and "sequence lonely:" in err and "IMG_92_corrupt.jpg: unreadable" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shards"]
    assert json.loads((out / "manifest.json").read_text())["config"]["align"]["ecc"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_bad_captures_dir_fails_cleanly(tmp_path, capsys):
    assert ing.main([str(tmp_path / "missing"), "--out", str(tmp_path / "ds")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "x.png", np.zeros((8, 8, 3), np.uint8))
    assert ing.main([str(tmp_path / "flat"), "--out", str(tmp_path / "ds")]) == 2
    assert "no subfolders" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------------- reading photos
def test_read_photo_sixteen_bit_grey_alpha_palette_webp(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    want = np.round(rgb16 / 257.0).astype(np.uint8)
    for ext in (".png", ".tif"):
        cv2.imwrite(str(tmp_path / f"c16{ext}"), rgb16[..., ::-1])
        got = ing.read_photo(tmp_path / f"c16{ext}")
        assert got.shape == (9, 13, 3) and np.abs(got.astype(int) - want).max() == 0, ext
    grey16 = rng.integers(0, 65536, (9, 13), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    got = ing.read_photo(tmp_path / "g16.png")
    assert np.abs(got[..., 1].astype(int) - np.round(grey16 / 257.0)).max() <= 1 and (got[..., 0] == got[..., 2]).all()
    grey8 = rng.integers(0, 256, (9, 13), dtype=np.uint8)
    Image.fromarray(grey8, "L").save(tmp_path / "g8.jpg", quality=100)
    assert ing.read_photo(tmp_path / "g8.jpg").shape == (9, 13, 3)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # fully transparent red -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (ing.read_photo(tmp_path / "a.png") == 255).all()
    Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).convert("P").save(tmp_path / "p.png")
    assert ing.read_photo(tmp_path / "p.png").shape == (9, 13, 3)
    save(tmp_path / "w.webp", rng.integers(0, 256, (9, 13, 3), dtype=np.uint8), lossless=True)
    assert ing.read_photo(tmp_path / "w.webp").shape == (9, 13, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_8_and_16_bit(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    img = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "o.jpg") as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(ing.read_photo(tmp_path / "o.jpg"), want)
    # The 16-bit path orients the array itself: it must agree with PIL's exif_transpose.
    np.testing.assert_array_equal(ing._orient(img, orientation),
                                  np.asarray(ImageOps.exif_transpose(_with_orientation(img, orientation))))


def _with_orientation(img: np.ndarray, orientation: int) -> Image.Image:
    im = Image.fromarray(img)
    im.getexif()[0x0112] = orientation
    return im
