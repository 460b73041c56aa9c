"""`drs-evaluate`: the network and the classical baselines on a test set, for every set size K.

    drs-evaluate checkpoint=CKPT data.test=DIR out_dir=DIR            # network + baselines
    drs-evaluate data.test=DIR out_dir=DIR                            # baselines only
    drs-evaluate ... ks=[1,3,5,9] subsets=3 max_sequences=200 baselines=[median,weiss] device=cuda

Writes out_dir/metrics.json, metrics.md, samples.jsonl, psnr_vs_k.png, ssim_vs_k.png,
qualitative.png (and Hydra's .hydra/ with the resolved config). Config: conf/evaluate.yaml,
validated by `EvaluateConfig` below: a wrong type fails at compose time naming its key, a wrong
value (K < 1, subsets < 1, ...) fails before any work with the key named.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, ValidationError

from generator.dataset_format import (
    UserError,
    command_line_value,
    out_dir_problem,
    report_error,
    report_interrupt,
    run_command,
)
from trainer import baselines
from trainer.evaluate import EvalSettings, evaluate, write_reports

log = logging.getLogger("drs-evaluate")


class Baseline(Enum):
    median = "median"
    mean = "mean"
    weiss = "weiss"
    rpca = "rpca"


class Device(Enum):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class TestData:
    test: str = MISSING  # dataset directory with manifest.json (targets required)


@dataclass
class EvaluateConfig:
    """Schema of conf/evaluate.yaml."""

    checkpoint: str | None = None  # a drs checkpoint (.pt); None evaluates the baselines alone
    data: TestData = field(default_factory=TestData)
    out_dir: str = MISSING
    ks: list[int] = field(default_factory=lambda: list(range(1, 10)))  # set sizes to evaluate
    subsets: int = 2  # R: random K-subsets per sequence and K
    seed: int = 0  # seed of the subset draw
    baselines: list[Baseline] = field(default_factory=lambda: list(Baseline))
    max_sequences: int | None = None  # None: every sequence of the test set
    grid_sequences: int = 3  # rows of qualitative.png
    grid_k: int | None = None  # K shown in qualitative.png; None: the largest of ks
    device: Device = Device.auto

    def __post_init__(self) -> None:
        # Runs when OmegaConf.to_object builds the dataclass, i.e. before any work is done.
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty list of set sizes >= 1, got {self.ks}")
        for key in ("subsets", "grid_sequences"):
            if getattr(self, key) < (1 if key == "subsets" else 0):
                raise ValueError(f"{key} must be >= {1 if key == 'subsets' else 0}, got {getattr(self, key)}")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1 or null, got {self.max_sequences}")
        if self.grid_k is not None and self.grid_k < 1:
            raise ValueError(f"grid_k must be >= 1 or null, got {self.grid_k}")
        if not self.baselines and self.checkpoint is None:
            raise ValueError("baselines is empty and no checkpoint is given: nothing to evaluate")


def register_configs() -> None:
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


register_configs()


def resolve_device(choice: Device) -> torch.device:
    if choice is Device.cuda and not torch.cuda.is_available():
        raise UserError("device=cuda but CUDA is not available here; use device=auto or device=cpu")
    if choice is Device.cpu or (choice is Device.auto and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


class NetworkMethod:
    """The network as a method: float32 (K, H, W, 3) in [0, 1] -> (H, W, 3) in [0, 1]."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        self.net = net.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device).permute(0, 3, 1, 2)[None]
        y = self.net(x)[0].clamp(0.0, 1.0)
        return y.permute(1, 2, 0).cpu().numpy()  # .cpu() waits for the GPU, so timings are honest


def build_methods(cfg: EvaluateConfig, device: torch.device) -> dict:
    methods = {}
    if cfg.checkpoint is not None:
        from model import model_from_checkpoint  # CheckpointError names the file when it is wrong

        methods["network"] = NetworkMethod(model_from_checkpoint(cfg.checkpoint, map_location="cpu"), device)
    for b in cfg.baselines:
        methods[b.value] = baselines.BASELINES[b.value]
    return methods


def run(cfg: EvaluateConfig) -> dict[str, Path]:
    """Evaluate as configured and write the reports; returns the written files by name."""
    device = resolve_device(cfg.device)
    methods = build_methods(cfg, device)
    settings = EvalSettings(
        ks=list(cfg.ks),
        subsets=cfg.subsets,
        seed=cfg.seed,
        max_sequences=cfg.max_sequences,
        grid_sequences=cfg.grid_sequences,
        grid_k=cfg.grid_k,
    )
    log.info(
        "evaluating %s on %s (K=%s, %d subsets, device %s)",
        list(methods),
        cfg.data.test,
        settings.ks,
        cfg.subsets,
        device,
    )
    result = evaluate(cfg.data.test, methods, settings)
    if not result.samples:  # every K asked for exceeds every sequence: metrics.json would be {}
        raise UserError(f"ks={list(cfg.ks)}: every test sequence has fewer images "
                        f"(K = {sorted(set(result.sequence_lengths))}); ask for ks <= {max(result.sequence_lengths)}")
    info = {
        "data": cfg.data.test,
        "checkpoint": cfg.checkpoint,
        "device": str(device),
        "subsets": cfg.subsets,
        "seed": cfg.seed,
    }
    paths = write_reports(result, cfg.out_dir, info)
    for method, by_k in result.metrics.items():
        row = "  ".join(f"K={k}: {v['psnr_matched']:.2f} dB/{v['ssim_matched']:.3f}" for k, v in by_k.items())
        log.info("%-8s %s", method, row)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


# An absolute path: a relative one would be resolved as a Python package (`conf` has no __init__).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def _app(cfg: DictConfig) -> None:
    from model.checkpoint import CheckpointError

    code = run_command(
        "drs-evaluate",
        lambda: run(OmegaConf.to_object(cfg)),
        # ValueError: the schema's range checks; omegaconf's: a missing or mistyped value
        user_errors=(CheckpointError, ValueError, MissingMandatoryValue, ValidationError),
        on_interrupt=f"nothing was written to {cfg.get('out_dir', 'out_dir')} (reports are written at the end); "
        "rerun the same command",
    )
    if code:
        sys.exit(code)


def main() -> None:
    problem = out_dir_problem(command_line_value(sys.argv[1:], "out_dir"))
    if problem:
        sys.exit(report_error("drs-evaluate", UserError(problem)))
    try:
        _app()
    except KeyboardInterrupt:  # while Hydra composes the config
        sys.exit(report_interrupt("drs-evaluate", "nothing was written"))


if __name__ == "__main__":
    main()
