"""`drs-verify`: prove a dataset is whole by reading it, never by trusting a job scheduler.

    drs-verify DATASET            # exit 0: every shard present, hashed, decodable; else 1 + names
    drs-verify DATASET --json r.json
    drs-verify --upgrade DATASET  # first rewrite schema-1 shards as schema 2 (generator/upgrade.py)

For every shard the dataset should hold it checks presence, size and sha256 against the record
written when the shard was finished (its manifest part, or manifest.json for datasets without
parts), the schema, the sequence count and ids, and that every chunk decodes. A farm sweep leaves
one manifest part per shard; verifying merges them into manifest.json first (GUIDE section 3).

    drs-verify --repair DATASET                       # re-render exactly the bad shards here
    drs-verify --repair DATASET --launcher slurm_cpu hydra.launcher.partition=cpu

Repair quarantines the bad shards (moved to DATASET/quarantine/, so nothing that looks complete is
left behind), re-renders exactly those with the config recorded in the dataset (generator/rerender.py:
`drs-generate shard=I` locally, or one launcher job per shard), verifies again and exits 0 only
when the dataset is whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from generator.dataset_format import (
    MANIFEST_NAME,
    SHARD_DIR,
    DatasetFormatError,
    ShardReader,
    read_manifest,
    run_command,
    sha256_file,
    shard_path,
    validate_shard,
    write_json_atomic,
)
from generator.manifest import PARTS_DIR, merge_parts, part_path

QUARANTINE_DIR = "quarantine"
_SHARD_RE = re.compile(r"shard-(\d+)\.(h5|json)$")


@dataclass
class ShardProblem:
    """One thing wrong with one shard. kind: missing | unrecorded | corrupt | invalid."""

    index: int
    file: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"shard {self.index} ({self.file}): {self.kind}: {self.detail}"


@dataclass
class VerifyReport:
    dataset: str
    expected_shards: int
    checked_shards: int = 0
    sequences: int = 0
    problems: list[ShardProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_shards(self) -> list[int]:
        return sorted({p.index for p in self.problems})

    def summary(self) -> str:
        if self.ok:
            return f"{self.dataset}: OK, {self.checked_shards} shards, {self.sequences} sequences"
        lines = [
            f"{self.dataset}: {len(self.bad_shards)} of {self.expected_shards} shards bad: {self.bad_shards}"
        ]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "bad_shards": self.bad_shards}


# ----------------------------------------------------------------------------------------------
# what the dataset should hold


def read_parts(dataset_dir: str | os.PathLike) -> dict[int, dict[str, Any] | None]:
    """Manifest parts by shard index; a part that is not valid JSON maps to None (it is evidence
    of a hand edit or a broken disk, so the shard counts as unrecorded rather than crashing)."""
    parts: dict[int, dict[str, Any] | None] = {}
    for path in sorted((Path(dataset_dir) / PARTS_DIR).glob("shard-*.json")):
        index = int(_SHARD_RE.search(path.name).group(1))
        try:
            parts[index] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            parts[index] = None
    return parts


def expected_shard_count(config: dict[str, Any] | None, known: Iterable[int]) -> int:
    """Shards the config asks for (ceil(num_sequences / sequences_per_shard)); without those keys,
    one past the highest shard index anything mentions."""
    known = list(known)
    if config and "num_sequences" in config and "sequences_per_shard" in config:
        return -(-int(config["num_sequences"]) // int(config["sequences_per_shard"]))
    return max(known) + 1 if known else 0


def expected_entries(
    dataset_dir: str | os.PathLike,
) -> tuple[int, dict[int, dict[str, Any] | None], dict | None]:
    """(shard count, {index: recorded shard entry or None}, config) from the parts, else the manifest.

    Parts win when present: each was written by the task that finished that shard, while
    manifest.json is only a merge of them and may be stale.
    """
    dataset_dir = Path(dataset_dir)
    parts = read_parts(dataset_dir)
    if parts:
        config = next((p["config"] for p in parts.values() if p and "config" in p), None)
        entries = {i: (p["shard"] if p and "shard" in p else None) for i, p in parts.items()}
    else:
        manifest = read_manifest(dataset_dir)  # raises DatasetFormatError naming manifest.json
        config = manifest.get("config")
        entries = {}
        for entry in manifest.get("shards", []):
            match = _SHARD_RE.search(entry.get("file", ""))
            if match is None:
                raise DatasetFormatError(
                    f"{dataset_dir / MANIFEST_NAME}: shard entry {entry!r} has no shard-N.h5 file"
                )
            entries[int(match.group(1))] = entry
        for index in manifest.get("missing_shards", []):
            entries.setdefault(int(index), None)
    on_disk = [
        int(m.group(1))
        for p in (dataset_dir / SHARD_DIR).glob("shard-*.h5")
        if (m := _SHARD_RE.search(p.name))
    ]
    count = expected_shard_count(config, [*entries, *on_disk])
    return count, {i: entries.get(i) for i in range(count)}, config


# ----------------------------------------------------------------------------------------------
# checking


def verify_shard(
    dataset_dir: str | os.PathLike,
    index: int,
    entry: dict[str, Any] | None,
    config: dict[str, Any] | None = None,
) -> list[ShardProblem]:
    """Everything wrong with shard `index` against its recorded `entry` (None: nothing recorded)."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / entry["file"] if entry and "file" in entry else shard_path(dataset_dir, index)
    rel = str(path.relative_to(dataset_dir))

    def problem(kind: str, detail: str) -> list[ShardProblem]:
        return [ShardProblem(index, rel, kind, detail)]

    if not path.exists():
        return problem("missing", "file absent" + ("" if entry else " and never recorded as finished"))
    if entry is None:
        return problem(
            "unrecorded",
            f"file present but no manifest part records it (an interrupted task?); "
            f"expected {part_path(dataset_dir, index).relative_to(dataset_dir)}",
        )
    size = path.stat().st_size
    pending = entry.get("upgrade")  # an upgrade to schema 2 killed between its rename and its record
    if pending and size == pending.get("bytes") and sha256_file(path) == pending.get("sha256"):
        entry = {**entry, **pending}
    if size != entry.get("bytes"):
        return problem("corrupt", f"{size} bytes, recorded {entry.get('bytes')}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        return problem("corrupt", f"sha256 {digest[:12]}..., recorded {str(entry.get('sha256'))[:12]}...")
    # Same bytes as recorded; still decode every chunk: the record itself may describe a bad file.
    found = [ShardProblem(index, rel, "invalid", msg) for msg in validate_shard(path, entry.get("count"))]
    if not found:
        found += _check_sequence_ids(path, rel, index, entry, config)
    return found


def _check_sequence_ids(
    path: Path, rel: str, index: int, entry: dict[str, Any], config: dict[str, Any] | None
) -> list[ShardProblem]:
    """Ids must be unique, ascending and inside the shard's slice (QA rejections leave gaps)."""
    with ShardReader(path) as reader:
        ids = [int(i) for i in reader.sequence_ids]
    first = int(entry.get("first_sequence_id", ids[0] if ids else 0))
    per_shard = int(config["sequences_per_shard"]) if config and "sequences_per_shard" in config else None
    end = first + per_shard if per_shard else None
    if per_shard and first != index * per_shard:
        return [
            ShardProblem(index, rel, "invalid", f"first_sequence_id {first}, expected {index * per_shard}")
        ]
    if ids != sorted(set(ids)) or (ids and ids[0] < first) or (end is not None and ids and ids[-1] >= end):
        span = f"[{first}, {end})" if end is not None else f">= {first}"
        return [
            ShardProblem(
                index, rel, "invalid", f"sequence ids {ids[:5]}... not unique, ascending and in {span}"
            )
        ]
    return []


def verify_dataset(
    dataset_dir: str | os.PathLike, *, merge: bool = True, progress: bool = True
) -> VerifyReport:
    """Check every shard the dataset should hold; with `merge`, (re)write manifest.json from the
    parts first, so a finished farm sweep ends with a manifest that names its missing shards."""
    dataset_dir = Path(dataset_dir)
    count, entries, config = expected_entries(dataset_dir)
    parts = read_parts(dataset_dir) if merge else {}
    # An unreadable part would break the merge; its shard is reported as unrecorded below instead.
    if parts and all(p is not None for p in parts.values()):
        merge_parts(dataset_dir, expected_shards=count)
    report = VerifyReport(dataset=str(dataset_dir), expected_shards=count)
    for index in tqdm(range(count), desc="verifying", unit="shard", disable=not progress):
        problems = verify_shard(dataset_dir, index, entries[index], config)
        report.problems += problems
        report.checked_shards += 1
        if not problems:
            report.sequences += int(entries[index]["count"])
    return report


# ----------------------------------------------------------------------------------------------
# repairing


def quarantine(dataset_dir: str | os.PathLike, indices: Iterable[int]) -> list[Path]:
    """Move the shard files and parts of `indices` to DATASET/quarantine/ (kept for a post-mortem,
    out of every reader's way). Returns the new paths."""
    dataset_dir = Path(dataset_dir)
    moved = []
    for index in indices:
        for src in (shard_path(dataset_dir, index), part_path(dataset_dir, index)):
            if src.exists():
                dst = dataset_dir / QUARANTINE_DIR / src.parent.name / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, _unused(dst))
                moved.append(dst)
    return moved


