"""`drs-restore`: end to end on tiny photos, output formats, EXIF, and every bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import trainer.restore as restore
from model import build_model
from model.checkpoint import save_checkpoint
from model.online import restore_online


def tiny_net(aggregation: str = "mean"):
    torch.manual_seed(0)
    return build_model("drs_small", encoder_blocks=2, decoder_blocks=2, refine_blocks=2,
                       aggregation=aggregation).eval()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    net = tiny_net()
    return save_checkpoint(tmp_path / "ckpt" / "tiny.pt", model_state=net.state_dict(), arch=net.arch,
                           arch_args=net.arch_args)


def write_photos(folder: Path, k: int = 3, size: tuple[int, int] = (37, 26), seed: int = 0) -> list[Path]:
    """k random RGB photos of size (W, H) as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(k):
        p = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def pixels(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) as stored in the file, read with PIL alone (no EXIF handling)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def network_output(net, images: list[np.ndarray]) -> np.ndarray:
    """The batched network on uint8 (H, W, 3) images, as float (H, W, 3) in 0..255."""
    x = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in images])
    with torch.no_grad():
        return net(x[None])[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255


def run_cli(*args) -> int:
    return restore.main(["--quiet", *map(str, args)])


def assert_failed_cleanly(rc: int, capsys, out: Path, *needles: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists(), "an output was written despite the error"
    leftovers = list(out.parent.glob(f".{out.name}.*")) if out.parent.exists() else []
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def test_restores_a_folder_like_the_network(tmp_path, checkpoint):
    paths = write_photos(tmp_path / "in", k=4)
    out = tmp_path / "result" / "clean.png"
    assert run_cli("--checkpoint", checkpoint, "--out", out, tmp_path / "in") == 0
    got = np.asarray(Image.open(out))
    want = network_output(tiny_net(), [pixels(p) for p in paths])  # not through restore's loader
    assert got.shape == (26, 37, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(float) - want).max() <= 0.51 + 1e-3
    assert list(out.parent.iterdir()) == [out]


@pytest.mark.parametrize("name", ["clean.png", "clean.tif"])
def test_sixteen_bit_output(tmp_path, checkpoint, name):
    write_photos(tmp_path / "in")
    out = tmp_path / name
    assert run_cli("--checkpoint", checkpoint, "--out", out, "--bit-depth", "16", "--tile", "16",
                   str(tmp_path / "in" / "photo*.png")) == 0
    arr = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert arr.dtype == np.uint16 and arr.shape == (26, 37, 3)
    assert len(np.unique(arr)) > 256  # really more than 8 bits of levels


def test_exif_orientation_is_applied(tmp_path, checkpoint):
    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        im = Image.fromarray(rng.integers(0, 256, (20, 32, 3), dtype=np.uint8))  # stored 32 wide, 20 high
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to display"
        im.save(src / f"r{i}.jpg", exif=exif.tobytes())
    Image.fromarray(rng.integers(0, 256, (32, 20, 3), dtype=np.uint8)).save(src / "upright.png")
    out = tmp_path / "o.png"
    assert run_cli("--checkpoint", checkpoint, "--out", out, src) == 0
    assert Image.open(out).size == (20, 32)


# EXIF orientation -> what the viewer shows, as np.rot90/flip of the stored pixels (EXIF 2.3 spec).
ORIENTED = {
    3: lambda a: np.rot90(a, 2),            # rotate 180
    6: lambda a: np.rot90(a, -1),           # rotate 90 clockwise
    8: lambda a: np.rot90(a, 1),            # rotate 90 counter-clockwise
    2: lambda a: a[:, ::-1],                # mirror left-right
    5: lambda a: np.rot90(a, 1)[::-1],      # transpose
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_turns_the_pixels_the_right_way(tmp_path, orientation):
    """Lossless PNGs carrying EXIF orientation: the loader shows exactly what a viewer shows."""
    stored = np.random.default_rng(orientation).integers(0, 256, (20, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    want = ORIENTED[orientation](stored)
    got = (restore.load_image(path).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, want)
    assert restore.probe_size(path) == (want.shape[1], want.shape[0])


def test_exif_rotated_photos_restore_like_upright_ones(tmp_path, checkpoint):
    rng = np.random.default_rng(4)
    upright = [rng.integers(0, 256, (32, 20, 3), dtype=np.uint8) for _ in range(3)]
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    for i, a in enumerate(upright):  # stored turned 90 degrees counter-clockwise, tagged "turn it back"
        Image.fromarray(np.ascontiguousarray(np.rot90(a, 1))).save(src / f"p{i}.png", exif=exif.tobytes())
    out = tmp_path / "o.png"
    assert run_cli("--checkpoint", checkpoint, "--out", out, src) == 0
    want = network_output(tiny_net(), upright)
    assert np.abs(np.asarray(Image.open(out)).astype(float) - want).max() <= 0.51 + 1e-3


def test_resize_makes_different_sizes_work(tmp_path, checkpoint):
    write_photos(tmp_path / "a", k=2, size=(40, 30))
    write_photos(tmp_path / "b", k=1, size=(60, 44), seed=3)
    out = tmp_path / "o.png"
    assert run_cli("--checkpoint", checkpoint, "--out", out, "--resize", tmp_path / "a", tmp_path / "b") == 0
    assert Image.open(out).size == (40, 30)


def test_multi_aggregation_through_the_cli(tmp_path):
    net = tiny_net("multi")
    ckpt = save_checkpoint(tmp_path / "m.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    paths = write_photos(tmp_path / "in", k=3)
    out = tmp_path / "o.png"
    assert run_cli("--checkpoint", ckpt, "--out", out, tmp_path / "in") == 0
    # "multi" streams the photos once per encoder stage; the result must still be the network's.
    want = network_output(net, [pixels(p) for p in paths])
    assert np.abs(np.asarray(Image.open(out)).astype(float) - want).max() <= 0.51 + 1e-3


def test_transform_hook_sees_every_image(tmp_path):
    """restore_files(transform=...) is the --align extension point: it changes what the network sees."""
    paths = write_photos(tmp_path / "in", k=3)
    net = tiny_net()
    seen = []

    def flip(i, img):
        seen.append(i)
        return img.flip(-1)

    got = restore.restore_files(paths, net, transform=flip, progress=False)
    flipped = [restore.load_image(p).flip(-1) for p in paths]
    assert seen == [0, 1, 2]
    assert torch.allclose(got, restore_online(net, lambda: iter(flipped)), atol=1e-6)


# ------------------------------------------------------------------------------ bad inputs
def test_no_images(tmp_path, checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.png"
    assert_failed_cleanly(run_cli("--checkpoint", checkpoint, "--out", out, tmp_path / "empty"), capsys, out,
                          "holds no images")
    assert_failed_cleanly(run_cli("--checkpoint", checkpoint, "--out", out, str(tmp_path / "*.jpg")), capsys, out,
                          "matches no files")
    assert_failed_cleanly(run_cli("--checkpoint", checkpoint, "--out", out, tmp_path / "gone.png"), capsys, out,
                          "gone.png does not exist")


def test_unreadable_image(tmp_path, checkpoint, capsys):
    write_photos(tmp_path / "in", k=2)
    (tmp_path / "in" / "photo9.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "o.png"
    assert_failed_cleanly(run_cli("--checkpoint", checkpoint, "--out", out, tmp_path / "in"), capsys, out,
                          "cannot read image", "photo9.png")


def test_truncated_image_found_while_streaming(tmp_path, checkpoint, capsys):
    """A header that probes fine but pixels that fail to decode: the error comes mid-stream."""
    paths = write_photos(tmp_path / "in", k=2, size=(64, 48))
    Image.open(paths[0]).save(tmp_path / "in" / "cut.jpg", quality=95)
    data = (tmp_path / "in" / "cut.jpg").read_bytes()
    (tmp_path / "in" / "cut.jpg").write_bytes(data[: len(data) // 3])
    out = tmp_path / "o.png"
    out.write_bytes(b"an older result")  # an error must not replace or delete an existing output either
    rc = run_cli("--force", "--checkpoint", checkpoint, "--out", out, tmp_path / "in")
    err = capsys.readouterr().err
    assert rc == 2 and "cut.jpg" in err, err
    assert out.read_bytes() == b"an older result"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.png")] == []


def test_different_sizes_without_resize(tmp_path, checkpoint, capsys):
    write_photos(tmp_path / "a", k=2, size=(40, 30))
    write_photos(tmp_path / "b", k=1, size=(41, 30), seed=3)
    out = tmp_path / "o.png"
    assert_failed_cleanly(run_cli("--checkpoint", checkpoint, "--out", out, tmp_path / "a", tmp_path / "b"),
                          capsys, out, "is 41x30 but", "40x30", "--resize")


def test_bad_checkpoints(tmp_path, capsys, monkeypatch):
    write_photos(tmp_path / "in", k=2)
    out = tmp_path / "o.png"
    assert_failed_cleanly(run_cli("--checkpoint", tmp_path / "missing.pt", "--out", out, tmp_path / "in"),
                          capsys, out, "missing.pt does not exist")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert_failed_cleanly(run_cli("--checkpoint", corrupt, "--out", out, tmp_path / "in"), capsys, out,
                          "corrupt.pt is corrupt")
    other = build_model("drs_base")  # drs_base weights labelled as drs_small
    wrong = save_checkpoint(tmp_path / "wrong.pt", model_state=other.state_dict(), arch="drs_small",
                            arch_args=build_model("drs_small").arch_args)
    assert_failed_cleanly(run_cli("--checkpoint", wrong, "--out", out, tmp_path / "in"), capsys, out,
                          "wrong.pt does not match architecture 'drs_small'", "shape mismatches")
    monkeypatch.setattr(restore, "PACKAGED_WEIGHTS", tmp_path / "weights" / "drs_small.pt")
    assert_failed_cleanly(run_cli("--out", out, tmp_path / "in"), capsys, out,
                          "no --checkpoint given and no packaged weights found")


def test_bad_options(tmp_path, checkpoint, capsys):
    write_photos(tmp_path / "in", k=2)
    for args, needle in [
        (["--out", tmp_path / "o.gif"], "unsupported format .gif"),
        (["--out", tmp_path / "o.jpg", "--bit-depth", "16"], ".jpg cannot hold 16-bit"),
        (["--out", tmp_path / "o.png", "--half", "--device", "cpu"], "--half needs a CUDA device"),
    ]:
        rc = run_cli("--checkpoint", checkpoint, *args, tmp_path / "in")
        assert_failed_cleanly(rc, capsys, Path(args[1]), needle)
