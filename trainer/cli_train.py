"""`drs-train`: the Hydra entry point of trainer/train.py (also run under torchrun).

    drs-train data.train=DIR data.val=DIR out_dir=DIR trainer.max_steps=N
    drs-train experiment=finetune init_from=CKPT data.train=DIR data.val=DIR out_dir=DIR
    torchrun --nproc_per_node=4 -m trainer.cli_train data.train=DIR ...
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import trainer.config  # noqa: F401  (registers train_schema in the ConfigStore)

log = logging.getLogger("drs-train")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from generator.dataset_format import DatasetFormatError
    from model.checkpoint import CheckpointError
    from trainer.train import train  # imported here so `--help` and compose errors stay fast

    try:
        summary = train(cfg)
    except (DatasetFormatError, CheckpointError, ValueError, FileNotFoundError) as exc:
        # A user's mistake (wrong path, wrong checkpoint, impossible setting): say it, no traceback.
        log.error("%s", exc)
        sys.exit(2)
    return summary["best_val_psnr"]  # what a Hydra sweeper would maximise


def main() -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun every rank runs Hydra; only rank 0 writes out_dir/.hydra and a log file.
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    _hydra_main()


if __name__ == "__main__":
    main()
