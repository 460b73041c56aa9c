"""The training loop: one readable function per step of a run (setup, train step, validate, save).

    run = setup(cfg, env)      # model, optimizer, data; resumes or fine-tunes as configured
    loop(run)                  # train until trainer.max_steps, validating and checkpointing

Determinism: the data order comes from (seed, epoch) through trainer/data.py and the position
(epoch, batch) is stored in every checkpoint with the model, optimizer, scheduler, EMA, scaler and
RNG states, so `resume=true` continues on exactly the batch an uninterrupted run would see next
and (on CPU) reaches bit-identical weights.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from generator.dataset_format import write_json_atomic
from model.checkpoint import CheckpointError
from model.fusion import fusion_kwargs
from trainer import checkpoints as ckpt
from trainer.config import check_config, to_plain
from trainer.data import SetBatchSampler, ShardSetDataset, make_loader, to_float, validation_batches
from trainer.distributed import (
    DistEnv,
    barrier,
    broadcast_flag,
    check_shared_out_dir,
    init_distributed,
    shutdown,
)
from trainer.launch_env import process_rank
from trainer.logging_utils import RunLogger, format_validation
from trainer.optim import EMA, build_optimizer, build_scheduler, compute_loss
from trainer.preemption import REQUEUE_SIGNALS, Preempted, StopSignals, agreed_stop, requeue, restart_count
from trainer.validation import validate

log = logging.getLogger(__name__)


def instantiate_model(model_cfg: DictConfig) -> nn.Module:
    """The `model` config group -> network, through its `_target_` (model.build_model)."""
    return instantiate(OmegaConf.create(to_plain(model_cfg)))


@dataclass
class Run:
    """Everything one training run holds; the loop's functions read and update it."""

    cfg: DictConfig
    env: DistEnv
    net: nn.Module  # the bare network (what checkpoints hold)
    model: nn.Module  # net, or net wrapped in DDP (what the train step calls)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: EMA | None
    train_set: ShardSetDataset
    sampler: SetBatchSampler
    val_loader: DataLoader | None
    logger: RunLogger
    out_dir: Path
    plain_cfg: dict
    amp_dtype: torch.dtype | None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_psnr: float | None = None
    last_metrics: dict | None = None
    skipped: int = 0
    history: list[dict] = field(default_factory=list)
    stop: StopSignals | None = None  # Slurm's warning and kill signals, acted on between steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The train step's forward. drs_fusion is told the whole photos' size, so that on a crop its
        context still sees the cover at the scale it will see at inference (model/fusion.py)."""
        return self.model(x, **fusion_kwargs(self.net, self.train_set.image_size))

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)


# ---------------------------------------------------------------------------------------- setup


def _amp_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU has it (no loss scaling needed), float16 otherwise; None on CPU."""
    if not cfg.trainer.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _build_data(cfg: DictConfig, env: DistEnv) -> tuple[ShardSetDataset, SetBatchSampler, DataLoader | None]:
    d = cfg.data
    on_corrupt = d.on_corrupt.value
    train_set = ShardSetDataset(d.train, crop=d.crop, augment=True, on_corrupt=on_corrupt)
    k_max = d.k_max
    if k_max > train_set.sequence_length:
        # Real captures often hold fewer than 9 photos: train on what there is rather than stop.
        k_max = train_set.sequence_length
        log.warning("data.k_max=%d but the sequences of %s hold K=%d images: using k_max=%d",
                    d.k_max, d.train, train_set.sequence_length, k_max)
        if d.k_min > k_max:
            raise ValueError(f"data.k_min={d.k_min} but the sequences of {d.train} hold only K={k_max} images")
    sampler = SetBatchSampler(len(train_set), d.batch_size, d.k_min, k_max, seed=cfg.seed,
                              rank=env.rank, world_size=env.world_size)
    val_loader = None
    if d.val is not None and env.is_main:
        val_set = ShardSetDataset(d.val, crop=d.val_crop, augment=False, on_corrupt=on_corrupt)
        val_k = min(d.val_k or k_max, val_set.sequence_length)
        batches = validation_batches(len(val_set), val_k, d.val_batch_size, d.val_limit)
        val_loader = make_loader(val_set, batches, num_workers=min(d.num_workers, 1))
    return train_set, sampler, val_loader


