"""The training loop on tiny shards: learning, exact resume, fine-tuning checks, corrupt data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from generator.dataset_format import DatasetFormatError, dataset_shards
from model.checkpoint import CheckpointError, load_checkpoint
from trainer.checkpoints import step_checkpoints
from trainer.train import train

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are tiny; on a shared 2-core machine a second intra-op thread mostly spins and waits."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def tiny_train_data(tmp_path_factory):
    from tests.fixtures_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("train_data")
    return make_tiny_dataset(root / "train", num_sequences=8, k=5, size=32, seed=0)


def test_overfit_beats_median(tiny_train_data, tmp_path):
    """120 steps on 8 sequences: validation PSNR on them must clear the median baseline by 1.5 dB
    and keep improving between the first validation and the last."""
    cfg = compose_train(["debug=overfit", f"data.train={tiny_train_data}", f"data.val={tiny_train_data}",
                         f"out_dir={tmp_path}"])
    summary = train(cfg)
    first, last = summary["validations"][0], summary["last_val"]
    assert last["psnr"] - last["median_psnr"] > 1.5, summary["validations"]
    assert last["psnr"] > first["psnr"]
    assert (tmp_path / "checkpoints" / "best.pt").exists() and (tmp_path / "config.yaml").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def _resume_cfg(data, out_dir, extra=()):
    return compose_train(["debug=tiny", f"data.train={data}", f"data.val={data}", f"out_dir={out_dir}",
                          "trainer.max_steps=9", "trainer.ckpt_every=3", "trainer.val_every=4",
                          "trainer.ema_decay=0.9", "data.num_workers=1", "data.batch_size=3",
                          "trainer.ssim_weight=0.1", *extra])


def test_resume_equals_uninterrupted(tiny_train_data, tmp_path):
    """Killed after step 7 (last checkpoint at 6, mid-epoch), resumed: same weights as a straight run."""
    straight = train(_resume_cfg(tiny_train_data, tmp_path / "a"))
    killed = train(_resume_cfg(tiny_train_data, tmp_path / "b", ["trainer.stop_at_step=7"]))
    assert killed["stopped_early"] and killed["step"] == 7
    assert [s for s, _ in step_checkpoints(tmp_path / "b")] == [3, 6]
    resumed = train(_resume_cfg(tiny_train_data, tmp_path / "b", ["resume=true"]))
    assert straight["step"] == resumed["step"] == 9
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000009.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000009.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["extra"]["ema"]:
        assert torch.equal(a["extra"]["ema"][key], b["extra"]["ema"][key]), key
    assert a["extra"]["data"] == b["extra"]["data"]
    # The validation curve survives the resume: the step-4 validation came from the killed run.
    assert [v["step"] for v in straight["validations"]] == [4, 8, 9]  # and the last step
    assert resumed["validations"] == straight["validations"] == a["extra"]["history"] == b["extra"]["history"]
    # keep_last=3 pruned nothing yet here; with keep_last=1 only the newest step file remains.
    train(_resume_cfg(tiny_train_data, tmp_path / "b", ["resume=true", "trainer.max_steps=12",
                                                          "trainer.keep_last=1"]))
    assert [s for s, _ in step_checkpoints(tmp_path / "b")] == [12]


def test_finetune_loads_exact_keys_and_freezes_encoder(tiny_train_data, tmp_path):
    pre = train(compose_train(["debug=tiny", f"data.train={tiny_train_data}", f"out_dir={tmp_path / 'pre'}",
                               "trainer.max_steps=2"]))
    ckpt_path = pre["last_checkpoint"]
    base = ["experiment=finetune", "debug=tiny", f"data.train={tiny_train_data}", f"init_from={ckpt_path}",
            "trainer.max_steps=3"]

    with pytest.raises(CheckpointError, match="architecture"):
        train(compose_train([*base, "model=drs_multi", f"out_dir={tmp_path / 'wrong'}"]))

    with pytest.raises(ValueError, match="init_from"):
        train(compose_train(["experiment=finetune", "debug=tiny", f"data.train={tiny_train_data}",
                             f"out_dir={tmp_path / 'none'}"]))

    ft = train(compose_train([*base, "trainer.freeze_encoder=true", f"out_dir={tmp_path / 'ft'}"]))
    before, after = load_checkpoint(ckpt_path)["model"], load_checkpoint(ft["last_checkpoint"])["model"]
    # The default drs_fusion's per-photo encoders (model/fusion.py: FusionNet.encoder_parameters).
    enc = [k for k in before if k.startswith(("context.", "detail."))]
    rest = [k for k in before if k not in enc and before[k].dtype.is_floating_point]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc), "frozen encoder weights changed"
    assert any(not torch.equal(before[k], after[k]) for k in rest), "decoder did not train"
    assert load_checkpoint(ft["last_checkpoint"])["config"]["optim"]["lr"] == pytest.approx(2e-5)


def test_finetune_rejects_unexpected_keys(tiny_train_data, tmp_path):
    from model import build_model
    from model.checkpoint import save_checkpoint

    net = build_model("drs_small")
    state = dict(net.state_dict())
    state["extra_head.weight"] = torch.zeros(1)
    del state["to_rgb.bias"]
    bad = save_checkpoint(tmp_path / "bad.pt", model_state=state, arch=net.arch, arch_args=net.arch_args)
    with pytest.raises(CheckpointError, match=r"missing keys \['to_rgb.bias'\]; unexpected keys \['extra_head.weight'\]"):
        train(compose_train(["experiment=finetune", "debug=tiny", "model=drs_small", f"data.train={tiny_train_data}",
                             f"init_from={bad}", f"out_dir={tmp_path / 'o'}"]))


def test_corrupt_training_shard_is_named(tmp_path):
    from tests.fixtures_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "ds", num_sequences=8, sequences_per_shard=4)
    bad = dataset_shards(data)[1]
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = bytes(4096)
    bad.write_bytes(bytes(raw))
    cfg = compose_train(["debug=tiny", f"data.train={data}", f"out_dir={tmp_path / 'o'}", "trainer.max_steps=20"])
    with pytest.raises(DatasetFormatError, match=rf"{bad.name}.*sequence"):
        train(cfg)
    skipped = train(compose_train(["debug=tiny", f"data.train={data}", f"out_dir={tmp_path / 's'}",
                                   "trainer.max_steps=8", "data.on_corrupt=skip"]))
    assert skipped["step"] == 8 and skipped["skipped_items"] > 0


def test_training_refuses_data_without_target(tmp_path):
    from tests.fixtures_data import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "real", num_sequences=2, with_target=False, source="real")
    with pytest.raises(DatasetFormatError, match="no 'target'"):
        train(compose_train(["debug=tiny", f"data.train={data}", f"out_dir={tmp_path / 'o'}"]))
