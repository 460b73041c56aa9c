"""A Blender render worker in a child process: spawned, recycled, restarted after crashes.

Blender's memory grows over long runs and a crash inside it takes the whole process down, so the
renderer never runs in the generator's process. The worker is started with the `spawn` method
(a clean interpreter: no inherited torch or h5py state), is replaced every `recycle_after`
requests or when its resident memory passes `max_memory_mb`, and a request whose worker dies is
retried on a fresh worker up to `max_retries` times before the failure is reported.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator
from typing import Any

import psutil

from blender_scenes.worker import serve  # imports no bpy at module level

log = logging.getLogger(__name__)


class RenderFailed(Exception):
    """A request failed on every attempt; the message gives each attempt's reason."""


class _WorkerDied(Exception):
    pass


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C reaches the whole process group, but stopping the worker is the parent's job (it says
    what was kept). A spawned child starts with the dispositions of this moment, and Python leaves
    an ignored SIGINT ignored, so the worker never prints a KeyboardInterrupt of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal works in the main thread only; a worker thread's children keep SIGINT
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RenderWorker:
    def __init__(self, settings: dict[str, Any], *, recycle_after: int = 50, max_memory_mb: float = 4000.0,
                 timeout_s: float = 600.0, max_retries: int = 2):
        """timeout_s: seconds allowed per rendered image (and for start-up) before the worker is
        declared hung, killed and the request retried."""
        self.settings = settings
        self.recycle_after = recycle_after
        self.max_memory_mb = max_memory_mb
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.device: str | None = None
        self.blender_version: str | None = None
        self.restarts = 0
        self._proc = None
        self._conn = None
        self._served = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if mp.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
            # Inside a joblib (loky) job the global start method is loky's own; a spawned child is
            # told to use it and fails with "cannot find context for 'loky'". Ours is plain spawn.
            mp.set_start_method("spawn", force=True)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(child, self.settings), daemon=True, name="drs-render-worker")
        with _sigint_ignored():
            self._proc.start()
        child.close()
        self._conn = parent
        self._served = 0
        hello = self._receive(timeout=self.timeout_s)
        if not hello.get("ok"):
            raise RenderFailed(f"render worker failed to start: {hello.get('error')}")
        self.device, self.blender_version = hello["device"], hello["blender_version"]

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send({"op": "stop"})
            self._proc.join(timeout=10)
        except (BrokenPipeError, OSError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> RenderWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- requests ----------------------------------------------------------------------------

    def render(self, request: dict[str, Any]) -> dict[str, Any]:
        """Render one request; retries on a fresh worker when the worker dies or errors."""
        errors = []
        for attempt in range(self.max_retries + 1):
            try:
                if self._proc is None:
                    self.start()
                result = self._request(request)
                self._maybe_recycle()
                return result
            except _WorkerDied as exc:
                errors.append(f"attempt {attempt + 1}: {exc}")
                log.warning("render worker died (%s); %s", exc, "retrying" if attempt < self.max_retries else "giving up")
                self._discard()
                self.restarts += 1
        raise RenderFailed("; ".join(errors))

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            self._conn.send({"op": "render", **request})
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerDied(f"pipe closed ({exc})") from exc
        # The limit is per image: a reference sequence at high samples legitimately takes minutes.
        reply = self._receive(self.timeout_s * max(1, len(request.get("frames", [0]))))
        self._served += 1
        if not reply.get("ok"):
            raise _WorkerDied(f"error inside Blender: {reply.get('error', '').strip().splitlines()[-1:]}")
        return reply

    def _receive(self, timeout: float) -> dict[str, Any]:
        # Poll in short steps so a worker killed by SIGKILL or the OOM killer is noticed at once.
        waited = 0.0
        while not self._conn.poll(0.2):
            waited += 0.2
            if not self._proc.is_alive():
                raise _WorkerDied(f"worker exited with code {self._proc.exitcode}")
            if waited >= timeout:
                raise _WorkerDied(f"no answer within {timeout:.0f} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise _WorkerDied(f"worker closed the pipe ({exc})") from exc

    def _maybe_recycle(self) -> None:
        rss_mb = psutil.Process(self._proc.pid).memory_info().rss / 2**20
        if self._served >= self.recycle_after or rss_mb > self.max_memory_mb:
            log.info("recycling render worker after %d requests at %.0f MB", self._served, rss_mb)
            self.close()

    def _discard(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None
