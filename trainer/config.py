"""Dataclass schemas of the training config, registered in Hydra's ConfigStore as `train_schema`.

conf/train.yaml lists `train_schema` first in its defaults, so every group file (model/, data/,
optim/, experiment/, debug/) and every command-line override is merged onto these dataclasses:
a wrong type or an unknown choice fails at compose time with the full key, e.g.
`model.arch=drs_huge` -> "Invalid value 'drs_huge', expected one of [drs_fusion, drs_paper, ...] ...
full_key: model.arch".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trainer.launch_env import process_rank


class Arch(Enum):
    drs_fusion = "drs_fusion"  # the default: full-resolution softmax fusion (model/fusion.py)
    drs_paper = "drs_paper"  # the paper's design at its prototype size (model/network.py)
    drs_small = "drs_small"
    drs_base = "drs_base"


class Aggregation(Enum):
    mean = "mean"
    max = "max"
    multi = "multi"


class LossName(Enum):
    l1 = "l1"
    mse = "mse"


class OptimName(Enum):
    adam = "adam"
    adamw = "adamw"


class Decay(Enum):
    cosine = "cosine"  # cosine from lr to lr * min_lr_ratio at max_steps
    step = "step"  # lr * gamma ** (steps after warm-up // step_size), the paper's step decay
    none = "none"


# "raise" is a keyword, hence the functional form.
OnCorrupt = Enum("OnCorrupt", {"raise": "raise", "skip": "skip"})


@dataclass
class ModelConfig:
    _target_: str = "model.build_model"
    arch: Arch = Arch.drs_fusion
    # Set pooling of the paper's design (drs_paper/small/base); null: the architecture's own
    # (drs_fusion has no choice: it pools with mean, max and a softmax over the set).
    aggregation: Aggregation | None = None


@dataclass
class DataConfig:
    train: Any = MISSING  # dataset dir, or a list of them
    val: Any = None  # dataset dir(s); none: no validation
    batch_size: int = 10
    k_min: int = 1  # set size per batch, drawn uniformly in [k_min, k_max]
    k_max: int = 9
    crop: int | None = 128  # random square training crop in pixels; null: whole images
    val_k: int | None = None  # images per validation set; null: k_max
    val_crop: int | None = None  # centre crop for validation; null: whole images
    val_limit: int | None = 64  # validate on the first N sequences; null: all
    val_batch_size: int = 4
    num_workers: int = 2
    on_corrupt: OnCorrupt = OnCorrupt["raise"]  # raise: stop naming the file; skip: drop and count


@dataclass
class OptimConfig:
    name: OptimName = OptimName.adam
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 500
    decay: Decay = Decay.cosine
    min_lr_ratio: float = 0.01
    step_size: int = 50_000
    gamma: float = 0.5
    grad_clip: float = 1.0  # max global grad norm; 0: off


@dataclass
class TrainerConfig:
    max_steps: int = 100_000
    loss: LossName = LossName.l1
    ssim_weight: float = 0.0  # adds ssim_weight * (1 - SSIM) to the pixel loss
    amp: bool = True  # mixed precision; only ever used on CUDA
    ema_decay: float = 0.0  # 0: no EMA weights; else e.g. 0.999 (validation then uses the EMA)
    freeze_encoder: bool = False
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 1000
    keep_last: int = 3  # step checkpoints kept besides best.pt
    device: str = "auto"  # auto: cuda when present, else cpu
    progress: bool = True
    # Testing aid: leave the loop after this step without a final checkpoint, as a killed run would.
    stop_at_step: int | None = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    name: str = "train"  # the experiment's name (set by experiment/*.yaml)
    out_dir: str = "outputs/train"
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in out_dir
    init_from: str | None = None  # checkpoint whose weights start the run (fine-tuning)
    init_required: bool = False  # experiments that only make sense from pretrained weights set this


def rank0_only(value: Any) -> Any:
    """`${drs_rank0:VALUE}`: VALUE on rank 0, null on the other ranks of a torchrun/srun job.

    conf/train.yaml sets hydra.output_subdir with it, so only rank 0 writes .hydra/. Resolved in
    each task; submitit's tasks import this module when they unpickle the ConfigStore.
    """
    return value if process_rank() == 0 else None


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("drs_rank0", rank0_only, replace=True)


register_configs()


def to_plain(cfg: DictConfig) -> dict:
    """Resolved config as plain dicts, lists and strings (enums by name): fit for checkpoints and YAML."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def check_config(cfg: DictConfig) -> None:
    """Cross-field checks a schema cannot express; each error names its keys."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"missing mandatory value(s): {', '.join(missing)} (give them on the command line, e.g. "
                         f"{missing[0]}=...)")
    d, t, o = cfg.data, cfg.trainer, cfg.optim
    problems = []
    if cfg.init_required and not cfg.init_from:
        problems.append(f"experiment {cfg.name!r} starts from pretrained weights: give init_from=CKPT")
    if not 1 <= d.k_min <= d.k_max:
        problems.append(f"data.k_min={d.k_min}, data.k_max={d.k_max}: need 1 <= k_min <= k_max")
    if d.batch_size < 1:
        problems.append(f"data.batch_size={d.batch_size} must be >= 1")
    if t.max_steps < 1:
        problems.append(f"trainer.max_steps={t.max_steps} must be >= 1")
    for key in ("log_every", "val_every", "ckpt_every", "keep_last"):
        if t[key] < 1:
            problems.append(f"trainer.{key}={t[key]} must be >= 1")
    if not 0.0 <= t.ema_decay < 1.0:
        problems.append(f"trainer.ema_decay={t.ema_decay} must be in [0, 1)")
    if o.lr <= 0:
        problems.append(f"optim.lr={o.lr} must be > 0")
    if len(o.betas) != 2:
        problems.append(f"optim.betas={list(o.betas)} must hold two numbers")
    if problems:
        raise ValueError("invalid training config: " + "; ".join(problems))
