"""The real-data loop end to end at toy size (benchmarks/real_loop.py): semi-real photos ->
drs-ingest -> drs-evaluate -> drs-train experiment=finetune from the packaged weights ->
drs-evaluate -> drs-restore --align on held-out photos of a new cover -> a comparison picture. Every step is the
installed command, run as a subprocess; that fine-tuning *helps* is measured by the benchmark."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from benchmarks.real_loop import real_loop
from trainer.restore import PACKAGED_WEIGHTS


@pytest.mark.slow
@pytest.mark.skipif(not PACKAGED_WEIGHTS.is_file(), reason="no packaged weights to fine-tune from")
def test_photos_to_finetuned_restoration(tmp_path):
    out = tmp_path / "loop"
    r = real_loop(out, train_covers=2, val_covers=1, test_covers=1, photos=4, photo_size=(320, 240),
                  resolution=48, steps=2, crop=32, batch=2, held_out=1)
    assert 2 <= r["k"] <= 4
    for when in ("before", "after"):
        assert all(math.isfinite(v) and v > 5 for v in r[when].values()), r
    assert (out / "finetune" / "checkpoints" / "best.pt").is_file()
    for name in ("pretrained", "finetuned"):
        w, h = Image.open(out / "held_out" / "cover_0009" / f"restored_{name}.png").size
        assert h > w  # the held-out cover is a portrait book: the restoration is the flat cover
    said = r["held_out"]["9"]  # what drs-restore's console said of the alignment, for the picture
    assert said["kept"] + said["skipped"] == 4 and said["kept"] >= 1 and said["alignment"]
    sheet = Image.open(r["comparison"])
    assert sheet.size[0] > 6 * 48
    assert json.loads((out / "real_loop.json").read_text())["after"] == r["after"]
