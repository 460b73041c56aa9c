"""What the README promises a training run leaves in out_dir: summary.json, TensorBoard scalars and
image grids, best.pt holding the EMA weights; and data.k_max clamped to the data's K with a warning."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.checkpoint import load_checkpoint
from tests.test_train import compose_train
from trainer.checkpoints import step_path
from trainer.train import train


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 10-step tiny run on K=3 data with data.k_max=9 and an EMA; returns (out_dir, summary, log)."""
    from tests.fixtures_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("outputs")
    data = make_tiny_dataset(root / "data", num_sequences=6, k=3, size=32, seed=2)
    out = root / "run"
    cfg = compose_train(["debug=tiny", f"data.train={data}", f"data.val={data}", f"out_dir={out}",
                         "data.k_max=9", "data.val_k=null", "trainer.ema_decay=0.5", "trainer.keep_last=5"])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("trainer").addHandler(handler)
    try:
        summary = train(cfg)
    finally:
        logging.getLogger("trainer").removeHandler(handler)
    return out, data, summary, [r.getMessage() for r in records]


def test_k_max_is_clamped_to_the_data_with_a_warning(run):
    _, data, summary, messages = run
    assert f"data.k_max=9 but the sequences of {data} hold K=3 images: using k_max=3" in messages
    assert summary["step"] == 10  # and training went on with k <= 3


def test_summary_json_is_the_returned_summary(run):
    out, _, summary, _ = run
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["step"] == 10 and [v["step"] for v in written["validations"]] == [5, 10]
    assert written["best_val_psnr"] == max(v["psnr"] for v in written["validations"])
    assert written["last_val"] == {k: v for k, v in written["validations"][-1].items() if k != "step"}


def test_tensorboard_has_the_documented_scalars_and_image_grids(run):
    out, _, summary, _ = run
    [events] = (out / "tb").glob("events.out.tfevents*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/samples_per_s", "val/psnr", "val/ssim",
                "val/median_psnr", "val/median_ssim", "val/psnr_margin_db"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("val/psnr")] == [5, 10]
    assert [e.value for e in acc.Scalars("val/psnr")] == pytest.approx([v["psnr"] for v in summary["validations"]])
    assert max(e.value for e in acc.Scalars("train/k")) <= 3  # the clamp reached the sampler
    images = acc.Images("val/inputs_output_median_target")
    assert [e.step for e in images] == [5, 10] and images[0].width > 32 and images[0].height >= 32


def test_best_pt_holds_the_ema_weights(run):
    out, _, summary, _ = run
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["extra"]["best_psnr"] == summary["best_val_psnr"]
    same_step = load_checkpoint(step_path(out, best["step"]))  # saved at the same step (ckpt_every = val_every)
    ema, live = same_step["extra"]["ema"], same_step["model"]
    assert set(best["model"]) == set(ema)
    for key in ema:
        assert torch.equal(best["model"][key], ema[key]), key
    # Control: after 5+ steps with decay 0.5 the EMA is not the live network, so the check above can fail.
    assert any(not torch.equal(live[k], ema[k]) for k in ema if ema[k].dtype.is_floating_point)
