"""Packaged weights are a training checkpoint stripped to the weights, and restore identically."""

from __future__ import annotations

import torch

from model import build_model, model_from_checkpoint
from model.checkpoint import load_checkpoint, save_checkpoint
from trainer.export_weights import main


def test_export_keeps_the_network_and_drops_training_state(tmp_path):
    net = build_model("drs_small")
    opt = torch.optim.Adam(net.parameters())
    net(torch.rand(1, 2, 3, 16, 16)).mean().backward()
    opt.step()
    src = save_checkpoint(tmp_path / "best.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args,
                          step=7, optimizer=opt.state_dict(), config={"seed": 0}, extra={"metrics": {"psnr": 30.0}})
    assert main([str(src), str(tmp_path / "w.pt")]) == 0
    payload = load_checkpoint(tmp_path / "w.pt")
    assert payload["optimizer"] is None and payload["rng"] is None and payload["step"] == 7
    assert payload["extra"]["validation"] == {"psnr": 30.0}
    assert (tmp_path / "w.pt").stat().st_size < src.stat().st_size
    x = torch.rand(1, 3, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(tmp_path / "w.pt")(x), net.eval()(x))


def test_export_writes_out_arguments_the_architecture_gained_later(tmp_path):
    """A run started before drs_fusion had context_size exports it explicitly, at the default it trained under."""
    net = build_model("drs_fusion", context_blocks=1)
    older = {k: v for k, v in net.arch_args.items() if k != "context_size"}
    src = save_checkpoint(tmp_path / "best.pt", model_state=net.state_dict(), arch=net.arch, arch_args=older, step=3)
    assert main([str(src), str(tmp_path / "w.pt")]) == 0
    assert load_checkpoint(tmp_path / "w.pt")["arch_args"] == {**older, "context_size": 128} == net.arch_args


def test_a_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"nope")
    assert main([str(tmp_path / "bad.pt"), str(tmp_path / "w.pt")]) == 2
    assert not (tmp_path / "w.pt").exists()
