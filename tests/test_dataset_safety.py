"""Issue 15: never mix or destroy data, never answer a user mistake with a traceback.

One test per numbered case of the issue; each runs the real command, asserts the exit code and the
message, and checks that no byte of the data already there changed (sha256 before and after).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from generator import ingest as ing
from generator.dataset_format import (
    SequenceRecord,
    ShardReader,
    read_manifest,
    sha256_file,
    shard_entry,
    shard_path,
    write_manifest,
    write_shard,
)
from model import build_model
from model.checkpoint import save_checkpoint
from tests.fixtures_data import make_tiny_dataset

BIN = Path(sys.executable).parent
SMALL = ["num_sequences=4", "sequence_length=2", "resolution=16", "sequences_per_shard=4", "progress=false"]
# Long enough that a run interrupted after its first cached sequence is still rendering on a quiet
# machine (SMALL's other three sequences take a fraction of a second there).
INTERRUPTIBLE = ["num_sequences=40", "sequence_length=2", "resolution=16", "sequences_per_shard=40", "progress=false"]
HOST = socket.gethostname()


def _env() -> dict[str, str]:
    # Unbuffered: progress bars write '\r' without a newline, which a line-buffered stderr would hold
    # back until the command ends, too late for a test that waits for them to press Ctrl-C.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DRS_DEBUG", None)
    return env


def _run(cmd: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / cmd), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env())


def _generate(out: Path, *overrides, logs: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # Hydra's run folder goes elsewhere when given, so the checks see only what drs-generate wrote.
    extra = [f"hydra.run.dir={logs}"] if logs else []
    return _run("drs-generate", f"out_dir={out}", *overrides, *extra, timeout=timeout)


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root but logs and lock files (they say who ran, not what was made)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not {"logs", ".locks"} & set(p.relative_to(root).parts)}


def _refused(run: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, a message on stderr holding every needle, and no traceback anywhere."""
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    for needle in needles:
        assert needle in run.stderr, (needle, run.stderr)


def _default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A test run started in the background by a
    non-interactive shell (`pytest ... &`) inherits SIGINT ignored, and exec keeps that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_generate(out: Path, *overrides) -> subprocess.Popen:
    args = [str(BIN / "drs-generate"), f"out_dir={out}", *overrides]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env(), preexec_fn=_default_sigint)


def _wait_for_cache(out: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not list(out.glob(".partial/*/shard-*/seq-*.npz")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert list(out.glob(".partial/*/shard-*/seq-*.npz")), "no sequence was cached in time"


def _scratch_of(pid: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"drs-passes-{HOST}.{pid}.*"))


def _real_dataset(out: Path) -> Path:
    """A dataset as drs-ingest writes it (source=real), with the project's own writer."""
    rng = np.random.default_rng(0)
    rec = SequenceRecord(0, rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8),
                         rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), {}, {"photo": "IMG_1.jpg"})
    path = write_shard(shard_path(out, 0), [rec], seed=0, config={"resolution": 16}, generator_version="x",
                       blender_version="", source="real")
    write_manifest(out, seed=0, config={"resolution": 16}, shards=[shard_entry(out, path, 0, 1)], source="real")
    return out


# ---------------------------------------------------------------------------------- case 1


