"""`make pretrain`'s recipe (trainer/pretrain.py) around a real drs-train: it continues from the
committed checkpoint, stops cleanly at its time budget with a checkpoint, and exports both files."""

from __future__ import annotations

import pytest
import torch

from model import build_model
from model.checkpoint import load_checkpoint, save_checkpoint
from trainer import pretrain
from trainer.checkpoints import step_checkpoints


def test_seed_run_dir_copies_the_committed_checkpoint_once(tmp_path):
    net = build_model("drs_fusion")
    committed = save_checkpoint(tmp_path / "resume.pt", model_state=net.state_dict(), arch=net.arch,
                                arch_args=net.arch_args, step=1234)
    run = tmp_path / "run"
    copy = pretrain.seed_run_dir(run, committed)
    assert copy == run / "checkpoints" / "step-00001234.pt"
    assert [s for s, _ in step_checkpoints(run)] == [1234]
    assert copy.read_bytes() == committed.read_bytes()
    # A run directory with checkpoints of its own is never overwritten by the committed one.
    assert pretrain.seed_run_dir(run, save_checkpoint(tmp_path / "other.pt", model_state=net.state_dict(),
                                                     arch=net.arch, arch_args=net.arch_args, step=99)) is None
    assert [s for s, _ in step_checkpoints(run)] == [1234]
    assert pretrain.seed_run_dir(tmp_path / "fresh", tmp_path / "missing.pt") is None


@pytest.mark.slow
def test_time_budget_stops_with_a_checkpoint_and_export_writes_both_files(tmp_path):
    from tests.fixtures_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "ds", num_sequences=4, k=4, size=32)
    run = tmp_path / "run"
    # Checkpoints and validations far apart: what is on disk after the budget is the SIGTERM save.
    extra = ["debug=tiny", "trainer.max_steps=1000000", "trainer.ckpt_every=100000", "trainer.val_every=1",
             "data.crop=32"]
    rc = pretrain.train(run, data, data, minutes=1.0, extra=extra)  # startup alone can take 20 s on a busy machine
    assert rc != 0  # stopped by the budget, not finished
    steps = step_checkpoints(run)
    assert len(steps) == 1 and 0 < steps[0][0] < 1000000, steps
    pretrain.export(run, tmp_path / "resume.pt", tmp_path / "weights.pt")
    resume, weights = load_checkpoint(tmp_path / "resume.pt"), load_checkpoint(tmp_path / "weights.pt")
    assert resume["step"] == steps[0][0] and resume["optimizer"] is not None  # everything to resume
    assert weights["optimizer"] is None and weights["arch"] == "drs_fusion"  # weights only
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert all(torch.equal(weights["model"][k], best["model"][k]) for k in best["model"])
