"""The network itself: sizes, permutation invariance, any K, any H/W, checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from model import ARCHITECTURES, DeepResidualSet, build_model, model_from_checkpoint
from model.checkpoint import CheckpointError, save_checkpoint

AGGS = ["mean", "max", "multi"]


def tiny(aggregation: str = "mean", **kw) -> DeepResidualSet:
    """drs_small's shape with few blocks: fast on 2 cores, same code paths."""
    torch.manual_seed(0)
    args = {"encoder_blocks": 3, "decoder_blocks": 2, "refine_blocks": 2, "aggregation": aggregation, **kw}
    return build_model("drs_small", **args).eval()


@pytest.mark.parametrize(("arch", "low", "high"), [("drs_small", 0.35e6, 0.45e6), ("drs_base", 1.4e6, 1.6e6)])
def test_named_architectures_have_the_prototype_sizes(arch, low, high):
    net = build_model(arch)
    n = sum(p.numel() for p in net.parameters())
    assert low < n < high, f"{arch}: {n} parameters"
    assert net.arch == arch and net.arch_args["planes"] == ARCHITECTURES[arch]["planes"]


def test_arch_args_rebuild_the_same_architecture():
    net = build_model("drs_base", aggregation="multi", refine_blocks=3)
    again = build_model(net.arch, **net.arch_args)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
    assert all(isinstance(v, str | int | list) for v in net.arch_args.values())


def test_bad_builder_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown architecture 'drs_huge'"):
        build_model("drs_huge")
    with pytest.raises(ValueError, match="widht"):
        build_model("drs_small", widht=3)
    with pytest.raises(ValueError, match="aggregation='median'"):
        build_model("drs_small", aggregation="median")


@pytest.mark.parametrize("aggregation", AGGS)
def test_permutation_invariant(aggregation):
    net = tiny(aggregation)
    x = torch.rand(2, 5, 3, 24, 28)
    with torch.no_grad():
        y = net(x)
        y_perm = net(x[:, torch.tensor([3, 0, 4, 2, 1])])
    assert torch.allclose(y, y_perm, atol=1e-5)
    # Not vacuous: the network does more than return the mean image, and it sees every image.
    assert (y - x.mean(1)).abs().max() > 1e-3
    x2 = x.clone()
    x2[:, 4] = 0
    with torch.no_grad():
        assert (net(x2) - y).abs().max() > 1e-3


@pytest.mark.parametrize("aggregation", AGGS)
@pytest.mark.parametrize(("k", "h", "w"), [(1, 16, 16), (1, 17, 30), (3, 13, 9), (2, 1, 5)])
def test_any_set_size_and_image_size(aggregation, k, h, w):
    net = tiny(aggregation)
    x = torch.rand(2, k, 3, h, w)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, h, w) and torch.isfinite(y).all()


def test_single_image_padding_is_cropped_consistently():
    """An odd-sized image gives the same pixels as the same image with its padding made explicit."""
    net = tiny()
    x = torch.rand(1, 2, 3, 18, 21)
    padded = torch.nn.functional.pad(x[0], (0, 3, 0, 2), mode="replicate")[None]
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., :18, :21], atol=1e-6)


def test_encoder_parameters_are_exactly_the_per_image_encoder():
    net = build_model("drs_small", aggregation="multi")
    enc = {id(p) for p in net.encoder_parameters()}
    expected = {id(p) for m in (net.stem, net.encoder, net.fuse) for p in m.parameters()}
    assert enc == expected and len(enc) > 0
    assert not enc & {id(p) for p in net.decoder.parameters()}


def test_trains_end_to_end():
    net = tiny("multi").train()
    x, target = torch.rand(2, 3, 3, 16, 20), torch.rand(2, 3, 16, 20)
    loss = torch.nn.functional.mse_loss(net(x), target)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # And the gradients point downhill: a few Adam steps lower the loss on this batch.
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(5):
        opt.step()
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), target).backward()
    assert torch.nn.functional.mse_loss(net(x), target) < loss


def test_checkpoint_round_trip(tmp_path):
    net = tiny("max")
    path = save_checkpoint(tmp_path / "c.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    again = model_from_checkpoint(path)
    x = torch.rand(1, 3, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert again.arch == "drs_small" and again.arch_args == net.arch_args


def test_checkpoint_of_another_architecture_is_rejected_with_the_keys(tmp_path):
    base = build_model("drs_base")
    payload = {"arch": "drs_small", "arch_args": build_model("drs_small").arch_args, "model": base.state_dict()}
    with pytest.raises(CheckpointError, match=r"missing keys \[decoder\.5\..*shape mismatches \[decoder\.0\.conv1\.bias: checkpoint \(72,\) vs model \(32,\)"):
        model_from_checkpoint(payload)
    multi = tiny("multi")
    path = save_checkpoint(tmp_path / "m.pt", model_state=multi.state_dict(), arch="drs_small",
                           arch_args={**multi.arch_args, "aggregation": "mean"})
    with pytest.raises(CheckpointError, match=r"m\.pt does not match.*missing keys \[encoder\.0\.1\..*unexpected keys \[encoder\.1\.0\."):
        model_from_checkpoint(path)


def test_corrupt_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        model_from_checkpoint(bad)
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        model_from_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="cannot build architecture 'drs_giant'"):
        model_from_checkpoint({"arch": "drs_giant", "arch_args": {}, "model": {}})
