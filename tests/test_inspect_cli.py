"""`drs-inspect` as the README runs it: the installed command on a dataset, `--out` and `--masks`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from generator.dataset_format import ShardReader, shard_path
from generator.inspect_cli import PAD
from tests.fixtures_data import make_tiny_dataset

BIN = Path(sys.executable).parent
SIZE, K = 24, 3
LABEL_W, TITLE_H = 70, 16  # the sheet's label column and title strip (generator/inspect_cli.py)


def drs_inspect(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "drs-inspect"), *map(str, args)], capture_output=True, text=True)


def tile(sheet: np.ndarray, row: int, col: int) -> np.ndarray:
    y = TITLE_H + PAD + row * (SIZE + PAD)
    x = LABEL_W + PAD + col * (SIZE + PAD)
    return sheet[y:y + SIZE, x:x + SIZE]


def test_summary_and_contact_sheet_with_masks(tmp_path):
    data = make_tiny_dataset(tmp_path / "ds", num_sequences=3, k=K, size=SIZE, seed=4, sequences_per_shard=2)
    sheet_path = tmp_path / "sheets" / "sheet.png"
    run = drs_inspect(data, "--out", sheet_path, "--masks", "--sequences", "2")
    assert run.returncode == 0, run.stderr
    assert f"{data}: 3 sequences in 2 shard(s)" in run.stdout
    assert "shard-00000.h5: 2 sequences (ids 0..1), K=3, 24x24" in run.stdout and "masks=occluder" in run.stdout
    assert "rejected: nothing" in run.stdout
    assert f"contact sheet: {sheet_path}" in run.stdout

    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    with ShardReader(shard_path(data, 0)) as r:
        recs = [r.read(0), r.read(1)]
    # Rows: sequence 0, its masks, sequence 1, its masks; columns: target, then the K inputs.
    assert sheet.shape[0] == TITLE_H + PAD + 4 * (SIZE + PAD)
    for s, rec in enumerate(recs):
        assert np.array_equal(tile(sheet, 2 * s, 0), rec.target)
        for j in range(K):
            assert np.array_equal(tile(sheet, 2 * s, 1 + j), rec.inputs[j])
            # The mask row: inputs dimmed to 45 %, occluder pixels blended 60 % towards red.
            dim = (rec.inputs[j].astype(np.float32) * 0.45)
            occ = rec.masks["occluder"][j].astype(bool)
            want = dim.copy()
            want[occ] = 0.4 * dim[occ] + 0.6 * np.array([255, 40, 40])
            got = tile(sheet, 2 * s + 1, 1 + j).astype(int)
            assert occ.any() and np.abs(got - want.astype(np.uint8)).max() <= 1

    plain = tmp_path / "plain.png"
    assert drs_inspect(data, "--out", plain, "--sequences", "2").returncode == 0
    assert np.asarray(Image.open(plain)).shape[0] == TITLE_H + PAD + 2 * (SIZE + PAD)  # no mask rows


def test_a_shard_file_and_bad_paths(tmp_path):
    data = make_tiny_dataset(tmp_path / "ds", num_sequences=2, k=K, size=SIZE, seed=1)
    run = drs_inspect(shard_path(data, 0))
    assert run.returncode == 0 and "2 sequences in 1 shard(s)" in run.stdout
    run = drs_inspect(tmp_path / "nowhere")
    assert run.returncode == 2 and f"drs-inspect: {tmp_path / 'nowhere'} does not exist" in run.stderr
    (tmp_path / "empty").mkdir()
    run = drs_inspect(tmp_path / "empty")
    assert run.returncode == 2 and run.stderr.startswith("drs-inspect: ") and "Traceback" not in run.stderr
