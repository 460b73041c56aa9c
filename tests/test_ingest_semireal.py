"""`drs-ingest` on semi-real handheld captures (tests/semireal.py): a cover on a table, JPEG photos
with glare, shadows, occluders and noise, one photo of another cover in each folder.

Good photos are kept, intruders rejected with their reason (in the manifest and on the console),
the output is the flat cover at its own aspect ratio, and K is chosen so no sequence is lost."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from generator import ingest as ing
from generator.cover_quad import flat_size
from generator.dataset_format import ShardReader, read_manifest
from tests.semireal import make_sequence, residuals

SIZE = (480, 360)
RES = 64


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """Three folders on a plain table: 5, 5 and 3 photos, each with one photo of another cover."""
    root = tmp_path_factory.mktemp("semireal")
    caps = {}
    for name, seed, n in (("book_a", 4, 5), ("book_b", 9, 5), ("book_c", 11, 3)):
        caps[name] = make_sequence(seed, photos=n, photo_size=SIZE, table="plain")
        caps[name].write(root / name)
    return root, caps


@pytest.fixture(scope="module")
def dataset(captures, tmp_path_factory):
    root, _ = captures
    out = tmp_path_factory.mktemp("out") / "real"
    manifest = ing.ingest(root, out, resolution=RES, progress=False)
    return out, manifest


def test_intruders_rejected_good_photos_kept_within_a_pixel(dataset, captures):
    out, manifest = dataset
    _, caps = captures
    rejected = {(r["sequence"], r["file"]): r["reason"] for r in manifest["rejected"]["photos"]}
    for name in caps:
        assert (name, "INTRUDER_00.jpg") in rejected, rejected
    genuine_rejected = [k for k, why in rejected.items() if "INTRUDER" not in k[1] and not why.startswith("surplus")]
    assert len(genuine_rejected) <= 1, genuine_rejected
    seen = 0
    with ShardReader(out / "shards" / "shard-00000.h5") as r:
        for rec in r:
            cap = caps[rec.params["sequence"]]
            for im in rec.params["images"]:
                i = int(im["file"][4:6])
                err = residuals(np.array(im["homography"]), cap.truth[i], cap.quad)
                assert err.mean() < 0.5 and err.max() < 1.5, (im["file"], err.mean(), err.max())
                seen += 1
    assert seen == 3 * manifest["sequence_length"]


def test_output_is_the_flat_cover_at_its_aspect_ratio(dataset, captures):
    out, manifest = dataset
    _, caps = captures
    w, h = manifest["image_size"]
    assert min(w, h) == RES and h > w  # portrait book covers
    with ShardReader(out / "shards" / "shard-00000.h5") as r:
        assert r.image_size == (h, w)
        for rec in r:
            cap, p = caps[rec.params["sequence"]], rec.params
            assert p["quad"]["source"] in ("edges", "colour", "edges+colour")
            assert np.linalg.norm(np.array(p["quad"]["corners"]) - cap.quad, axis=1).max() < 0.01 * np.hypot(*SIZE)
            assert p["view"]["mode"] == "rectified" and p["view"]["aspect"] == pytest.approx(cap.aspect, rel=0.03)
            # The true outline lands on the flat picture's edges (before the dataset's frame cut).
            fw, fh = flat_size(p["view"]["aspect"], RES)
            assert p["view"]["cover_shown"] > 0.85 and p["output_size"] == [fw, fh]
            to_out = np.array(p["to_output"])
            # Where not every photo shows the whole cover, the output is the part they all show.
            x, y, w, h = p["view"]["shown_rect"]
            edges = np.array([[-0.5, -0.5], [fw - 0.5, -0.5], [fw - 0.5, fh - 0.5], [-0.5, fh - 0.5]])
            edges = (edges + 0.5 - [x, y]) * [fw / w, fh / h] - 0.5  # flat px -> the zoomed output's px
            got = cv2.perspectiveTransform(cap.quad[None], to_out)[0]
            assert np.abs(got - edges).max() < 0.02 * fh, got


def test_k_keeps_every_sequence_and_reports_the_trade(dataset, capsys):
    out, manifest = dataset
    choice = manifest["sequence_length_choice"]
    assert manifest["num_sequences"] == 3 and manifest["rejected"]["sequences"] == []
    assert manifest["sequence_length"] == choice["k"] == min(choice["good_photos"].values())
    assert choice["how"].startswith("smallest count")
    bigger = [o for o in choice["options"] if o["k"] > choice["k"]]
    assert bigger and bigger[0]["would_drop"] == ["book_c"]
    text = ing.summary(out, manifest)
    assert f"K={choice['k']} (smallest count" in text and "would use" in text and "book_c" in text
    for r in manifest["rejected"]["photos"]:  # every rejection is on the console too
        assert f"photo {r['sequence']}/{r['file']}: {r['reason']}" in text


def test_fixed_sequence_length_names_the_option_when_it_drops(captures, tmp_path):
    root, _ = captures
    manifest = ing.ingest(root, tmp_path / "k4", resolution=RES, sequence_length=4, progress=False)
    seqs = {r["sequence"]: r["reason"] for r in manifest["rejected"]["sequences"]}
    assert "book_c" in seqs and "--sequence-length 4" in seqs["book_c"] and "smaller K keeps it" in seqs["book_c"]
    assert manifest["sequence_length"] == 4 and manifest["sequence_length_choice"]["how"] == "--sequence-length"


def test_user_corners_and_rectify_off(captures, tmp_path, capsys):
    root, caps = captures
    one = tmp_path / "caps"
    (one / "book").mkdir(parents=True)
    for f in (root / "book_a").iterdir():
        (one / "book" / f.name).write_bytes(f.read_bytes())
    q = caps["book_a"].quad
    (one / "book" / "corners.txt").write_text(",".join(f"{v:.2f}" for v in q[[2, 0, 3, 1]].ravel()))
    manifest = ing.ingest(one, tmp_path / "user", resolution=RES, progress=False)
    with ShardReader(tmp_path / "user" / "shards" / "shard-00000.h5") as r:
        p = r.read(0).params
    assert p["quad"]["source"] == "user" and np.abs(np.array(p["quad"]["corners"]) - q).max() < 0.01
    assert ing.main([str(one), "--out", str(tmp_path / "sq"), "--rectify", "off", "--resolution", str(RES)]) == 0
    err = capsys.readouterr().err
    assert f"{RES}x{RES} px" in err and "1 square crop" in err and "square crop, --rectify off" in err
    (one / "book" / "corners.txt").write_text("1,2,3")
    assert ing.main([str(one), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corners.txt" in err and "expected 8 numbers" in err and len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "user" / "manifest.json").read_text())["views"]["counts"] == {"rectified": 1}
    assert read_manifest(tmp_path / "user")["num_sequences"] == manifest["num_sequences"] == 1
