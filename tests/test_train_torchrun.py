"""A real `torchrun --nproc_per_node=2` on CPU (gloo): DDP trains, only rank 0 writes, one checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.torchrun
def test_torchrun_two_processes_train_and_write_one_checkpoint(tmp_path):
    from tests.fixtures_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "ds", num_sequences=8, k=5, size=32)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trainer.cli_train", "debug=tiny", f"data.train={data}", f"data.val={data}", f"out_dir={out}",
           "trainer.max_steps=4", "trainer.ckpt_every=100", "trainer.val_every=100", "trainer.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step-*.pt"))
    assert ckpts == ["step-00000004.pt"]
    payload = load_checkpoint(out / "checkpoints" / ckpts[0])
    assert payload["step"] == 4 and payload["extra"]["world_size"] == 2
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.dtype.is_floating_point)
    # rank 0 alone writes the TensorBoard log and the validation line
    assert len(list((out / "tb").glob("events.out.tfevents*"))) == 1
    assert (proc.stdout + proc.stderr).count("val PSNR") == 1
