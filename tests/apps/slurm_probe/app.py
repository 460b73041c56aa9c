"""A tiny Hydra app that proves the Slurm plumbing before the generator lands.

Each task (one value of a sweep) writes ``started-VALUE.json`` when it begins, sleeps, then writes
``done-VALUE.json`` atomically; a task killed in between leaves only the first file, just as a
killed render task must leave no complete-looking shard. Both files record where the task ran
(Slurm job/array ids, host, interpreter) so a test can check it ran as a Slurm array task.

    python tests/apps/slurm_probe/app.py -m value=0,1,2 out_dir=/tmp/probe hydra/launcher=submitit_slurm
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

# Slurm variables worth recording; absent ones are left out.
_SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_LOCALID",
    "SLURM_CPUS_PER_TASK",
)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "value": cfg.value,
        "host": socket.gethostname(),
        "python": sys.executable,
        "cwd": os.getcwd(),
        **{k: os.environ[k] for k in _SLURM_VARS if k in os.environ},
    }
    _write_json(out / f"started-{cfg.value}.json", record)
    if cfg.value == cfg.slow_value:
        time.sleep(cfg.slow_sleep_s)
    _write_json(out / f"done-{cfg.value}.json", record)
    return int(cfg.value)


if __name__ == "__main__":
    main()
