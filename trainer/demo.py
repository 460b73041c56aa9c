"""`make demo`: the whole pipeline on built-in procedural covers, on a CPU, in minutes.

It runs the project's own commands, exactly as a user would type them, and writes `demo/`:

    demo/contact_sheet.png        rendered training data: target beside its inputs, with masks
    demo/eval/metrics.md          PSNR/SSIM of the network and the baselines for K = 1..9
    demo/eval/psnr_vs_k.png       ... and as plots, plus a qualitative grid
    demo/restored.png             drs-restore on a held-out sequence
    demo/restore_comparison.png   its inputs, the median, the restoration and the true cover

Training starts from the packaged pretrained weights when they exist (DEMO_FROM_SCRATCH=1 trains
from scratch instead). Sizes can be shrunk for a smoke test: DEMO_DIR, DEMO_RESOLUTION,
DEMO_TRAIN_SEQUENCES, DEMO_TEST_SEQUENCES, DEMO_STEPS.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from generator.dataset_format import ShardReader, read_manifest
from trainer.restore import PACKAGED_WEIGHTS

BIN = Path(sys.executable).parent
OUT = Path(os.environ.get("DEMO_DIR", "demo"))
# 128 px: the packaged weights were trained at that scale (their recipe is in the README).
RESOLUTION = int(os.environ.get("DEMO_RESOLUTION", 128))
TRAIN_SEQUENCES = int(os.environ.get("DEMO_TRAIN_SEQUENCES", 96))
TEST_SEQUENCES = int(os.environ.get("DEMO_TEST_SEQUENCES", 16))
STEPS = int(os.environ.get("DEMO_STEPS", 200))
K = 9


def run(*args: str) -> None:
    cmd = [str(BIN / args[0]), *args[1:]]
    print(f"\n$ {' '.join(shlex.quote(a) for a in [args[0], *args[1:]])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def render_data() -> tuple[Path, Path]:
    train, test = OUT / "data" / "train", OUT / "data" / "test"
    # The hard, paper-calibrated scenes with a phone camera's effects, on built-in procedural covers
    # (no downloads): what the packaged weights were trained for, and where the baselines struggle.
    common = [f"sequence_length={K}", f"resolution={RESOLUTION}", "sequences_per_shard=32", "scene=paper",
              "camera=phone"]
    run("drs-generate", f"out_dir={train}", f"num_sequences={TRAIN_SEQUENCES}", "seed=1", *common)
    run("drs-generate", f"out_dir={test}", f"num_sequences={TEST_SEQUENCES}", "seed=2", *common)
    run("drs-inspect", str(train), "--out", str(OUT / "contact_sheet.png"), "--masks", "--sequences", "3")
    return train, test


def train(train_dir: Path, test_dir: Path) -> Path:
    out = OUT / "train"
    best = out / "checkpoints" / "best.pt"
    if best.exists():
        return best
    every = max(1, STEPS // 3)
    args = [f"data.train={train_dir}", f"data.val={test_dir}", f"out_dir={out}", f"trainer.max_steps={STEPS}",
            f"data.crop={min(96, RESOLUTION)}", "data.batch_size=8", "data.num_workers=1", f"trainer.val_every={every}",
            f"trainer.ckpt_every={every}", f"trainer.log_every={every}", f"optim.warmup_steps={min(20, STEPS)}"]
    if PACKAGED_WEIGHTS.exists() and not os.environ.get("DEMO_FROM_SCRATCH"):
        from model.checkpoint import load_checkpoint

        packaged = load_checkpoint(PACKAGED_WEIGHTS)  # fine-tune the architecture the weights are for
        aggregation = packaged["arch_args"].get("aggregation")
        args += [f"init_from={PACKAGED_WEIGHTS}", "optim.lr=1e-4", f"model.arch={packaged['arch']}",
                 f"model.aggregation={aggregation if aggregation else 'null'}"]
    else:
        args += ["optim.lr=1e-3"]
    run("drs-train", *args)
    return best


def export_held_out(test_dir: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The first test sequence as PNG files: what a user would hand to drs-restore."""
    shard = test_dir / read_manifest(test_dir)["shards"][0]["file"]
    with ShardReader(shard) as reader:
        rec = reader.read(0)
    folder = OUT / "held_out"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, img in enumerate(rec.inputs):
        path = folder / f"photo_{j}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths, rec.inputs, rec.target


def comparison(inputs: np.ndarray, restored: np.ndarray, target: np.ndarray) -> Image.Image:
    """Some inputs, the median, Weiss 2001, the network and the true cover, each with its PSNR."""
    from trainer.baselines import weiss
    from trainer.metrics import psnr

    photos = inputs.astype(np.float64) / 255.0
    median = np.median(inputs, axis=0).astype(np.uint8)
    weiss_out = (np.clip(weiss(photos), 0, 1) * 255).round().astype(np.uint8)
    truth = target.astype(np.float64) / 255.0

    def scored(name: str, img: np.ndarray) -> tuple[str, np.ndarray]:
        return f"{name} {psnr(img.astype(np.float64) / 255.0, truth):.1f} dB", img

    h, w = target.shape[:2]
    scale = max(1, 256 // h)  # about 256 px per tile on screen
    tiles = [("inputs", img) for img in inputs[:4]] + [
        scored("median", median), scored("Weiss", weiss_out), scored("network", restored), ("true cover", target)]
    sheet = Image.new("RGB", (len(tiles) * (w * scale + 6) + 6, h * scale + 28), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(tiles):
        x = 6 + i * (w * scale + 6)
        sheet.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST), (x, 22))
        draw.text((x, 4), label if label != "inputs" or i == 0 else "", fill=(230, 230, 230))
    return sheet


def headline(metrics_json: Path) -> str:
    """One line per K: the network's histogram-matched PSNR against the best baseline's."""
    import json

    metrics = json.loads(metrics_json.read_text())
    if "network" not in metrics:
        return ""
    lines = ["PSNR after histogram matching (dB), network against the best baseline:"]
    for k in (1, 3, 5, 9):
        ours = metrics["network"].get(str(k))
        rivals = {m: by_k[str(k)]["psnr_matched"] for m, by_k in metrics.items() if m != "network" and str(k) in by_k}
        if ours and rivals:
            best = max(rivals, key=rivals.get)
            lines.append(f"  K={k}: network {ours['psnr_matched']:.2f}, best baseline {best} {rivals[best]:.2f} "
                         f"({ours['psnr_matched'] - rivals[best]:+.2f})")
    return "\n".join(lines)


def main() -> None:
    start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = render_data()
    checkpoint = train(train_dir, test_dir)
    run("drs-evaluate", f"checkpoint={checkpoint}", f"data.test={test_dir}", f"out_dir={OUT / 'eval'}", "subsets=1")
    photos, inputs, target = export_held_out(test_dir)
    run("drs-restore", "--checkpoint", str(checkpoint), "--out", str(OUT / "restored.png"), *map(str, photos))
    restored = np.asarray(Image.open(OUT / "restored.png").convert("RGB"))
    comparison(inputs, restored, target).save(OUT / "restore_comparison.png")
    print("\n" + headline(OUT / "eval" / "metrics.json"))
    print(f"\nDemo finished in {(time.perf_counter() - start) / 60:.1f} min. Look at:")
    for name in ("contact_sheet.png", "eval/metrics.md", "eval/psnr_vs_k.png", "eval/ssim_vs_k.png",
                 "restored.png", "restore_comparison.png"):
        print(f"  {OUT / name}")


if __name__ == "__main__":
    main()
