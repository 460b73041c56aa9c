"""Checkpoint files: read with weights_only=True (a malicious pickle is refused, its code never runs),
and trainer/checkpoints.py's naming, rotation, resume fallback, RNG state and fine-tune init."""

from __future__ import annotations

import logging
import pickle
import random
import subprocess

import numpy as np
import pytest
import torch

from model import build_model
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainer import checkpoints as ckpt


class _Payload:
    """Unpickling this runs `touch MARKER`: what a malicious "checkpoint" would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def tiny(aggregation="mean"):
    torch.manual_seed(0)
    return build_model("drs_small", encoder_blocks=1, decoder_blocks=1, refine_blocks=1, aggregation=aggregation)


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "arch": "drs_small", "arch_args": {}, "model": {}, "x": _Payload(marker)}, path)
    # Control: plain unpickling of the payload does run its code (so its absence below means something).
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="not a PyTorch file, or one holding Python objects besides tensors") as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)  # never advise the unsafe load


def test_checkpoint_round_trip_and_refusals(tmp_path):
    net = tiny()
    path = save_checkpoint(tmp_path / "a" / "c.pt", model_state=net.state_dict(), arch=net.arch,
                           arch_args=net.arch_args, step=7, extra={"k": [1, 2]})
    payload = load_checkpoint(path)
    assert payload["step"] == 7 and payload["extra"] == {"k": [1, 2]} and payload["arch"] == net.arch
    assert all(torch.equal(payload["model"][k], v) for k, v in net.state_dict().items())
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary file left
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="lacks the keys"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format_version": 99, "arch": "x", "arch_args": {}, "model": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format_version 99, expected 1"):
        load_checkpoint(tmp_path / "future.pt")


def test_step_checkpoints_are_found_sorted_and_pruned(tmp_path):
    assert ckpt.step_path(tmp_path, 1000).relative_to(tmp_path).as_posix() == "checkpoints/step-00001000.pt"
    assert ckpt.step_checkpoints(tmp_path) == []
    net = tiny()
    for step in (30, 5, 200, 12):
        save_checkpoint(ckpt.step_path(tmp_path, step), model_state=net.state_dict(), arch=net.arch,
                        arch_args=net.arch_args, step=step)
    for stray in ("best.pt", "step-7.pt.partial", "step-x.pt", "other-00000001.pt"):
        (ckpt.checkpoint_dir(tmp_path) / stray).write_bytes(b"")
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [5, 12, 30, 200]
    ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [30, 200]
    assert (ckpt.checkpoint_dir(tmp_path) / "best.pt").exists()  # pruning never touches best.pt


def test_resume_skips_a_broken_newest_checkpoint(tmp_path, caplog):
    assert ckpt.latest_resumable(tmp_path) is None
    net = tiny()
    for step in (3, 6):
        save_checkpoint(ckpt.step_path(tmp_path, step), model_state=net.state_dict(), arch=net.arch,
                        arch_args=net.arch_args, step=step)
    assert ckpt.latest_resumable(tmp_path)["step"] == 6
    ckpt.step_path(tmp_path, 9).write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoints"):
        payload = ckpt.latest_resumable(tmp_path)
    assert payload["step"] == 6 and payload["_path"] == str(ckpt.step_path(tmp_path, 6))
    [message] = [r.getMessage() for r in caplog.records]
    torn = ckpt.step_path(tmp_path, 9)
    assert message.startswith(f"cannot resume from {torn} (checkpoint {torn} is corrupt")
    assert message.endswith("); trying an older checkpoint")
    # map_location reaches the loader ("meta": tensors without storage, standing in for a GPU).
    assert ckpt.latest_resumable(tmp_path, map_location="meta")["model"]["stem.0.weight"].device.type == "meta"


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    net = tiny()
    opt = torch.optim.Adam(net.parameters())
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)
    state = ckpt.rng_state()
    path = ckpt.save_train_state(tmp_path / "s.pt", net=net, step=4, optimizer=opt, config={"a": 1}, extra={})

    def draws():
        return torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random(), random.gauss(0, 1)

    want = draws()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    assert not torch.equal(draws()[0], want[0])  # control: the reseeded draws differ
    ckpt.set_rng_state(load_checkpoint(path)["rng"])
    got = draws()
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2:] == want[2:]
    ckpt.set_rng_state(state)  # the in-memory state, as the loop restores it
    assert torch.equal(draws()[0], want[0])
    payload = load_checkpoint(path)
    assert payload["step"] == 4 and payload["config"] == {"a": 1} and payload["arch_args"] == net.arch_args
    assert payload["optimizer"]["param_groups"][0]["lr"] == 1e-3


def test_init_weights_from_needs_the_same_architecture_and_keys(tmp_path, caplog):
    src = tiny()
    path = save_checkpoint(tmp_path / "p.pt", model_state=src.state_dict(), arch=src.arch, arch_args=src.arch_args, step=11)
    dst = build_model("drs_small", encoder_blocks=1, decoder_blocks=1, refine_blocks=1)
    with caplog.at_level(logging.INFO, logger="trainer.checkpoints"):
        ckpt.init_weights_from(dst, path)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    assert [r.getMessage() for r in caplog.records] == [f"initialised weights from {path} (step 11)"]
    # An argument only one side has is a difference too.
    extra_arg = save_checkpoint(tmp_path / "a.pt", model_state=src.state_dict(), arch=src.arch,
                                arch_args={**src.arch_args, "gain": 2})
    with pytest.raises(CheckpointError, match=r"\{'gain': \(2, None\)\}"):
        ckpt.init_weights_from(dst, extra_arg)
    other = tiny("max")
    with pytest.raises(CheckpointError, match=r"differing arguments \(checkpoint, config\): \{'aggregation': \('mean', 'max'\)\}"):
        ckpt.init_weights_from(other, path)
    state = dict(src.state_dict())
    extra_key, dropped = "encoder.extra.weight", sorted(state)[0]
    state[extra_key] = torch.zeros(1)
    del state[dropped]
    bad = save_checkpoint(tmp_path / "k.pt", model_state=state, arch=src.arch, arch_args=src.arch_args)
    with pytest.raises(CheckpointError, match=rf"missing keys \['{dropped}'\]; unexpected keys \['{extra_key}'\]"):
        ckpt.init_weights_from(dst, bad)
    del state[extra_key]  # only a missing key: refused as well
    only_missing = save_checkpoint(tmp_path / "m.pt", model_state=state, arch=src.arch, arch_args=src.arch_args)
    with pytest.raises(CheckpointError, match=rf"missing keys \['{dropped}'\]; unexpected keys \[\]"):
        ckpt.init_weights_from(dst, only_missing)
    state = dict(src.state_dict())
    state[dropped] = torch.zeros(*state[dropped].shape, 2)
    wrong_shape = save_checkpoint(tmp_path / "s.pt", model_state=state, arch=src.arch, arch_args=src.arch_args)
    with pytest.raises(CheckpointError, match=rf"(?s)init_from={wrong_shape}: .*size mismatch"):
        ckpt.init_weights_from(dst, wrong_shape)


def test_init_weights_from_fills_arguments_added_after_the_checkpoint(tmp_path):
    """drs_fusion gained context_size after checkpoints were shipped: a checkpoint without it is the
    default (128) and loads; one that names another value is refused with both values."""
    src = build_model("drs_fusion", context_blocks=1)
    older = {k: v for k, v in src.arch_args.items() if k != "context_size"}
    path = save_checkpoint(tmp_path / "old.pt", model_state=src.state_dict(), arch=src.arch, arch_args=older)
    dst = build_model("drs_fusion", context_blocks=1)
    ckpt.init_weights_from(dst, path)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    other = save_checkpoint(tmp_path / "other.pt", model_state=src.state_dict(), arch=src.arch,
                            arch_args={**older, "context_size": 256})
    with pytest.raises(CheckpointError, match=r"\{'context_size': \(256, 128\)\}"):
        ckpt.init_weights_from(dst, other)
    unknown = save_checkpoint(tmp_path / "unknown.pt", model_state=src.state_dict(), arch="drs_gone", arch_args=older)
    with pytest.raises(CheckpointError, match="checkpoint is architecture 'drs_gone'"):
        ckpt.init_weights_from(dst, unknown)
