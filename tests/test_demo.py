"""`make demo`'s orchestrator end to end at toy sizes: every command it runs, every file it promises."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def test_demo_writes_every_promised_file(tmp_path):
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_RESOLUTION": "32", "DEMO_TRAIN_SEQUENCES": "6",
           "DEMO_TEST_SEQUENCES": "3", "DEMO_STEPS": "3", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "trainer.demo"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    demo = tmp_path / "demo"
    for name in ("contact_sheet.png", "eval/metrics.md", "eval/metrics.json", "eval/psnr_vs_k.png",
                 "eval/ssim_vs_k.png", "restored.png", "restore_comparison.png"):
        assert (demo / name).stat().st_size > 0, name
        assert str(demo / name) in run.stdout  # it says where each file is
    assert "| median |" in (demo / "eval" / "metrics.md").read_text()
    assert "network against the best baseline" in run.stdout and "K=9: network" in run.stdout
