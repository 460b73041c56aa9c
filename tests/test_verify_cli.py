"""drs-verify as a command: what it prints, where, and with which exit status; --repair here and
through a launcher (the renderers replaced by the test's deterministic stand-in, so no Blender),
--upgrade, Ctrl-C, read-only datasets, the progress bars and --help.

Written from the survivors of mutation testing (tests/mutation.py): tests/test_verify.py checks
whole datasets, tests/test_verify_checks.py one shard at a time; neither pinned the command's
messages, its repair wiring or its options down.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from generator import __version__, rerender
from generator.config import GenerateConfig
from generator.dataset_format import SequenceRecord, shard_entry, shard_path, write_json_atomic, write_shard
from generator.manifest import part_path
from generator.verify import main, quarantine, repair, verify_dataset
from tests.fixtures_data import make_sequence

NUM_SEQUENCES, PER_SHARD, K, SIZE, SEED = 5, 2, 2, 16, 7
# A config that drs-generate composes back (drs-verify --repair reads it from the parts).
CONFIG = GenerateConfig(
    num_sequences=NUM_SEQUENCES, sequence_length=K, resolution=SIZE, seed=SEED, sequences_per_shard=PER_SHARD
).content_config()
# A tqdm bar of drs-verify's: "verifying: 100%|...| 3/3 [00:00<00:00, 12.3shard/s]"
BAR = re.compile(r"verifying: 100%\|[^|\r\n]*\| 3/3 \[[^\]\r\n]*[\d?](shard/s|s/shard)\]")


def render_shard(dataset: Path, index: int, version: str = __version__) -> None:
    """Stands in for `drs-generate shard=I`: deterministic records, shard then part."""
    first = index * PER_SHARD
    records = []
    for sid in range(first, min(first + PER_SHARD, NUM_SEQUENCES)):
        inputs, target, occluder = make_sequence(np.random.default_rng([SEED, sid]), K, SIZE)
        records.append(SequenceRecord(sid, inputs, target, {"occluder": occluder}, {"sequence_id": sid}))
    path = write_shard(shard_path(dataset, index), records, seed=SEED, config=CONFIG,
                       generator_version=version, blender_version="none")
    write_json_atomic(part_path(dataset, index), {
        "shard_index": index, "seed": SEED, "config": CONFIG, "generator_version": version,
        "blender_version": "none", "device": "CPU", "shard": shard_entry(dataset, path, first, len(records)),
        "rejected": {"covers": [], "frames": [], "sequences": []}, "timings": {"render": 1.0},
    })


def farm(root: Path, version: str = __version__) -> Path:
    dataset = root / "ds"
    for index in range(3):
        render_shard(dataset, index, version)
    return dataset


def damage(dataset: Path) -> None:
    """Shard 0: one flipped byte; shard 2: deleted."""
    victim = shard_path(dataset, 0)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    shard_path(dataset, 2).unlink()


@pytest.fixture(autouse=True)
def private_tqdm(monkeypatch):
    """A private lock and no monitor thread for the progress bars these tests show. tqdm's default
    lock is a multiprocessing semaphore, shared with every process forked after it was made: a test
    runner that forks one child per run (mutmut) and kills one mid-write left the next ones waiting
    on it forever."""
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    monkeypatch.setattr(tqdm, "_lock", threading.RLock(), raising=False)


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    """Errors and Ctrl-C are reported as one line unless the user asked for tracebacks."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DRS_DEBUG", raising=False)


@pytest.fixture
def render_here(monkeypatch):
    """rerender.render_locally replaced by the stand-in; returns the calls: (cfg, indices)."""
    calls = []

    def render_locally(cfg, indices):
        calls.append((cfg, list(indices)))
        for index in indices:
            render_shard(Path(cfg.out_dir), index)
        return {}

    monkeypatch.setattr(rerender, "render_locally", render_locally)
    return calls


# ----------------------------------------------------------------------------------------------
# plain verification: messages, streams, exit status


