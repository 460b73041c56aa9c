"""The cover builder on a tiny folder of real image files: broken files, the disjoint split, output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from generator.cover_builder import find_fonts, find_sources, split_of
from generator.covers import FolderCovers


def _picture(path: Path, seed: int, size=(320, 240)) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)


def _sources(root: Path) -> None:
    for i in range(12):
        _picture(root / "photos" / f"p{i:02d}.jpg", i)
    # a KDE-style wallpaper: two sizes and a dark variant of one picture, one source
    _picture(root / "wallpapers" / "Dunes" / "contents" / "images" / "640x480.png", 50, (640, 480))
    _picture(root / "wallpapers" / "Dunes" / "contents" / "images" / "320x240.png", 50)
    _picture(root / "wallpapers" / "Dunes" / "contents" / "images_dark" / "640x480.png", 51, (640, 480))
    (root / "photos" / "notes.png").write_text("not an image")
    good = root / "photos" / "p00.jpg"
    (root / "photos" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    _picture(root / "photos" / "icon.png", 99, (32, 32))


def test_builder_skips_broken_files_and_splits_sources_disjointly(tmp_path):
    _sources(tmp_path / "src")
    out = tmp_path / "covers"
    cmd = [sys.executable, "-m", "generator.cover_builder", "--out", str(out), "--source", str(tmp_path / "src"),
           "--per-source", "2", "--val-per-source", "1", "--size", "96", "--val-percent", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "covers.json").read_text())
    refused = {Path(r["file"]).name for r in summary["rejected"]}
    assert refused == {"notes.png", "truncated.jpg", "icon.png"}
    train, val = (set(summary["splits"][s]["sources"]) for s in ("train", "val"))
    assert train and val and not train & val
    assert len(train) + len(val) == 13  # 12 photos + one wallpaper, its sizes and variants counted once
    assert "src/wallpapers/Dunes" in train | val
    # file names carry the source's hash: no source's covers land in both folders
    prefix = {s: {p.name.split("-")[0] for p in (out / s).glob("*.jpg")} for s in ("train", "val")}
    assert not prefix["train"] & prefix["val"]
    assert len(list((out / "train").glob("*.jpg"))) == 2 * len(train) and len(list((out / "val").glob("*.jpg"))) == len(val)
    # the generator reads the folder as it reads any folder of covers
    covers = FolderCovers(out / "train")
    img = covers.get(0, 48)
    assert img.shape == (48, 48, 3) and img.std() > 5 and not covers.rejected
    # a rerun gives the same covers (keyed by source and index, not by order or time)
    first = (out / "train" / sorted(p.name for p in (out / "train").glob("*.jpg"))[0]).read_bytes()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert (out / "train" / sorted(p.name for p in (out / "train").glob("*.jpg"))[0]).read_bytes() == first


def test_split_is_a_fixed_share_by_name_whatever_else_exists():
    keys = [f"backgrounds/pic{i}" for i in range(2000)]
    share = np.mean([split_of(k, 15.0) == "val" for k in keys])
    assert 0.12 < share < 0.18
    assert [split_of(k, 15.0) for k in keys[:50]] == [split_of(k, 15.0) for k in reversed(keys[:50])][::-1]


def test_sources_group_variants_and_fonts_load(tmp_path):
    _sources(tmp_path)
    keys = [s.key for s in find_sources([tmp_path / "wallpapers"])]
    assert keys == ["wallpapers/Dunes"]
    assert find_sources([tmp_path / "wallpapers"])[0].path.name == "640x480.png"
    assert find_sources([tmp_path / "nowhere"]) == []
    for font in find_fonts()[:3]:  # whatever fonts this machine has must load
        assert font.suffix.lower() in (".ttf", ".otf")