def repair(
    dataset_dir: str | os.PathLike,
    render_shards: Callable[[list[int]], Any],
    *,
    report: VerifyReport | None = None,
    progress: bool = True,
) -> VerifyReport:
    """Re-render exactly the bad shards and verify again.

    render_shards(indices) must (re)create each listed shard and its part, e.g. by running
    `drs-generate shard=I` with the dataset's config for each (generator/rerender.py); it is called
    once, with the bad shards in ascending order, after they were quarantined. Returns the report
    after the repair (check `.ok`).
    """
    report = report or verify_dataset(dataset_dir, progress=progress)
    bad = report.bad_shards
    if not bad:
        return report
    quarantine(dataset_dir, bad)
    render_shards(bad)
    return verify_dataset(dataset_dir, progress=progress)


def _unused(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`... if an earlier quarantine already holds that name."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


# ----------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drs-verify",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 the dataset is whole (after --repair: whole again), 1 shards are "
        "missing or corrupt (named on stderr), 2 the dataset or the repair config is unusable.",
    )
    parser.add_argument(
        "dataset", type=Path, help="dataset directory (holds manifest.json and/or manifest.parts/)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="with --repair: drs-generate settings that do not change the data (render.threads=8, "
        "render.device=cuda) and, with --launcher, hydra.launcher.* settings (partition, timeout_min...)",
    )
    parser.add_argument("--json", type=Path, help="also write the (final) report as JSON here")
    parser.add_argument(
        "--no-merge", action="store_true", help="do not (re)write manifest.json from the parts"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="first rewrite schema-1 shards as schema 2 (Zstd, checksummed), atomically, shard by "
        "shard (generator/upgrade.py); rerunning it is safe",
    )
    repair_group = parser.add_argument_group("repair")
    repair_group.add_argument(
        "--repair",
        action="store_true",
        help="quarantine the missing/corrupt shards, re-render exactly those with the dataset's "
        "recorded config, verify again",
    )
    repair_group.add_argument(
        "--launcher",
        metavar="NAME",
        help="re-render through `drs-generate -m shard=I,J hydra/launcher=NAME` (slurm_cpu, "
        "slurm_gpu, local, submitit_slurm...) instead of in this process",
    )
    repair_group.add_argument(
        "--timeout", type=float, metavar="S", help="give up on the --launcher sweep after S seconds"
    )
    repair_group.add_argument(
        "--allow-version-change",
        action="store_true",
        help="repair even though the installed generator differs from the one that wrote the dataset",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    prog = "drs-verify"
    if (args.overrides or args.launcher or args.timeout) and not args.repair:
        print(f"{prog}: KEY=VALUE overrides, --launcher and --timeout need --repair", file=sys.stderr)
        return 2
    if not args.dataset.is_dir():
        print(f"{prog}: {args.dataset}: not a directory", file=sys.stderr)
        return 2
    progress = not args.no_progress
    merge = not args.no_merge
    if merge and not args.repair and not os.access(args.dataset, os.W_OK):
        print(f"{prog}: {args.dataset} is read-only: checking it without rewriting manifest.json", file=sys.stderr)
        merge = False
    done: dict[str, VerifyReport] = {}

    def body() -> None:
        upgraded = _upgrade_cli(args.dataset) if args.upgrade else []
        done["report"] = verify_dataset(args.dataset, merge=merge, progress=progress)
        done["report"].problems += upgraded
        if args.repair and not done["report"].ok:
            done["report"] = _repair_cli(args, done["report"], progress)
        if args.json:
            write_json_atomic(args.json, done["report"].to_dict())

    code = run_command(prog, body, user_errors=(_RepairRefused,), on_interrupt=(
        "complete shards and shards moved to quarantine/ are kept, as are the sequences a repair had "
        f"cached; rerun `drs-verify {args.dataset}{' --upgrade' if args.upgrade else ''}"
        f"{' --repair' if args.repair else ''}` to go on"))
    if code:
        return code
    report = done["report"]
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _upgrade_cli(dataset: Path) -> list[ShardProblem]:
    """Upgrade schema-1 shards to schema 2; returns the shards that could not be upgraded."""
    from generator.upgrade import upgrade_dataset  # it imports this module

    report = upgrade_dataset(dataset)
    print(f"{dataset}: {report.summary()}", file=sys.stderr)
    return report.problems