def test_a_damaged_dataset_is_summarised_on_stderr_and_in_the_json(tmp_path, capsys):
    dataset = farm(tmp_path)
    damage(dataset)
    assert main([str(dataset), "--no-progress", "--json", str(tmp_path / "r.json")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"{dataset}: 2 of 3 shards bad: [0, 2]"
    assert lines[1].startswith("  shard 0 (shards/shard-00000.h5): corrupt: sha256 ")
    assert lines[2] == "  shard 2 (shards/shard-00002.h5): missing: file absent"
    assert len(lines) == 3 and "upgraded" not in err  # --upgrade was not asked for
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False and report["bad_shards"] == [0, 2]
    assert report["expected_shards"] == 3 and report["checked_shards"] == 3 and report["sequences"] == 2
    assert [(p["index"], p["file"], p["kind"]) for p in report["problems"]] == [
        (0, "shards/shard-00000.h5", "corrupt"), (2, "shards/shard-00002.h5", "missing")]


def test_a_whole_dataset_reports_ok_on_stdout_and_true_in_the_json(tmp_path, capsys):
    dataset = farm(tmp_path)
    assert main([str(dataset), "--no-progress", "--json", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr() == (f"{dataset}: OK, 3 shards, 5 sequences\n", "")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is True and report["bad_shards"] == [] and report["problems"] == []


def test_not_a_directory_is_a_usage_error(tmp_path, capsys):
    file = tmp_path / "file.h5"
    file.write_bytes(b"")
    assert main([str(file), "--no-progress"]) == 2
    assert capsys.readouterr() == ("", f"drs-verify: {file}: not a directory\n")


@pytest.mark.parametrize("extra", [["render.threads=1"], ["--launcher", "slurm_cpu"], ["--timeout", "5"]])
def test_repair_options_without_repair_are_usage_errors(tmp_path, capsys, extra):
    dataset = farm(tmp_path)
    assert main([str(dataset), "--no-progress", *extra]) == 2
    assert capsys.readouterr().err == (
        "drs-verify: KEY=VALUE overrides, --launcher and --timeout need --repair\n")
    assert not (dataset / "manifest.json").exists()  # refused before anything was read or written


def test_an_unreadable_manifest_is_one_error_line(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("{torn")
    assert main([str(tmp_path), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"drs-verify: error: {tmp_path / 'manifest.json'}: not valid JSON")


def test_a_read_only_dataset_is_checked_without_rewriting_its_manifest(tmp_path, capsys, monkeypatch):
    dataset = farm(tmp_path)
    real_access = os.access
    # As a user without write permission sees it (these tests may run as root, who may write anywhere).
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == dataset and mode & os.W_OK
                        else real_access(p, mode, **kw))
    assert main([str(dataset), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert err == f"drs-verify: {dataset} is read-only: checking it without rewriting manifest.json\n"
    assert out == f"{dataset}: OK, 3 shards, 5 sequences\n"
    assert not (dataset / "manifest.json").exists()


def test_upgrade_reports_what_it_did_before_verifying(tmp_path, capsys):
    dataset = farm(tmp_path)  # schema-2 shards: nothing to rewrite
    assert main([str(dataset), "--no-progress", "--upgrade"]) == 0
    out, err = capsys.readouterr()
    assert err == f"{dataset}: upgraded 0 shard(s) to schema 2, 3 already were, 0 not upgraded\n"
    assert out == f"{dataset}: OK, 3 shards, 5 sequences\n"


# ----------------------------------------------------------------------------------------------
# Ctrl-C: one line saying what was kept and the command that goes on


def test_interrupted_verification_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    dataset = farm(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("generator.verify.merge_parts", interrupted)
    assert main([str(dataset), "--no-progress"]) == 130
    assert capsys.readouterr().err == (
        "drs-verify: interrupted; complete shards and shards moved to quarantine/ are kept, as are the "
        f"sequences a repair had cached; rerun `drs-verify {dataset}` to go on\n")
    monkeypatch.setattr("generator.upgrade.upgrade_dataset", interrupted)
    assert main([str(dataset), "--no-progress", "--upgrade"]) == 130
    assert capsys.readouterr().err.endswith(f"; rerun `drs-verify {dataset} --upgrade` to go on\n")


def test_interrupted_repair_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    dataset = farm(tmp_path)
    damage(dataset)

    def render_locally(cfg, indices):
        raise KeyboardInterrupt

    monkeypatch.setattr(rerender, "render_locally", render_locally)
    assert main([str(dataset), "--no-progress", "--repair"]) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"; rerun `drs-verify {dataset} --repair` to go on\n")
    assert "--upgrade" not in err.splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# --repair


def test_repair_here_rerenders_exactly_the_bad_shards_and_says_so(tmp_path, capsys, monkeypatch, render_here):
    dataset = farm(tmp_path)
    clean = shard_path(dataset, 1).read_bytes()
    damage(dataset)
    # A fresh root logger, as in a command-line process (pytest installs its own handlers).
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    assert main([str(dataset), "--no-progress", "--repair", "render.threads=3"]) == 0
    out, err = capsys.readouterr()
    [(cfg, indices)] = render_here
    assert indices == [0, 2]  # exactly the bad ones, once, in order
    assert cfg.progress is False and cfg.render.threads == 3 and Path(cfg.out_dir) == dataset.resolve()
    assert cfg.allow_version_change is False
    lines = err.splitlines()
    assert lines[0] == f"{dataset}: 2 of 3 shards bad: [0, 2]"
    assert lines[3] == f"repairing shards [0, 2] (bad files go to {dataset / 'quarantine'})"
    assert lines[-1] == "repaired shards [0, 2]" and "verifying" not in err
    assert out == f"{dataset}: OK, 3 shards, 5 sequences\n"
    assert shard_path(dataset, 1).read_bytes() == clean  # the sound shard was left alone
    assert sorted(p.name for p in (dataset / "quarantine" / "shards").iterdir()) == ["shard-00000.h5"]
    # The repair logs as drs-generate does (Hydra's format, INFO and up).
    assert logging.root.level == logging.INFO
    assert logging.root.handlers[0].formatter._fmt == "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def test_repair_with_progress_shows_the_bars_and_passes_progress_on(tmp_path, capsys, render_here):
    dataset = farm(tmp_path)
    damage(dataset)
    assert main([str(dataset), "--repair"]) == 0
    err = capsys.readouterr().err
    assert render_here[0][0].progress is True
    assert len(BAR.findall(err)) == 2  # before and after the repair


def test_repair_through_a_launcher_passes_its_settings(tmp_path, capsys, monkeypatch):
    dataset = farm(tmp_path)
    damage(dataset)
    calls = []

    def render_with_launcher(cfg, indices, launcher, launcher_overrides, *, timeout_s):
        calls.append((list(indices), launcher, launcher_overrides, timeout_s))
        for index in indices:
            render_shard(Path(cfg.out_dir), index)
        return 0

    monkeypatch.setattr(rerender, "render_with_launcher", render_with_launcher)
    argv = [str(dataset), "--no-progress", "--repair", "--launcher", "slurm_cpu", "hydra.launcher.partition=cpu",
            "render.threads=2", "--timeout", "30"]
    assert main(argv) == 0
    assert calls == [([0, 2], "slurm_cpu", ["hydra.launcher.partition=cpu"], 30.0)]
    assert type(calls[0][3]) is float
    err = capsys.readouterr().err
    assert "sweep exited" not in err and err.endswith("repaired shards [0, 2]\n")


@pytest.mark.parametrize("code", [1, 3])
def test_a_failed_launcher_sweep_points_at_the_job_logs(tmp_path, capsys, monkeypatch, code):
    dataset = farm(tmp_path)
    damage(dataset)
    monkeypatch.setattr(rerender, "render_with_launcher",
                        lambda cfg, indices, launcher, overrides, *, timeout_s: code)
    assert main([str(dataset), "--no-progress", "--repair", "--launcher", "slurm_cpu"]) == 1
    err = capsys.readouterr().err
    assert (f"drs-verify: the repair sweep exited with {code}; each shard's job log is under "
            f"{dataset.resolve() / 'logs'}/sweep-*/.submitit/<job>_<task>/\n") in err
    assert "repaired shards" not in err
    # Shards and parts went to quarantine/ and nothing came back.
    assert err.splitlines()[-2:] == [
        "  shard 0 (shards/shard-00000.h5): missing: file absent and never recorded as finished",
        "  shard 2 (shards/shard-00002.h5): missing: file absent and never recorded as finished"]


def test_launcher_settings_without_a_launcher_are_refused_untouched(tmp_path, capsys, render_here):
    dataset = farm(tmp_path)
    damage(dataset)
    assert main([str(dataset), "--no-progress", "--repair", "hydra.launcher.partition=cpu"]) == 2
    assert capsys.readouterr().err.endswith(
        "drs-verify: error: cannot repair: ['hydra.launcher.partition=cpu'] are launcher settings; "
        "name the launcher with --launcher\n")
    assert render_here == [] and not (dataset / "quarantine").exists()


def test_a_content_override_is_refused_with_the_reason(tmp_path, capsys, render_here):
    dataset = farm(tmp_path)
    damage(dataset)
    assert main([str(dataset), "--no-progress", "--repair", "seed=4"]) == 2
    last = capsys.readouterr().err.splitlines()[-2:]
    assert last[0].startswith(f"drs-verify: error: cannot repair: {dataset.resolve()}: the repair config "
                              "would not reproduce the recorded shards")
    assert "seed" in last[0]
    assert render_here == [] and not (dataset / "quarantine").exists()


def test_another_generator_version_is_repaired_only_when_allowed(tmp_path, capsys, render_here):
    dataset = farm(tmp_path, version="0.0.0-other")
    damage(dataset)
    assert main([str(dataset), "--no-progress", "--repair"]) == 2
    assert "written by generator 0.0.0-other" in capsys.readouterr().err and render_here == []
    # (the stand-in renders with the installed version, as drs-generate would)
    assert main([str(dataset), "--no-progress", "--repair", "--allow-version-change"]) == 0
    [(cfg, indices)] = render_here
    assert indices == [0, 2] and cfg.allow_version_change is True


# ----------------------------------------------------------------------------------------------
# the library calls behind the command


def test_progress_bars_are_on_by_default_and_off_when_asked(tmp_path, capsys):
    dataset = farm(tmp_path)
    verify_dataset(dataset)
    assert len(BAR.findall(capsys.readouterr().err)) == 1
    verify_dataset(dataset, progress=False)
    assert capsys.readouterr().err == ""
    assert main([str(dataset)]) == 0
    assert len(BAR.findall(capsys.readouterr().err)) == 1


def test_repair_verifies_before_and_after_with_the_progress_asked_for(tmp_path, capsys):
    dataset = farm(tmp_path)
    damage(dataset)
    after = repair(dataset, lambda indices: [render_shard(dataset, i) for i in indices])
    assert after.ok and len(BAR.findall(capsys.readouterr().err)) == 2
    damage(dataset)
    after = repair(dataset, lambda indices: [render_shard(dataset, i) for i in indices], progress=False)
    assert after.ok and capsys.readouterr().err == ""


def test_quarantine_keeps_every_earlier_copy(tmp_path):
    dataset = farm(tmp_path)
    qdir = dataset / "quarantine"
    moved = quarantine(dataset, [0])
    assert moved == [qdir / "shards" / "shard-00000.h5", qdir / "manifest.parts" / "shard-00000.json"]
    for _ in range(2):
        render_shard(dataset, 0)
        quarantine(dataset, [0])
    assert sorted(p.name for p in (qdir / "shards").iterdir()) == [
        "shard-00000.h5", "shard-00000.h5.1", "shard-00000.h5.2"]
    assert sorted(p.name for p in (qdir / "manifest.parts").iterdir()) == [
        "shard-00000.json", "shard-00000.json.1", "shard-00000.json.2"]


# ----------------------------------------------------------------------------------------------
# --help: the command's documentation (README "Farm" section points at it)

HELP = """\
usage: drs-verify [-h] [--json JSON] [--no-merge] [--no-progress] [--upgrade] [--repair] [--launcher NAME]
[--timeout S] [--allow-version-change] dataset [KEY=VALUE ...]
`drs-verify`: prove a dataset is whole by reading it, never by trusting a job scheduler.
positional arguments:
dataset dataset directory (holds manifest.json and/or manifest.parts/)
KEY=VALUE with --repair: drs-generate settings that do not change the data (render.threads=8,
render.device=cuda) and, with --launcher, hydra.launcher.* settings (partition, timeout_min...)
options:
-h, --help show this help message and exit
--json JSON also write the (final) report as JSON here
--no-merge do not (re)write manifest.json from the parts
--no-progress
--upgrade first rewrite schema-1 shards as schema 2 (Zstd, checksummed), atomically, shard by shard
(generator/upgrade.py); rerunning it is safe
repair:
--repair quarantine the missing/corrupt shards, re-render exactly those with the dataset's recorded
config, verify again
--launcher NAME re-render through `drs-generate -m shard=I,J hydra/launcher=NAME` (slurm_cpu, slurm_gpu,
local, submitit_slurm...) instead of in this process
--timeout S give up on the --launcher sweep after S seconds
--allow-version-change
repair even though the installed generator differs from the one that wrote the dataset
Exit status: 0 the dataset is whole (after --repair: whole again), 1 shards are missing or corrupt (named
on stderr), 2 the dataset or the repair config is unusable.
"""


def test_help_documents_every_option_and_the_exit_status(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    words = capsys.readouterr().out.split()
    assert words == HELP.split()
