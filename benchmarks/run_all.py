"""`make bench`: run every benchmark script here and write benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run_all.py            # full sizes (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes, a few minutes

RESULTS.md records the machine, the date, each script's printed report and its figures as JSON,
so runs on different days or machines can be compared. Absolute numbers on a shared machine are
noisy: read the ratios each script prints (measured within one command) first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
SCRIPTS = ["render_throughput.py", "loader_throughput.py", "train_throughput.py", "restore_memory.py"]


def machine() -> str:
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, GPU {gpu}, Python {platform.python_version()}, "
            f"load average at start {load:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    sections = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- mode: {'--quick' if args.quick else 'full'}",
        "",
    ]
    failed = []
    for script in SCRIPTS:
        with tempfile.TemporaryDirectory() as tmp:
            figures_path = Path(tmp) / "figures.json"
            cmd = [sys.executable, str(HERE / script), "--json", str(figures_path)] + (["--quick"] if args.quick else [])
            print(f"== {script}", flush=True)
            start = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            print(run.stdout, flush=True)
            shown = " ".join([script] + (["--quick"] if args.quick else []))
            sections += [f"## {script}", "", f"`{shown}` ({seconds:.0f} s)", "", "```", run.stdout.strip(), "```", ""]
            if run.returncode != 0:
                failed.append(script)
                sections += ["Failed:", "```", run.stderr.strip()[-3000:], "```", ""]
                print(run.stderr, file=sys.stderr)
            elif figures_path.exists():
                sections += ["```json", json.dumps(json.loads(figures_path.read_text()), indent=2), "```", ""]
    tmp_out = args.out.with_name(f".{args.out.name}.partial")
    tmp_out.write_text("\n".join(sections))
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