@pytest.mark.blender
def test_1_resume_with_a_changed_config_is_refused_and_never_mixes(tmp_path):
    out, logs = tmp_path / "p", tmp_path / "logs"
    proc = _start_generate(out, *SMALL, "seed=5", f"hydra.run.dir={logs}")
    _wait_for_cache(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not shard_path(out, 0).exists()
    assert _scratch_of(proc.pid), "the killed run should have left its Blender scratch folder"
    # What a killed shard writer leaves: temporaries beside the shard, its part and the manifest.
    (out / "shards").mkdir(exist_ok=True)
    stale = [out / "shards" / ".shard-00000.h5.k1ll3d.partial", out / "manifest.parts" / ".shard-00000.json.x.partial",
             out / ".manifest.json.y.partial"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    before = _digests(out)

    run = _generate(out, *SMALL, "seed=6", logs=logs)
    _refused(run, f"out_dir={out}", "seed: recorded 5, now 6", "new out_dir", "overwrite=true")
    assert _digests(out) == before
    run = _generate(out, *SMALL, "seed=5", "resolution=32", logs=logs)
    _refused(run, "resolution: recorded 16, now 32")
    assert _digests(out) == before

    # The same command resumes from the cache, byte-identical to an uninterrupted run, and cleans up.
    assert _generate(out, *SMALL, "seed=5", logs=logs).returncode == 0
    fresh = tmp_path / "fresh5"
    assert _generate(fresh, *SMALL, "seed=5", logs=logs).returncode == 0
    assert sha256_file(shard_path(out, 0)) == sha256_file(shard_path(fresh, 0))
    assert not any(p.exists() for p in stale) and not (out / ".partial").exists()
    assert not _scratch_of(proc.pid), "the next run removes a dead run's scratch folder"
    assert _run("drs-verify", out, "--no-progress").returncode == 0

    # overwrite=true replaces it: every sequence is then the seed-6 one, none of seed 5 remains.
    assert _generate(out, *SMALL, "seed=6", "overwrite=true", logs=logs).returncode == 0
    fresh6 = tmp_path / "fresh6"
    assert _generate(fresh6, *SMALL, "seed=6", logs=logs).returncode == 0
    assert sha256_file(shard_path(out, 0)) == sha256_file(shard_path(fresh6, 0))
    assert read_manifest(out)["seed"] == 6


def test_1_another_generator_version_is_refused_unless_a_repair_accepts_it(tmp_path):
    from generator.config import GenerateConfig
    from generator.dataset_guard import IDENTITY_NAME, DatasetConflict, claim

    cfg = GenerateConfig(out_dir=str(tmp_path / "ds"), num_sequences=2, resolution=16, progress=False)
    claim(cfg)
    record = json.loads((tmp_path / "ds" / IDENTITY_NAME).read_text())
    record["generator_version"] = "0.0.1"  # what an older install wrote
    (tmp_path / "ds" / IDENTITY_NAME).write_text(json.dumps(record))
    before = _digests(tmp_path / "ds")
    with pytest.raises(DatasetConflict, match=r"generator_version: recorded '0.0.1'.*--allow-version-change"):
        claim(cfg)
    cfg.allow_version_change = True
    claim(cfg)
    assert _digests(tmp_path / "ds") == before, "the dataset keeps the record of the version that wrote it"


# ---------------------------------------------------------------------------------- case 2


@pytest.mark.blender
def test_2_an_out_dir_holding_other_data_is_never_written_into(tmp_path):
    logs = tmp_path / "logs"
    out = tmp_path / "ds"
    assert _generate(out, "num_sequences=2", "sequences_per_shard=2", "sequence_length=1", "resolution=16",
                     "progress=false", logs=logs).returncode == 0
    before = _digests(out)
    run = _generate(out, "num_sequences=4", "sequences_per_shard=1", "sequence_length=1", "resolution=16", logs=logs)
    _refused(run, "num_sequences: recorded 2, now 4", "sequences_per_shard: recorded 2, now 1")
    assert _digests(out) == before
    verify = _run("drs-verify", out, "--no-progress")
    assert verify.returncode == 0 and "2 sequences" in verify.stdout

    real = _real_dataset(tmp_path / "real")
    before = _digests(real)
    for extra in ([], ["overwrite=true"]):
        _refused(_generate(real, *SMALL, *extra, logs=logs), "real dataset", "never writes into it")
        assert _digests(real) == before

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("\\section{Results}")
    before = _digests(docs)
    for extra in ([], ["overwrite=true"]):
        _refused(_generate(docs, *SMALL, *extra, logs=logs), "not a drs dataset", "thesis.tex")
        assert _digests(docs) == before


@pytest.mark.blender
def test_2_two_runs_cannot_write_one_shard_or_one_dataset(tmp_path):
    out, logs = tmp_path / "ds", tmp_path / "logs"
    long = ["num_sequences=60", "sequence_length=2", "resolution=16", "sequences_per_shard=60", "progress=false",
            "render.covers_per_lighting=1"]
    first = _start_generate(out, *long, f"hydra.run.dir={logs}")
    try:
        _wait_for_cache(out, first)
        cached = _digests(out / ".partial")
        same = _generate(out, *long, logs=logs)
        assert first.poll() is None, "the first run ended before the second one was tried; make it longer"
        _refused(same, "shard 0 of", f"pid {first.pid} on {HOST}")
        other = _generate(out, *long, "seed=1", logs=logs)
        _refused(other, "seed: recorded 0, now 1")
        after = _digests(out / ".partial")
        assert cached.items() <= after.items(), "the refused runs changed cached sequences"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# ---------------------------------------------------------------------------------- case 3


def test_3_ingest_overwrite_deletes_only_a_drs_dataset(tmp_path, capsys):
    caps = tmp_path / "caps"
    (caps / "cover").mkdir(parents=True)
    (caps / "cover" / "IMG_1.jpg").write_bytes(b"a photo")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "letter.txt").write_text("dear ...")
    synthetic = make_tiny_dataset(tmp_path / "synthetic", num_sequences=2, k=2, size=16)
    (synthetic / "my_notes.txt").write_text("mine")
    everything = {p: _digests(p) for p in (caps, docs, synthetic)}
    cases = [(docs, "not a drs dataset"), (caps, "overlap"), (caps / "cover", "overlap"),
             (tmp_path, "overlap"), (synthetic, "also holds my_notes.txt")]
    for out, needle in cases:
        assert ing.main([str(caps), "--out", str(out), "--overwrite", "--quiet"]) == 2, out
        err = capsys.readouterr().err
        assert needle in err and err.startswith("drs-ingest: error:"), err
        assert {p: _digests(p) for p in everything} == everything
    # A plain file as --out: named, not a traceback.
    (tmp_path / "file.h5").write_bytes(b"x")
    assert ing.main([str(caps), "--out", str(tmp_path / "file.h5"), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file.h5").read_bytes() == b"x"


# ---------------------------------------------------------------------------------- case 4


def test_4_a_required_value_left_out_is_an_error_not_a_default(tmp_path):
    out = tmp_path / "ds"
    run = _generate(out, "covers=folder", *SMALL)
    _refused(run, "covers.dir", "required")
    assert not out.exists(), "a run refused before any work leaves no out_dir behind"


# ---------------------------------------------------------------------------------- case 5


def test_5_an_absurd_plan_is_refused_at_once_with_its_cost(tmp_path):
    out = tmp_path / "ds"
    start = time.perf_counter()
    run = _generate(out, "num_sequences=1000000000", "sequences_per_shard=1", "sequence_length=9",
                    "resolution=64", timeout=120)
    _refused(run, "num_sequences=1000000000", "TB", "core-hours", "free")
    assert time.perf_counter() - start < 120
    assert not out.exists()


@pytest.mark.blender
def test_5_one_shard_of_a_huge_plan_starts_without_listing_the_others(tmp_path):
    out = tmp_path / "ds"
    run = _generate(out, "num_sequences=1000000000", "sequences_per_shard=1", "shard=999999999",
                    "sequence_length=1", "resolution=16", "progress=false", logs=tmp_path / "logs")
    assert run.returncode == 0, run.stderr
    with ShardReader(shard_path(out, 999999999)) as reader:
        assert list(reader.sequence_ids) == [999999999]


# ---------------------------------------------------------------------------------- case 6


def test_6_paths_that_cannot_be_written_are_named(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep")
    _refused(_generate(target, *SMALL), f"out_dir={target}", "not a directory")
    data = make_tiny_dataset(tmp_path / "data", num_sequences=2, k=2, size=16)
    _refused(_run("drs-evaluate", f"data.test={data}", f"out_dir={target}"), f"out_dir={target}")
    _refused(_run("drs-train", f"data.train={data}", f"data.val={data}", f"out_dir={target}"), f"out_dir={target}")
    assert target.read_text() == "keep"
    assert ing.main([str(tmp_path), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_6_validation_errors_go_to_stderr(tmp_path):
    run = _generate(tmp_path / "ds", "resolution=4")
    _refused(run, "resolution=4")
    assert "resolution" not in run.stdout
    missing = tmp_path / "no_such_data"
    run = _run("drs-train", f"data.train={missing}", f"data.val={missing}", f"out_dir={tmp_path / 'run'}",
               f"hydra.run.dir={tmp_path / 'h'}")
    _refused(run, f"{missing}", "no manifest")
    assert "no_such_data" not in run.stdout


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (a real full or read-only disk)")


def _fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)


def test_6_full_and_read_only_disks_are_reported_in_one_line(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "2m")
    try:
        data = make_tiny_dataset(disk / "ds", num_sequences=2, k=2, size=16)
        shards = _digests(data / "shards")
        # drs-verify rewrites manifest.json from the parts; on a full disk it says so, shards untouched.
        (data / "manifest.parts").mkdir()
        (data / "manifest.parts" / "shard-00000.json").write_text(json.dumps({
            "shard_index": 0, "seed": 0, "config": {}, "generator_version": "x", "blender_version": "",
            "device": "cpu", "timings": {}, "rejected": {"covers": [], "frames": [], "sequences": []},
            "shard": read_manifest(data)["shards"][0]}))
        _fill(disk)
        run = _run("drs-verify", data, "--no-progress")
        _refused(run, "No space left on device")
        assert _digests(data / "shards") == shards
        # A checkpoint save names the file and the cause (PyTorch alone says "unexpected pos").
        net = build_model("drs_small")
        with pytest.raises(OSError, match="No space left on device") as info:
            save_checkpoint(disk / "ck.pt", model_state=net.state_dict(), arch="drs_small", arch_args={})
        assert info.value.filename == str(disk / "ck.pt")
        assert not list(disk.glob(".ck.pt.*")), "the temporary checkpoint stays behind"
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "1m")
    try:
        data = make_tiny_dataset(ro / "ds", num_sequences=2, k=2, size=16)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        _refused(_generate(ro / "new", *SMALL), f"out_dir={ro / 'new'}", "cannot write")
        # A read-only dataset can still be checked: only the manifest rewrite is left out.
        run = _run("drs-verify", data, "--no-progress")
        assert run.returncode == 0 and "read-only" in run.stderr, run.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.blender
def test_6_a_disk_filling_up_mid_render_is_one_line_and_leaves_no_temporaries(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64k")
    try:
        # The plan (~43 kB of shards) fits; the cache of the first finished sequence (~86 kB) does not.
        proc = _start_generate(disk / "ds", "num_sequences=2", "sequences_per_shard=2", "sequence_length=3",
                               "resolution=64", "progress=false", f"hydra.run.dir={tmp_path / 'logs'}")
        _, err = proc.communicate(timeout=300)
        _refused(subprocess.CompletedProcess(proc.args, proc.returncode, "", err),
                 "No space left on device", str(disk / "ds"))
        assert not [p for p in disk.rglob("*.partial") if p.is_file()], "an atomic-write temporary stayed"
        assert not _scratch_of(proc.pid), "Blender's scratch folder stayed"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.blender
def test_6_ctrl_c_stops_with_130_says_what_was_kept_and_leaves_no_temporaries(tmp_path):
    out, logs = tmp_path / "ds", tmp_path / "logs"
    proc = _start_generate(out, *INTERRUPTIBLE, f"hydra.run.dir={logs}")
    _wait_for_cache(out, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the CLI and its Blender worker
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "drs-generate: interrupted; kept 0 complete shard(s)" in err and "rerun the same command" in err
    assert not _scratch_of(proc.pid)
    # `kill PID` (SIGTERM, to the command alone) stops it the same way, Blender included.
    again = _start_generate(tmp_path / "ds2", *INTERRUPTIBLE, f"hydra.run.dir={logs}")
    _wait_for_cache(tmp_path / "ds2", again)
    again.send_signal(signal.SIGTERM)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 130 and "drs-generate: interrupted; kept" in err and "Traceback" not in err, err
    assert not _scratch_of(again.pid)
    deadline = time.time() + 15  # multiprocessing's resource tracker leaves once it sees its parent gone
    while subprocess.run(["pgrep", "-g", str(again.pid)], capture_output=True).stdout and time.time() < deadline:
        time.sleep(0.1)
    assert not subprocess.run(["pgrep", "-g", str(again.pid)], capture_output=True).stdout, "Blender still runs"
    assert _generate(out, *INTERRUPTIBLE, logs=logs).returncode == 0


def _interrupt_once(args: list, marker: str, timeout: float = 120) -> tuple[int, str]:
    """Start a command, press Ctrl-C (SIGINT to its process group) once `marker` is on its stderr,
    i.e. once it is at work; returns (exit status, stderr)."""
    proc = subprocess.Popen([str(a) for a in args], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(), preexec_fn=_default_sigint)
    os.set_blocking(proc.stderr.fileno(), False)
    err, deadline = b"", time.time() + timeout
    while marker.encode() not in err and time.time() < deadline and proc.poll() is None:
        err += proc.stderr.read() or b""
        time.sleep(0.05)
    assert marker.encode() in err, err.decode(errors="replace")
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    os.set_blocking(proc.stderr.fileno(), True)
    err += proc.stderr.read() or b""
    proc.stderr.close()
    return proc.returncode, err.decode(errors="replace")


def test_6_ctrl_c_in_the_other_commands_says_what_was_kept(tmp_path):
    data = make_tiny_dataset(tmp_path / "test", num_sequences=40, k=9, size=64)
    out = tmp_path / "eval"
    code, err = _interrupt_once([BIN / "drs-evaluate", f"data.test={data}", f"out_dir={out}", "baselines=[rpca]",
                                 f"hydra.run.dir={tmp_path / 'h'}"], "evaluate:")
    assert code == 130 and "drs-evaluate: interrupted; nothing was written" in err, err
    assert "Traceback" not in err and not (out / "metrics.json").exists()

    from PIL import Image

    rng = np.random.default_rng(0)
    photos = []
    for i in range(4):
        photos.append(tmp_path / f"p{i}.png")
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(photos[-1])
    clean = tmp_path / "clean.png"
    code, err = _interrupt_once([BIN / "drs-restore", "--tile", "256", "--out", clean, *photos], "encoding")
    assert code == 130 and f"drs-restore: interrupted; {clean} was not written" in err, err
    assert "Traceback" not in err and not clean.exists() and not list(tmp_path.glob(".clean.png.*"))


def _checkpoint(path: Path, arch: str = "drs_small", state: dict | None = None) -> Path:
    net = build_model("drs_small")
    return save_checkpoint(path, model_state=state if state is not None else net.state_dict(), arch=arch,
                           arch_args={})


def test_6_evaluate_answers_every_input_error_with_exit_2(tmp_path):
    data = make_tiny_dataset(tmp_path / "test", num_sequences=2, k=3, size=16)
    no_target = make_tiny_dataset(tmp_path / "no_target", num_sequences=2, k=3, size=16, with_target=False)
    (tmp_path / "random.bin").write_bytes(os.urandom(4096))
    wrong = _checkpoint(tmp_path / "wrong.pt", state={"encoder.weight": torch.zeros(3)})
    unknown = _checkpoint(tmp_path / "unknown.pt", arch="no_such_net")
    out = tmp_path / "eval"
    base = [f"hydra.run.dir={tmp_path / 'h'}", f"out_dir={out}", "baselines=[median]"]
    cases = [
        ([f"data.test={data}", f"checkpoint={tmp_path / 'random.bin'}"], "random.bin"),
        ([f"data.test={data}", f"checkpoint={wrong}"], "does not match architecture"),
        ([f"data.test={data}", f"checkpoint={unknown}"], "no_such_net"),
        ([f"data.test={no_target}"], "no sequence with a target"),
        ([f"data.test={data}", "ks=[0]"], "ks must be"),
        ([f"data.test={data}", "subsets=0"], "subsets must be"),
        ([f"data.test={data}", "ks=[20]"], "ks=[20]: every test sequence has fewer images"),
        ([f"data.test={tmp_path / 'missing'}"], "missing"),
    ]
    for args, needle in cases:
        run = _run("drs-evaluate", *base, *args)
        _refused(run, needle)
        assert "weights_only" not in run.stderr
        assert not (out / "metrics.json").exists(), args


def test_6_restore_never_suggests_unsafe_loading(tmp_path):
    (tmp_path / "random.bin").write_bytes(os.urandom(4096))
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    run = _run("drs-restore", "--checkpoint", tmp_path / "random.bin", "--out", tmp_path / "o.png", photo)
    _refused(run, "random.bin")
    assert "weights_only" not in run.stderr and not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------------------------- case 7


def test_7_covers_that_all_fail_leave_no_out_dir(tmp_path):
    covers = tmp_path / "covers"
    covers.mkdir()
    (covers / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "ds"
    _refused(_generate(out, f"covers.dir={covers}", *SMALL), "no usable cover")
    assert not out.exists()


def test_7_a_dead_ingest_leaves_nothing_after_the_next_run(tmp_path):
    from tests.test_ingest import write_sequence

    caps = tmp_path / "caps"
    write_sequence(caps / "cover_a", "astronaut", 0, k=2)
    out = tmp_path / "ds"
    # A run killed mid-way leaves its stage folder beside --out; it names the (now dead) process.
    code = (f"from generator.dataset_guard import make_owned_tempdir; "
            f"p = make_owned_tempdir({str(tmp_path)!r}, '.ds.', '.partial'); (p / 'x.npz').write_bytes(b'x')")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    assert len(list(tmp_path.glob(".ds.*.partial"))) == 1
    assert ing.main([str(caps), "--out", str(out), "--resolution", "32", "--no-ecc", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps", "ds"]


def test_7_restore_keeps_an_existing_output_unless_forced(tmp_path):
    from PIL import Image

    photos = []
    for i in range(2):
        photos.append(tmp_path / f"p{i}.png")
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(photos[-1])
    out = tmp_path / "clean.png"
    out.write_bytes(b"my earlier result")
    run = _run("drs-restore", "--out", out, *photos)
    _refused(run, f"--out {out} exists", "--force")
    assert out.read_bytes() == b"my earlier result"
    run = _run("drs-restore", "--force", "--quiet", "--out", out, *photos)
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size == (16, 16)
