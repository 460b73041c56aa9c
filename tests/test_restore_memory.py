"""Peak memory of drs-restore does not grow with the number of photos (measured in child processes).

Each measurement is a fresh Python process whose own peak resident set (VmHWM) is read after
the work, so imports, allocator state and earlier tests cannot blur the comparison. A batched
forward over the same photos is the control: it shows the measurement does see K-proportional
memory when there is some.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import build_model
from model.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys
from pathlib import Path
def _peak_mb():
    # VmHWM: this process image's own high-water mark. ru_maxrss would also count the parent's
    # memory, inherited through fork() before exec().
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import torch
torch.set_num_threads(1)
mode, ckpt, out, *paths = sys.argv[1:]
if mode == "restore":
    from trainer.restore import main
    rc = main(["--quiet", "--checkpoint", ckpt, "--out", out, *paths])
else:  # control: every photo's features in memory at once
    from model import model_from_checkpoint
    from trainer.restore import load_image
    net = model_from_checkpoint(ckpt)
    with torch.inference_mode():
        net(torch.stack([load_image(Path(p)) for p in paths])[None])
    rc = 0
print(json.dumps({"rc": rc, "peak_mb": _peak_mb()}))
"""


def peak_mb(mode: str, ckpt: Path, out: Path, paths: list[Path]) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(ckpt), str(out), *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, proc.stderr
    return result["peak_mb"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")
@pytest.mark.parametrize("arch", ["drs_small", "drs_fusion"])
def test_peak_memory_is_flat_in_k(tmp_path, arch):
    net = build_model(arch)
    ckpt = save_checkpoint(tmp_path / "c.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        paths.append(tmp_path / f"p{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(paths[-1], compress_level=1)
    few, many = paths[:2], paths
    restore_few = peak_mb("restore", ckpt, tmp_path / "a.png", few)
    restore_many = peak_mb("restore", ckpt, tmp_path / "b.png", many)
    batched_few = peak_mb("batched", ckpt, tmp_path / "c.png", few)
    batched_many = peak_mb("batched", ckpt, tmp_path / "d.png", many)
    # Features of one 256x256 photo are ~6 MB per full-res layer; 22 more photos held at once would
    # add > 60 MB. Streaming must stay within 15 MB (allocator noise), the control must not.
    msg = (f"{arch} peak RSS MB: restore K=2 {restore_few:.0f}, K=24 {restore_many:.0f}; "
           f"batched K=2 {batched_few:.0f}, K=24 {batched_many:.0f}")
    print(msg)
    assert restore_many - restore_few < 15, msg
    assert batched_many - batched_few > 60, msg
