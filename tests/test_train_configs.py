"""Every training config in conf/ composes against the schema and instantiates; bad values fail by key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from trainer.config import check_config
from trainer.data import SetBatchSampler, ShardSetDataset
from trainer.optim import build_optimizer, build_scheduler, lr_factor
from trainer.train import instantiate_model

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TRAIN_GROUPS = ("model", "data", "optim", "experiment", "debug")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _choices():
    return [(g, p.stem) for g in TRAIN_GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.fixture(scope="module")
def data_and_ckpt(tmp_path_factory):
    from model import build_model
    from model.checkpoint import save_checkpoint
    from tests.fixtures_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("cfg")
    data = make_tiny_dataset(root / "ds", num_sequences=2, k=9, size=32)
    net = build_model("drs_small")
    ckpt = save_checkpoint(root / "pre.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    return data, ckpt


def test_every_group_has_configs():
    assert {g for g, _ in _choices()} == set(TRAIN_GROUPS)


@pytest.mark.parametrize(("group", "name"), _choices())
def test_config_composes_and_instantiates(group, name, data_and_ckpt, tmp_path):
    data, ckpt = data_and_ckpt
    cfg = _compose([f"{group}={name}", f"data.train={data}", f"data.val={data}", f"init_from={ckpt}",
                    f"out_dir={tmp_path}"])
    check_config(cfg)
    assert OmegaConf.missing_keys(cfg) == set()
    net = instantiate_model(cfg.model)
    assert net.arch == cfg.model.arch.value
    if cfg.model.aggregation is not None:  # null: the architecture's own (drs_fusion has no choice)
        assert net.arch_args["aggregation"] == cfg.model.aggregation.value
    optimizer = build_optimizer(net.parameters(), cfg.optim)
    build_scheduler(optimizer, cfg.optim, cfg.trainer.max_steps)
    assert 0 < lr_factor(cfg.trainer.max_steps - 1, cfg.optim, cfg.trainer.max_steps) <= 1
    crop = cfg.data.crop if cfg.data.crop is None or cfg.data.crop <= 32 else 32  # test data are 32 px
    ds = ShardSetDataset(cfg.data.train, crop=crop, on_corrupt=cfg.data.on_corrupt.value)
    sampler = SetBatchSampler(len(ds), cfg.data.batch_size, cfg.data.k_min, cfg.data.k_max, seed=cfg.seed)
    batch = next(iter(sampler))
    assert ds[batch[0]]["inputs"].shape[0] == batch[0].k


def test_experiments_are_global_and_start_with_their_command():
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")) + sorted((CONF_DIR / "debug").glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_", path
        assert any(line.lstrip("# ").startswith("drs-train") for line in lines[1:4]), f"{path}: no command comment"
    cfg = _compose(["experiment=finetune", "data.train=x", "init_from=c.pt"])
    assert cfg.name == "finetune" and cfg.optim.lr < _compose(["experiment=pretrain", "data.train=x"]).optim.lr


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.arch=drs_huge", "model.arch"),
        ("model.aggregation=sum", "model.aggregation"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.name=sgd", "optim.name"),
        ("trainer.max_steps=many", "trainer.max_steps"),
        ("data.on_corrupt=ignore", "data.on_corrupt"),
        ("trainer.loss=huber", "trainer.loss"),
    ],
)
def test_bad_value_fails_at_compose_naming_key(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as info:
        _compose(["data.train=x", override])
    text = str(info.value) + str(info.value.__cause__)
    assert key in text


def test_unknown_key_and_cross_field_errors():
    with pytest.raises(ConfigCompositionException) as info:
        _compose(["data.train=x", "data.bogus=1"])
    assert "bogus" in str(info.value) + str(info.value.__cause__)
    with pytest.raises(ValueError, match="data.k_min=5, data.k_max=2"):
        check_config(_compose(["data.train=x", "data.k_min=5", "data.k_max=2"]))
    with pytest.raises(ValueError, match="data.train"):
        check_config(_compose([]))


def test_config_choices_match_the_model():
    # The schema spells the choices out (importing model/ would pull torch into every compose);
    # this keeps the two lists from drifting apart.
    from model import AGGREGATIONS, ARCHITECTURES
    from trainer.config import Aggregation, Arch

    assert {a.value for a in Arch} == set(ARCHITECTURES)
    assert {a.value for a in Aggregation} == set(AGGREGATIONS)
