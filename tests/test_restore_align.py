"""`drs-restore --align`: handheld photos are warped onto the anchor photo inside the streaming path."""

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
from tests.captures import corner_error, make_capture, object_image
from trainer.restore_align import Aligner

PHOTO = (224, 176)


def mean_net():
    """A network whose output is exactly the mean of its inputs (its residual head is zeroed), so a
    restored image can be compared with the truth without training anything."""
    torch.manual_seed(0)
    net = build_model("drs_small", encoder_blocks=1, decoder_blocks=1, refine_blocks=1).eval()
    with torch.no_grad():
        net.to_rgb.weight.zero_()
        net.to_rgb.bias.zero_()
    return net


@pytest.fixture(scope="module")
def capture():
    return make_capture("astronaut", k=5, seed=3, photo_size=PHOTO)


@pytest.fixture
def photos(tmp_path, capture) -> list[Path]:
    paths = []
    for i, p in enumerate(capture.photos):
        paths.append(tmp_path / "in" / f"photo{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(p).save(paths[-1])
    return paths


def true_map(capture, i: int, anchor: int) -> np.ndarray:
    """photo i px -> anchor photo px."""
    return np.linalg.inv(capture.truth[anchor]) @ capture.truth[i]


def clean_in_frame(capture, anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean reference seen in the anchor photo's frame, float (H, W, 3), and where it is known."""
    ref = capture.reference.astype(np.float32) / 255
    h = capture.truth[anchor]  # anchor px -> reference px
    clean = cv2.warpPerspective(ref, h, PHOTO, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    known = cv2.warpPerspective(np.ones(ref.shape[:2], np.float32), h, PHOTO, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    # Also where every photo covers the anchor frame: elsewhere --align fills in anchor pixels.
    for i in range(len(capture.photos)):
        cover = cv2.warpPerspective(np.ones(PHOTO[::-1], np.float32), true_map(capture, i, anchor), PHOTO,
                                    flags=cv2.INTER_NEAREST)
        known *= cover
    known = cv2.erode(known, np.ones((7, 7), np.uint8)).astype(bool)
    return clean, known


def oracle_psnr(capture, anchor: int) -> float:
    """Fitted PSNR of the mean of the photos warped with the true homographies: what perfect
    alignment gives (the occluders, shadows and exposures still spoil the plain mean)."""
    clean, known = clean_in_frame(capture, anchor)
    frames = [cv2.warpPerspective(p.astype(np.float32) / 255, true_map(capture, i, anchor), PHOTO)
              for i, p in enumerate(capture.photos)]
    return fitted_psnr(np.mean(frames, axis=0), clean, known)


def fitted_psnr(img: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) inside mask after the best per-channel gain + offset (the photos' exposures differ)."""
    err = []
    for c in range(3):
        x, y = img[..., c][mask], truth[..., c][mask]
        a, b = np.polyfit(x, y, 1)
        err.append((a * x + b - y) ** 2)
    return float(-10 * np.log10(np.mean(err)))


def test_aligner_homographies_and_streamed_frames_within_a_pixel(capture, photos):
    aligner = Aligner(photos, PHOTO, anchor=0, progress=False)
    assert aligner.rejected == [] and aligner.paths == photos
    for i, h in enumerate(aligner.homographies):
        assert corner_error(h, true_map(capture, i, 0), PHOTO) < 1.0, i
    # What the network is fed: record the transform's output inside the real streaming path.
    seen = {}

    def record(i, img):
        out = aligner(i, img)
        seen[i] = out.permute(1, 2, 0).numpy()
        return out

    net = mean_net()
    got = restore.restore_files(photos, net, transform=record, progress=False, tile=None)
    clean, known = clean_in_frame(capture, 0)
    for i, frame in seen.items():
        want = cv2.warpPerspective(capture.photos[i].astype(np.float32) / 255, true_map(capture, i, 0), PHOTO)
        assert np.median(np.abs(frame - want)[known]) < 0.02, i
    # The network (a pure mean here) saw the aligned frames: its output is their mean.
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), np.mean(list(seen.values()), axis=0), atol=1e-4)


def test_cli_align_output_is_closer_to_the_truth(tmp_path, capture, photos):
    net = mean_net()
    ckpt = save_checkpoint(tmp_path / "mean.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    clean, known = clean_in_frame(capture, 0)
    scores = {}
    for flag in ("--align", None):
        out = tmp_path / f"out-{flag}.png"
        args = ["--quiet", "--checkpoint", str(ckpt), "--out", str(out), str(tmp_path / "in")]
        assert restore.main(args + ([flag] if flag else [])) == 0
        scores[flag] = fitted_psnr(np.asarray(Image.open(out), np.float32) / 255, clean, known)
    best = oracle_psnr(capture, 0)
    assert scores["--align"] > scores[None] + 5, (scores, best)
    assert scores["--align"] > best - 0.5, (scores, best)


def test_align_to_another_photo(capture, photos, tmp_path):
    aligner = Aligner(photos, PHOTO, anchor=2, progress=False)
    for i, h in enumerate(aligner.homographies):
        assert corner_error(h, true_map(capture, i, 2), PHOTO) < 1.0, i
    out = tmp_path / "out.png"
    args = ["--quiet", "--checkpoint", str(save_checkpoint(tmp_path / "m.pt", model_state=mean_net().state_dict(),
            arch="drs_small", arch_args=mean_net().arch_args)), "--out", str(out), "--align-to", "2", *map(str, photos)]
    assert restore.main(args) == 0
    clean, known = clean_in_frame(capture, 2)
    assert fitted_psnr(np.asarray(Image.open(out), np.float32) / 255, clean, known) > oracle_psnr(capture, 2) - 0.5


def test_unalignable_photo_is_skipped_with_its_reason(tmp_path, photos, capsys):
    other = tmp_path / "in" / "photo9_other.png"
    Image.fromarray(cv2.resize(object_image("coffee"), PHOTO)).save(other)
    blank = tmp_path / "in" / "photo8_blank.png"
    Image.fromarray(np.full((PHOTO[1], PHOTO[0], 3), 200, np.uint8)).save(blank)
    net = mean_net()
    ckpt = save_checkpoint(tmp_path / "m.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    out = tmp_path / "out.png"
    assert restore.main(["--checkpoint", str(ckpt), "--out", str(out), "--align", str(tmp_path / "in")]) == 0
    err = capsys.readouterr().err
    assert f"skipping {other}" in err and "matches" in err, err
    assert f"skipping {blank}" in err and "too few features" in err, err
    assert f"restored {len(photos)} images" in err, err


def test_align_to_out_of_range_fails_cleanly(tmp_path, photos, capsys):
    net = mean_net()
    ckpt = save_checkpoint(tmp_path / "m.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    out = tmp_path / "out.png"
    rc = restore.main(["--quiet", "--checkpoint", str(ckpt), "--out", str(out), "--align-to", "7", *map(str, photos)])
    assert rc == 2
    assert "--align-to 7" in capsys.readouterr().err
    assert not out.exists()


def test_align_outputs_the_flat_cover_or_says_why_not(tmp_path, capsys):
    """Handheld photos of a cover on a table (tests/semireal.py): the output is the cover, front-on,
    at its own aspect ratio; --corners gives the outline by hand; --rectify off keeps the frame."""
    from tests.semireal import make_sequence

    cap = make_sequence(9, photos=4, intruders=0, photo_size=(480, 360), table="plain")
    folder = tmp_path / "photos"
    cap.write(folder)
    (folder / "reference.jpg").unlink()  # restore has no reference: photo 0 anchors
    net = mean_net()
    ckpt = save_checkpoint(tmp_path / "m.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    base = ["--checkpoint", str(ckpt), str(folder)]
    assert restore.main(["--align", "--out", str(tmp_path / "flat.png"), *base]) == 0
    err = capsys.readouterr().err
    assert "rectified to the outline found in IMG_00.jpg" in err, err
    w, h = Image.open(tmp_path / "flat.png").size
    assert w / h == pytest.approx(cap.aspect, rel=0.04) and h > 100
    # The same by hand: the true corners of the cover in photo 0, in any order.
    corners = cv2.perspectiveTransform(cap.quad[None], np.linalg.inv(cap.truth[0]))[0]
    text = ",".join(f"{v:.1f}" for v in corners[::-1].ravel())
    assert restore.main(["--corners", text, "--out", str(tmp_path / "hand.png"), *base]) == 0
    assert "rectified to the given --corners" in capsys.readouterr().err
    hand = np.asarray(Image.open(tmp_path / "hand.png"), np.float32)
    flat = np.asarray(Image.open(tmp_path / "flat.png"), np.float32)
    if hand.shape == flat.shape:  # found and given outlines agree: so do the pictures
        assert np.median(np.abs(hand - flat)) < 8
    assert restore.main(["--align", "--rectify", "off", "--out", str(tmp_path / "frame.png"), *base]) == 0
    assert Image.open(tmp_path / "frame.png").size == (480, 360)
    assert restore.main(["--corners", "1,2,3", "--out", str(tmp_path / "bad.png"), *base]) == 2
    err = capsys.readouterr().err
    assert "--corners" in err and "expected 8 numbers" in err and not (tmp_path / "bad.png").exists()


def test_outline_hidden_in_the_anchor_is_found_in_the_median_of_the_photos(tmp_path, capsys):
    """A hand over a corner of the cover in the anchor photo: its own outline is gone, but the
    median of the aligned photos (each spoiled elsewhere) still shows the whole cover."""
    from tests.semireal import make_sequence

    cap = make_sequence(9, photos=5, intruders=0, photo_size=(480, 360), table="plain")
    folder = tmp_path / "photos"
    cap.write(folder)
    (folder / "reference.jpg").unlink()
    corner = cv2.perspectiveTransform(cap.quad[None], np.linalg.inv(cap.truth[0]))[0][2]  # bottom right
    hand = cap.photos[0].copy()
    cv2.circle(hand, tuple(int(v) for v in corner), 45, (200, 160, 140), -1)
    Image.fromarray(hand).save(folder / "IMG_00.jpg", quality=92)
    net = mean_net()
    ckpt = save_checkpoint(tmp_path / "m.pt", model_state=net.state_dict(), arch=net.arch, arch_args=net.arch_args)
    assert restore.main(["--align", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.png"), str(folder)]) == 0
    err = capsys.readouterr().err
    assert "rectified to the outline found in the median of the aligned photos" in err, err
    w, h = Image.open(tmp_path / "o.png").size
    assert w / h == pytest.approx(cap.aspect, rel=0.05)


def test_aligner_reports_the_outline_it_rectified_to(tmp_path):
    """Aligner.quad is the outline the output is rectified to (anchor px; what
    benchmarks/restore_alignment.py checks against the truth), None when the output stays in the
    anchor photo's frame."""
    from tests.semireal import make_sequence

    cap = make_sequence(9, photos=4, intruders=0, photo_size=(480, 360), table="plain")
    cap.write(tmp_path)
    paths = sorted(tmp_path.glob("IMG_*.jpg"))  # no reference: photo 0 anchors
    truth = cv2.perspectiveTransform(cap.quad[None], np.linalg.inv(cap.truth[0]))[0]
    found = Aligner(paths, (480, 360), progress=False).quad
    worst = min(np.linalg.norm(np.roll(found, k, axis=0) - truth, axis=1).max() for k in range(4))
    assert worst < 0.01 * np.hypot(480, 360), (found, truth)
    assert Aligner(paths, (480, 360), progress=False, rectify="off").quad is None