def _restore(run: Run, payload: dict) -> None:
    """Put a step checkpoint's full training state back into `run`."""
    where = payload["_path"]
    try:
        run.net.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"resume: {where} does not fit the configured model: {exc}") from exc
    extra = payload["extra"] or {}
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(extra["scheduler"])
    if extra.get("scaler") is not None and run.scaler.is_enabled():
        run.scaler.load_state_dict(extra["scaler"])
    if run.ema is not None:
        if extra.get("ema") is None:
            raise CheckpointError(f"resume: {where} has no EMA weights but trainer.ema_decay={run.cfg.trainer.ema_decay}")
        run.ema.load_state_dict(extra["ema"])
    if payload["rng"] is not None:
        ckpt.set_rng_state(payload["rng"])
    run.step = payload["step"]
    run.epoch, run.batch_in_epoch = extra["data"]["epoch"], extra["data"]["batch"]
    run.best_psnr = extra.get("best_psnr")
    run.history = list(extra.get("history") or [])  # the validation curve goes on across resumes
    saved_world = extra.get("world_size", 1)
    if saved_world != run.env.world_size:
        log.warning("resuming a %d-process run with %d processes: the data order differs from an uninterrupted run",
                    saved_world, run.env.world_size)
    log.info("resumed from %s at step %d (epoch %d, batch %d)", where, run.step, run.epoch, run.batch_in_epoch)


def setup(cfg: DictConfig, env: DistEnv) -> Run:
    check_config(cfg)
    out_dir = Path(cfg.out_dir)
    plain = to_plain(cfg)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every rerun
    net = instantiate_model(cfg.model).to(env.device)
    if cfg.trainer.freeze_encoder:
        for p in net.encoder_parameters():
            p.requires_grad_(False)

    check_shared_out_dir(env, out_dir)
    resume = cfg.resume or restart_count() > 0
    if resume and not cfg.resume:
        # Slurm restarted this job (requeued after a preemption or near its time limit).
        log.info("Slurm restart %d of this job: resuming from %s", restart_count(), ckpt.checkpoint_dir(out_dir))
    payload = ckpt.latest_resumable(out_dir) if resume else None
    if broadcast_flag(env, payload is not None) != (payload is not None):
        # Every rank reads out_dir itself; they must agree, or the ranks would train different models.
        raise CheckpointError(f"rank {env.rank} and rank 0 disagree on whether {ckpt.checkpoint_dir(out_dir)} "
                              "holds a checkpoint to resume from; out_dir must be on a shared filesystem")
    if resume and payload is None:
        log.info("resume=true but no checkpoint in %s: starting a new run", ckpt.checkpoint_dir(out_dir))
    if payload is None and cfg.init_from:
        ckpt.init_weights_from(net, cfg.init_from)

    optimizer = build_optimizer(net.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.trainer.max_steps)
    amp_dtype = _amp_dtype(cfg, env.device)
    # Loss scaling only for float16; bfloat16 has float32's range.
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = EMA(net, cfg.trainer.ema_decay) if cfg.trainer.ema_decay > 0 else None
    train_set, sampler, val_loader = _build_data(cfg, env)
    model = net
    if env.distributed:
        model = DistributedDataParallel(net, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    run = Run(cfg, env, net, model, optimizer, scheduler, scaler, ema, train_set, sampler, val_loader,
              RunLogger(out_dir, enabled=env.is_main), out_dir, plain, amp_dtype)
    if payload is not None:
        _restore(run, payload)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_config(out_dir / "config.yaml", cfg)
    return run


def _write_config(path: Path, cfg: DictConfig) -> None:
    """The resolved config beside the run (atomic, like every file the trainer writes)."""
    from generator.dataset_format import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg))))


# ----------------------------------------------------------------------------------------- steps


