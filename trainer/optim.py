"""Optimizer, learning-rate schedule, loss and EMA weights for the training loop."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn


def build_optimizer(params: Iterable[nn.Parameter], cfg: DictConfig) -> torch.optim.Optimizer:
    """Adam or AdamW from the `optim` config group."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (is everything frozen? see trainer.freeze_encoder)")
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    name = cfg.name.name if hasattr(cfg.name, "name") else str(cfg.name)
    if name == "adam":
        return torch.optim.Adam(params, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    raise ValueError(f"optim.name={name!r}: expected adam or adamw")


def lr_factor(step: int, cfg: DictConfig, max_steps: int) -> float:
    """Multiplier of optim.lr at `step` (0-based): linear warm-up, then cosine / step / no decay."""
    warm = cfg.warmup_steps
    if warm > 0 and step < warm:
        return (step + 1) / warm
    decay = cfg.decay.name if hasattr(cfg.decay, "name") else str(cfg.decay)
    after = step - warm
    if decay == "cosine":
        span = max(1, max_steps - warm)
        progress = min(1.0, after / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if decay == "step":
        return cfg.gamma ** (after // cfg.step_size)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_torch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Differentiable mean SSIM (Gaussian window 11, sigma 1.5) of (B, 3, H, W) tensors in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    win = _gaussian_window().to(pred)[None, None].repeat(pred.shape[1], 1, 1, 1)
    size = min(11, pred.shape[-1], pred.shape[-2])
    if size < 11:  # tiny crops: shrink the window rather than fail
        win = win[..., :size, :size] / win[..., :size, :size].sum(dim=(-1, -2), keepdim=True)
    blur = lambda t: F.conv2d(t, win, groups=pred.shape[1])  # noqa: E731
    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def compute_loss(pred: torch.Tensor, target: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Pixel loss (L1 or MSE) plus `ssim_weight * (1 - SSIM)`; pred/target (B, 3, H, W), computed in fp32."""
    pred, target = pred.float(), target.float()
    name = cfg.loss.name if hasattr(cfg.loss, "name") else str(cfg.loss)
    loss = F.l1_loss(pred, target) if name == "l1" else F.mse_loss(pred, target)
    if cfg.ssim_weight > 0:
        loss = loss + cfg.ssim_weight * (1 - ssim_torch(pred.clamp(0, 1), target))
    return loss


class EMA:
    """Exponential moving average of a model's floating-point state: ema = d * ema + (1 - d) * w.

    Kept as a plain state_dict so it goes into checkpoints as tensors; `copy_to` loads it into a
    model (e.g. a copy used for validation).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].lerp_(v.detach(), 1 - self.decay)
            else:
                self.state[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.state) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.state:
            self.state[k].copy_(state[k])
