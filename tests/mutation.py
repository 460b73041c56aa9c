"""Mutation testing of the modules listed in tests/mutation.toml, one module at a time.

Usage: python tests/mutation.py [--committed] [--minutes M] [--only GLOB] [--out DIR] [MODULE ...]    (`make mutation`; MODULE like model/online.py)

Why a copy: mutmut writes every mutant into `mutants/` beside the sources and runs the tests
there. Doing that in the working tree would leave mutated code where other people (and
`make test`) import it, so each module gets its own throw-away copy of the tree (tracked and
untracked, non-ignored files) under a temporary directory; the working tree is only read.

Each module runs only the fast test tier of the files mapped to it, one worker, and mutmut's own
per-function test selection (its stats pass records which test calls which function). The score is
killed / (killed + survived): a timeout counts as killed (the tests noticed: something hung), a
mutant that no test reaches counts as survived (that is a gap too), and the mutants listed under
[equivalent] in the config are left out. OUT/MODULE.md lists every survivor with its diff.
With --minutes, a module's run stops after that long and the mutants checked so far are scored
(the report says how many were left unchecked): a partial score, for modules that take hours here.
--only GLOB (repeatable, mutmut's names: 'generator.align.x_align__mutmut_*') checks only those.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "mutation.toml"
FAST_TIER = "not blender and not slurm and not slow and not torchrun"
PACKAGES = ["generator", "model", "trainer", "blender_scenes"]
KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def copy_tree(dest: Path, committed: bool) -> None:
    """Tracked and untracked-but-not-ignored files: what `git status` would show, nothing built.
    committed: the files of HEAD instead (others' uncommitted edits in a shared tree left out)."""
    if committed:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():  # deleted-but-tracked files are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def mutmut_config(module: str, tests: list[str], copy: Path) -> str:
    """setup.cfg [mutmut] for one module (pyproject.toml has no [tool.mutmut], so mutmut reads this)."""
    also_copy = sorted(p.name for p in copy.iterdir() if p.name not in {"mutants", "setup.cfg", ".git"})
    lines = ["[mutmut]",
             "source_paths =", *[f"    {p}" for p in PACKAGES],
             f"only_mutate = {module}",
             # conf/, the packaged weights and the other non-Python files the tests read
             "also_copy =", *[f"    {p}" for p in also_copy],
             "pytest_add_cli_args_test_selection =", *[f"    {t}" for t in tests],
             "pytest_add_cli_args =", "    -m", f"    {FAST_TIER}", "    -p", "    no:cacheprovider",
             "use_git_change_detection = false"]
    return "\n".join(lines) + "\n"


def mutmut(copy: Path, *args: str, log: Path | None = None, minutes: float | None = None) -> str:
    """Run mutmut in the copy; its output is returned, or (a long run's spinner) appended to `log`.
    With `minutes`, a run still going after that long is stopped (its process group: mutmut and the
    children it forked), keeping the results it has recorded."""
    exe = Path(sys.executable).parent / "mutmut"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if log is not None:
        with log.open("a") as fh:
            proc = subprocess.Popen(["nice", "-n", "15", str(exe), *args], cwd=copy, env=env,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=None if minutes is None else minutes * 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                fh.write(f"\nstopped after {minutes} minutes (--minutes)\n")
                return ""
            if code:
                raise subprocess.CalledProcessError(code, ["mutmut", *args])
        return ""
    return subprocess.run(["nice", "-n", "15", str(exe), *args], cwd=copy, env=env, capture_output=True,
                          text=True).stdout


def run_module(module: str, tests: list[str], equivalent: dict[str, str], out: Path, committed: bool,
               minutes: float | None = None, only: list[str] | None = None, rescore: Path | None = None) -> dict:
    """Mutate `module` in a fresh copy and score it; `rescore`: score the results already in that
    copy (a run stopped from outside, copied before its directory was removed) without running."""
    with tempfile.TemporaryDirectory(prefix="drs-mutation-") as tmp:
        copy = Path(tmp) if rescore is None else rescore
        if rescore is None:
            copy_tree(copy, committed)
        tests = [t for t in tests if (copy / t).exists()]  # the config may name tests still to come
        if rescore is None:
            (copy / "setup.cfg").write_text(mutmut_config(module, tests, copy))
            log = out / (module.replace("/", ".").removesuffix(".py") + ".log")
            log.write_text("")
            print(f"{module}: mutating in {copy}, mutmut's output in {log}", flush=True)
            mutmut(copy, "run", "--max-children", "1", *(only or []), log=log, minutes=minutes)
        status: dict[str, str] = {}
        for line in mutmut(copy, "results", "--all", "true").splitlines():
            name, sep, state = line.strip().rpartition(": ")
            if sep:
                status[name] = state
        survivors = [n for n, s in sorted(status.items()) if s in SURVIVED and n not in equivalent]
        diffs = {n: mutmut(copy, "show", n) for n in survivors}
    killed = sum(s in KILLED for n, s in status.items() if n not in equivalent)
    excluded = [n for n in status if n in equivalent]
    other = sorted({s for s in status.values()} - KILLED - SURVIVED)
    unchecked = sum(s in {"not checked", "check was interrupted by user"} for n, s in status.items() if n not in equivalent)
    score = killed / (killed + len(survivors)) if killed + len(survivors) else 1.0
    report = [f"# {module}: {score:.1%} ({killed} killed, {len(survivors)} survived, "
              f"{len(excluded)} equivalent excluded)", "",
              f"tests: {' '.join(tests)}", ""]
    if unchecked:
        report += [f"PARTIAL: {unchecked} of {len(status)} mutants not checked (the run was stopped before them "
                   f"or they were outside --only; --minutes {minutes}, --only {only}); the score is of the "
                   "checked ones", ""]
    if other:
        report += [f"other states (not scored): {other}", ""]
    # Per function: where the survivors cluster (a CLI's help text, a GPU-only branch, real gaps).
    by_function: dict[str, list[int]] = {}
    for n, s in status.items():
        if n not in equivalent and (s in KILLED or s in SURVIVED):
            by_function.setdefault(n.rsplit("__mutmut_", 1)[0], [0, 0])[s in SURVIVED] += 1
    report += ["| function | killed | survived |", "| --- | --- | --- |"]
    report += [f"| `{f}` | {k} | {v} |" for f, (k, v) in sorted(by_function.items())] + [""]
    report += ["## equivalent (excluded)", ""] + [f"- `{n}`: {equivalent[n]}" for n in excluded] + [""]
    report += ["## survivors", ""]
    for n in survivors:
        report += [f"### {n} ({status[n]})", "", "```diff", diffs[n].strip(), "```", ""]
    path = out / (module.replace("/", ".").removesuffix(".py") + ".md")
    path.write_text("\n".join(report))
    return {"module": module, "score": score, "killed": killed, "survived": len(survivors),
            "equivalent": len(excluded), "unchecked": unchecked, "report": path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="default: every module in tests/mutation.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "mutation")
    parser.add_argument("--committed", action="store_true", help="mutate HEAD, not the working tree")
    parser.add_argument("--minutes", type=float, help="stop each module's run after this long; score what was checked")
    parser.add_argument("--only", action="append", metavar="GLOB", help="check only the mutants matching GLOB")
    parser.add_argument("--rescore", type=Path, metavar="COPY",
                        help="score the mutmut results kept in COPY (one module) instead of running")
    args = parser.parse_args(argv)
    config = tomllib.loads(CONFIG.read_text())
    unknown = [m for m in args.modules if m not in config["modules"]]
    if unknown:
        print(f"error: not in {CONFIG.relative_to(ROOT)}: {unknown}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_module(m, config["modules"][m], config.get("equivalent", {}), args.out, args.committed, args.minutes,
                       args.only, args.rescore)
            for m in args.modules or list(config["modules"])]
    print(f"\n{'module':32} {'score':>7} {'killed':>7} {'survived':>9} {'equiv.':>7} {'unchecked':>9}")
    for r in rows:
        print(f"{r['module']:32} {r['score']:7.1%} {r['killed']:7d} {r['survived']:9d} {r['equivalent']:7d} "
              f"{r['unchecked']:9d}  {r['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