def _forever(sampler: SetBatchSampler, epoch: int, start_batch: int):
    """Batches of every epoch from (epoch, start_batch) on, so one DataLoader (and its workers) lasts the run."""

    class Forever:
        def __iter__(self):
            for e in itertools.count(epoch):
                sampler.set_epoch(e, start_batch if e == epoch else 0)
                yield from iter(sampler)

    return Forever()


def train_step(run: Run, batch: dict) -> tuple[float, float]:
    """One optimisation step on a batch; returns (loss, gradient norm before clipping)."""
    x = to_float(batch["inputs"].to(run.env.device, non_blocking=True))  # (B, k, 3, H, W) in [0, 1]
    y = to_float(batch["target"].to(run.env.device, non_blocking=True))  # (B, 3, H, W) in [0, 1]
    with run.autocast():
        pred = run.forward(x)
    loss = compute_loss(pred, y, run.cfg.trainer)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    params = [p for p in run.net.parameters() if p.requires_grad]
    clip = run.cfg.optim.grad_clip
    gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.net)
    return float(loss.detach()), float(gnorm)


def _eval_net(run: Run) -> nn.Module:
    """The weights validation and best.pt use: the EMA when enabled, else the live network."""
    if run.ema is None:
        return run.net
    net = copy.deepcopy(run.net)
    net.load_state_dict(run.ema.state_dict())
    return net


def run_validation(run: Run) -> None:
    """rank 0: network vs median on the validation set; logs, TensorBoard, best.pt."""
    net = _eval_net(run)
    metrics, grid = validate(net, run.val_loader, run.env.device, run.autocast,
                             image_size=run.val_loader.dataset.image_size)
    run.last_metrics = metrics
    run.history.append({"step": run.step, **metrics})
    log.info(format_validation(run.step, metrics))
    run.logger.scalars(run.step, {
        "val/psnr": metrics["psnr"], "val/ssim": metrics["ssim"],
        "val/median_psnr": metrics["median_psnr"], "val/median_ssim": metrics["median_ssim"],
        "val/psnr_margin_db": metrics["psnr"] - metrics["median_psnr"],
    })
    if grid is not None:
        run.logger.image(run.step, "val/inputs_output_median_target", grid)
    if run.best_psnr is None or metrics["psnr"] > run.best_psnr:
        run.best_psnr = metrics["psnr"]
        ckpt.save_train_state(ckpt.checkpoint_dir(run.out_dir) / "best.pt", net=net, step=run.step,
                              optimizer=run.optimizer, config=run.plain_cfg, extra=_extra(run))


def _extra(run: Run) -> dict:
    return {
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "data": {"epoch": run.epoch, "batch": run.batch_in_epoch},
        "best_psnr": run.best_psnr,
        "metrics": run.last_metrics,
        "world_size": run.env.world_size,
        "skipped_items": run.skipped,
        "history": run.history,
    }


def save_step_checkpoint(run: Run) -> Path:
    path = ckpt.save_train_state(ckpt.step_path(run.out_dir, run.step), net=run.net, step=run.step,
                                 optimizer=run.optimizer, config=run.plain_cfg, extra=_extra(run))
    ckpt.prune(run.out_dir, run.cfg.trainer.keep_last)
    return path


# ------------------------------------------------------------------------------------------ loop