class _RepairRefused(Exception):
    def __str__(self) -> str:
        return f"cannot repair: {super().__str__()}"


def _repair_cli(args: argparse.Namespace, report: VerifyReport, progress: bool) -> VerifyReport:
    """Build the repair config first (a refusal leaves the dataset untouched), then repair."""
    from generator import rerender  # Hydra and the render machinery: only when repairing
    from generator.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    generator_overrides, launcher_overrides = rerender.split_overrides(args.overrides)
    if launcher_overrides and not args.launcher:
        raise _RepairRefused(f"{launcher_overrides} are launcher settings; name the launcher with --launcher")
    try:
        cfg = rerender.repair_config(
            args.dataset, args.overrides, allow_version_change=args.allow_version_change
        )
    except (rerender.RepairError, ConfigError) as exc:
        raise _RepairRefused(str(exc)) from exc
    cfg.progress = progress
    print(report.summary(), file=sys.stderr)
    print(
        f"repairing shards {report.bad_shards} (bad files go to {args.dataset / QUARANTINE_DIR})",
        file=sys.stderr,
    )

    def render_shards(indices: list[int]) -> None:
        if args.launcher:
            code = rerender.render_with_launcher(
                cfg, indices, args.launcher, launcher_overrides, timeout_s=args.timeout
            )
            if code != 0:
                print(
                    f"drs-verify: the repair sweep exited with {code}; each shard's job log is under "
                    f"{Path(cfg.out_dir) / 'logs'}/sweep-*/.submitit/<job>_<task>/",
                    file=sys.stderr,
                )
        else:
            rerender.render_locally(cfg, indices)

    after = repair(args.dataset, render_shards, report=report, progress=progress)
    if after.ok:
        print(f"repaired shards {report.bad_shards}", file=sys.stderr)
    return after


if __name__ == "__main__":
    sys.exit(main())
