"""Training samples per second at 256x256, K = 9, for drs_small and drs_base (CPU, and CUDA if present).

    .venv/bin/python benchmarks/train_throughput.py              # 256 px, K=9, batch 2 CPU / 10 CUDA
    .venv/bin/python benchmarks/train_throughput.py --quick      # 128 px, fewer steps

One "sample" is one sequence of K images with its target; a step is the loop's own train step
(forward, L1 loss, backward, gradient clipping, Adam) from trainer/optim.py, with bfloat16
autocast on CUDA as `trainer.amp=true` does. Inputs are random: throughput does not depend on
pixel values. The first steps (allocation, cuDNN autotune) are excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from model import build_model
from trainer.optim import compute_loss


class _LossCfg:
    loss = "l1"
    ssim_weight = 0.0


def samples_per_second(arch: str, device: torch.device, size: int, k: int, batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    net = build_model(arch).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(batch, k, 3, size, size, device=device)
    y = torch.rand(batch, 3, size, size, device=device)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and torch.cuda.is_bf16_supported()
           else contextlib.nullcontext())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with amp:
            pred = net(x)
        loss = compute_loss(pred, y, _LossCfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    sync()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in net.parameters())
    return {"arch": arch, "device": str(device), "size": size, "K": k, "batch": batch, "steps": steps,
            "params": params, "samples_per_s": batch * steps / seconds, "s_per_step": seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--cpu-batch", type=int, default=2)
    parser.add_argument("--cuda-batch", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cuda-steps", type=int, default=30)
    parser.add_argument("--archs", nargs="+", default=["drs_small", "drs_base"])
    parser.add_argument("--quick", action="store_true", help="128 px, 2 timed CPU steps")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.cuda_steps = 128, 2, 10

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    print(f"training throughput at {args.size}x{args.size}, K={args.k} (torch threads: {torch.get_num_threads()})")
    for device in devices:
        cuda = device.type == "cuda"
        for arch in args.archs:
            r = samples_per_second(arch, device, args.size, args.k, args.cuda_batch if cuda else args.cpu_batch,
                                   args.cuda_steps if cuda else args.steps, warmup=5 if cuda else 1)
            if cuda:
                r["gpu"] = torch.cuda.get_device_name(device)
            rows.append(r)
            print(f"  {arch:9s} {r['params'] / 1e6:5.2f} M params  {r.get('gpu', 'cpu'):>24s}  batch {r['batch']:2d}: "
                  f"{r['samples_per_s']:8.2f} samples/s ({r['s_per_step']:.2f} s/step)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
