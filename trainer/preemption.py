"""Preemption and time limits: stop at a step boundary, save, requeue under Slurm, resume exactly.

Slurm warns a job before it kills it: `--signal=USR1@120` (the sbatch script in conf/slurm/) or
submitit's `--signal=USR2@120` (the slurm_train_* launchers) arrives two minutes before the time
limit; a preemption, `scancel` or the limit itself send SIGTERM, then SIGKILL after KillWait
(30 s by default). A handler that did the work inside the signal would run in the middle of a
step, perhaps inside a collective the other ranks never join, so :class:`StopSignals` only records
the signal. The loop asks :func:`agreed_stop` after every step; all ranks learn the same answer
there (one tiny all-reduce), rank 0 saves a checkpoint, and then:

- USR1 / USR2 (a warning: "your time is nearly up"): rank 0 requeues the job with
  `scontrol requeue`; Slurm restarts the same batch script with SLURM_RESTART_COUNT=1, 2, ...,
  and :func:`restart_count` makes that run resume from the checkpoint (`resume=true` implied);
- TERM alone (the kill itself): no requeue from here. Slurm requeues a job it preempts with
  PreemptMode=REQUEUE, and an `scancel` must stay a cancel; a run requeued either way resumes.
  TERM followed by USR2 (what submitit sends to simulate a preemption) does requeue.

Every rank then leaves with :class:`Preempted` (cli_train exits with 128 + the signal number), not
with a return value, so submitit writes no result file for a run that is not finished.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping

from trainer.distributed import DistEnv, max_over_ranks

log = logging.getLogger(__name__)

# Signals that mean "stop soon", weakest first: when ranks caught different ones, all act on the
# strongest, and a warning (USR1/USR2: requeue) outranks the kill (TERM: stop only).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class Preempted(Exception):
    """The run stopped on a signal after saving; exit_code is 128 + the signal's number."""

    def __init__(self, signum: int, requeued: bool):
        self.signum, self.requeued = signum, requeued
        self.exit_code = 128 + signum
        what = "requeued, the next run resumes" if requeued else "not requeued; resume with resume=true"
        super().__init__(f"stopped on {signal.Signals(signum).name} after saving a checkpoint ({what})")


class StopSignals:
    """Context manager: while active, USR1/USR2/TERM are recorded instead of acting.

    `received` holds the numbers of the signals caught so far. The previous handlers (Python's
    defaults, or submitit's) come back on exit. DataLoader workers forked meanwhile inherit the
    recording handler, so a signal sent to the whole process tree does not kill them either.
    """

    def __init__(self) -> None:
        self.received: set[int] = set()
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def _record(self, signum: int, _frame) -> None:
        if os.getpid() != self._pid:
            # A DataLoader worker (it inherited this handler): Slurm signals every process of the
            # step, and a worker killed here would fail the very batch the trainer needs to reach
            # its checkpoint. Workers end with the trainer (sentinel, parent watchdog, SIGKILL).
            return
        if signum not in self.received:
            self.received.add(signum)
            # Logging from a handler can deadlock on the handler's own lock; a plain write cannot.
            os.write(2, f"drs-train: caught {signal.Signals(signum).name}, stopping after this step\n".encode())

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python sets handlers only from the main thread; a threaded caller keeps its own
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def restart_count(env: Mapping[str, str] | None = None) -> int:
    """How many times Slurm has restarted this job (SLURM_RESTART_COUNT; 0 outside Slurm)."""
    env = os.environ if env is None else env
    value = env.get("SLURM_RESTART_COUNT", "0").strip()
    return int(value) if value.isdigit() else 0


def slurm_job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The id `scontrol requeue` needs: ARRAYJOB_TASK for an array task (submitit), else the job id."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue(env: Mapping[str, str] | None = None) -> bool:
    """Ask Slurm to requeue this job (it is then killed and restarted). False outside Slurm or on failure."""
    job = slurm_job_id(env)
    if job is None:
        log.warning("not a Slurm job: nothing to requeue; continue with resume=true")
        return False
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("could not requeue Slurm job %s: %s", job, exc)
        return False
    if proc.returncode != 0:
        log.error("`scontrol requeue %s` failed (%d): %s", job, proc.returncode, proc.stderr.strip())
        return False
    log.warning("requeued Slurm job %s; its next run resumes from the checkpoint just saved", job)
    return True


def agreed_stop(stop: StopSignals | None, env: DistEnv) -> int:
    """The stop signal every rank acts on (the strongest any rank caught; 0: go on). Call it on
    every rank at the same point of every step: it is a collective."""
    caught = stop.received if stop is not None else set()
    strength = max((STOP_SIGNALS.index(sig) + 1 for sig in caught), default=0)
    strength = max_over_ranks(env, strength)
    return int(STOP_SIGNALS[strength - 1]) if strength else 0