def loop(run: Run) -> dict:
    """Train from run.step to trainer.max_steps. Returns a summary (also written to out_dir/summary.json)."""
    t, env = run.cfg.trainer, run.env
    bpe = run.sampler.batches_per_epoch
    if run.batch_in_epoch >= bpe:  # stopped right at an epoch's end
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    loader = make_loader(run.train_set, _forever(run.sampler, run.epoch, run.batch_in_epoch),
                         num_workers=run.cfg.data.num_workers, pin_memory=env.device.type == "cuda")
    # A private generator: creating the loader's iterator must not draw from the global torch RNG,
    # which a resumed run would otherwise see in another state than an uninterrupted one.
    loader.generator = torch.Generator().manual_seed(run.cfg.seed)
    bar = tqdm(total=t.max_steps, initial=run.step, desc="train", unit="step",
               disable=not (env.is_main and t.progress), dynamic_ncols=True)
    last_path, stopped, preempted = None, False, None
    tic, seen, losses = time.perf_counter(), 0, []
    batches = iter(loader)
    while run.step < t.max_steps:
        batch = next(batches)
        run.batch_in_epoch += 1
        if run.batch_in_epoch == bpe:
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        run.skipped += batch["skipped"]
        if "inputs" not in batch:
            if env.distributed:
                raise RuntimeError("every item of a batch was unreadable; DDP ranks cannot skip a step alone")
            continue
        loss, gnorm = train_step(run, batch)
        run.step += 1
        seen += batch["inputs"].shape[0] * env.world_size
        losses.append(loss)
        bar.update(1)
        if run.step % t.log_every == 0 or run.step == t.max_steps:
            dt = time.perf_counter() - tic
            mean_loss = sum(losses) / len(losses)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
            run.logger.scalars(run.step, {"train/loss": mean_loss, "train/lr": run.scheduler.get_last_lr()[0],
                                          "train/grad_norm": gnorm, "train/samples_per_s": seen / max(dt, 1e-9),
                                          "train/k": batch["inputs"].shape[1], "data/skipped_items": run.skipped})
            tic, seen, losses = time.perf_counter(), 0, []
        if run.step % t.val_every == 0 or run.step == t.max_steps:
            if env.is_main and run.val_loader is not None:
                run_validation(run)
            barrier(env)
        if run.step % t.ckpt_every == 0 or run.step == t.max_steps:
            if env.is_main:
                last_path = save_step_checkpoint(run)
            barrier(env)
        if t.stop_at_step is not None and run.step >= t.stop_at_step and run.step < t.max_steps:
            stopped = True
            break
        signum = agreed_stop(run.stop, env)  # every rank, every step: they must all stop at the same one
        if signum and run.step < t.max_steps:
            if run.step % t.ckpt_every != 0:  # not saved just above
                if env.is_main:
                    last_path = save_step_checkpoint(run)
                barrier(env)
            preempted = signal.Signals(signum).name
            if env.is_main:
                log.warning("%s: stopped at step %d, saved %s", preempted, run.step, last_path)
            break
    bar.close()
    run.logger.close()
    summary = {"step": run.step, "stopped_early": stopped, "preempted": preempted, "best_val_psnr": run.best_psnr,
               "last_val": run.last_metrics, "last_checkpoint": str(last_path) if last_path else None,
               "skipped_items": run.skipped, "validations": run.history}
    if env.is_main:
        write_json_atomic(run.out_dir / "summary.json", summary)
    if run.skipped:
        log.warning("%d unreadable training items were skipped (data.on_corrupt=skip)", run.skipped)
    return summary


def _quiet_rank() -> None:
    """Ranks other than 0: warnings only, and to the console (their task's own log), never into
    the log file Hydra opened in the shared out_dir, which is rank 0's."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def _leave_preempted(run: Run, signum: int) -> None:
    """After the preemption checkpoint: rank 0 requeues the Slurm job on a warning signal, then all go."""
    requeued = run.env.is_main and signum in REQUEUE_SIGNALS and requeue()
    # Also the barrier: no rank exits (which could end the job step) before the requeue is asked for.
    raise Preempted(signum, broadcast_flag(run.env, requeued))


def train(cfg: DictConfig) -> dict:
    """Set up (single process, or one torchrun or srun rank) and train. Returns the loop's summary.

    Raises Preempted after saving when a stop signal arrived (see trainer/preemption.py).
    """
    with StopSignals() as stop:  # from the start: a rendezvous across nodes can take a while
        if process_rank() != 0:
            _quiet_rank()  # before the rendezvous, whose lines only rank 0 needs to log
        env = init_distributed(cfg.trainer.device)
        try:
            run = setup(cfg, env)
            run.stop = stop
            try:
                with logging_redirect_tqdm():  # log lines above the progress bar, not through it
                    summary = loop(run)
            finally:
                run.train_set.close()
            if summary["preempted"]:
                _leave_preempted(run, signal.Signals[summary["preempted"]])
            return summary
        finally:
            shutdown(env)
