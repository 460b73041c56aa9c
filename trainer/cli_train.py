"""`drs-train`: the Hydra entry point of trainer/train.py (also run under torchrun).

    drs-train data.train=DIR data.val=DIR out_dir=DIR trainer.max_steps=N
    drs-train experiment=finetune init_from=CKPT data.train=DIR data.val=DIR out_dir=DIR
    torchrun --nproc_per_node=4 -m trainer.cli_train data.train=DIR ...
    drs-train -m hydra/launcher=slurm_train_gpu hydra.launcher.nodes=2 data.train=DIR out_dir=SHARED_DIR ...
    sbatch --nodes=2 conf/slurm/train.sbatch data.train=DIR out_dir=SHARED_DIR ...
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import trainer.config  # noqa: F401  (registers train_schema in the ConfigStore)
from trainer.launch_env import process_rank

log = logging.getLogger("drs-train")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from generator.dataset_format import DatasetFormatError, report_error, report_interrupt
    from model.checkpoint import CheckpointError
    from trainer.preemption import Preempted
    from trainer.train import train  # imported here so `--help` and compose errors stay fast

    try:
        summary = train(cfg)
    except Preempted as stop:
        if process_rank() == 0:
            log.warning("%s", stop)
        # Not a return: under submitit a returned value would mark the job done while it is requeued.
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        sys.exit(report_interrupt("drs-train", f"checkpoints written so far are in {cfg.out_dir}; add "
                                  "resume=true to the same command to go on from the last one"))
    except (DatasetFormatError, CheckpointError, ValueError, OSError) as exc:
        # A user's mistake (wrong path, wrong checkpoint, impossible setting) or the environment's
        # (disk full, permissions): one line on stderr, no traceback.
        sys.exit(report_error("drs-train", exc))
    return summary["best_val_psnr"]  # what a Hydra sweeper would maximise


def main() -> None:
    # Every rank runs Hydra (torchrun, srun, submitit); only rank 0 writes .hydra/ (the drs_rank0
    # resolver in conf/train.yaml) and the log file (trainer.train.train drops it on other ranks).
    from generator.dataset_format import (
        UserError,
        command_line_value,
        out_dir_problem,
        report_error,
        report_interrupt,
    )

    # An out_dir given on the command line is checked before Hydra creates it (an experiment's own
    # out_dir is known only after composition).
    problem = out_dir_problem(command_line_value(sys.argv[1:], "out_dir"))
    if problem:
        sys.exit(report_error("drs-train", UserError(problem)))
    try:
        _hydra_main()
    except KeyboardInterrupt:  # while Hydra composes the config, before training started
        sys.exit(report_interrupt("drs-train", "training had not started; nothing was written"))


if __name__ == "__main__":
    main()
