"""Scene builders shared by the alignment branch tests (test_align_features.py, test_align_ecc.py).

Written for mutation testing (tests/mutation.py, issue 17): the whole-capture tests (test_align.py)
rarely reach the half-size retry, the second RANSAC set, the spread rejection or the exact limits
of the counts, so a changed constant or a dropped argument there went unnoticed.

The matches are made exact where a branch depends on them: the images are real (a textured plane
and a view of it through a known homography, so the photometric checks see a genuine photo), but
the keypoints and descriptors of the two Frames are replaced by chosen ones (an anchor descriptor
copied into the photo is a match at distance 0, which the ratio test keeps), so how many matches,
which are consistent with which homography and where they lie is known in advance. Expected
homographies, spreads and errors are computed in the tests from the points, not by align.py. A
plain module, not a test file.
"""

from __future__ import annotations

import cv2
import numpy as np

from generator.align import AlignConfig, Frame, prepare, project, set_region

NO_ECC = AlignConfig(ecc=False)


def _plane(size: int, seed: int = 0) -> np.ndarray:
    """float32 (size, size) grey in [0.1, 0.9]: texture at a few px scale, the flat object."""
    t = cv2.GaussianBlur(np.random.default_rng(seed).random((size, size)).astype(np.float32), (0, 0), 1.5)
    t = (t - t.min()) / (t.max() - t.min())
    return (0.1 + 0.8 * t).astype(np.float32)


def _view(img: np.ndarray, photo_to_anchor: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The photo (size (w, h)) that shows anchor image img through photo_to_anchor."""
    return cv2.warpPerspective(img, photo_to_anchor, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)


def _rot(deg: float, tx: float, ty: float, size: int) -> np.ndarray:
    """photo px -> anchor px: a rotation by deg about the image centre, then a shift."""
    a, c = np.deg2rad(deg), (size - 1) / 2
    m = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    t = np.array([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1.0]])
    return t @ m @ np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])


def _desc(n: int, rng: np.random.Generator) -> np.ndarray:
    """n random RootSIFT-like descriptors (unit norm, non-negative): far apart, no accidental matches."""
    d = rng.random((n, 128)).astype(np.float32) ** 4
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def _set_features(anchor: Frame, photo: Frame, sets, extra_photo: int = 0, seed: int = 0, half=None) -> None:
    """Give the two frames chosen features. sets: [(anchor_pts (n, 2), photo_pts (n, 2)), ...]: each pair
    of points is a match (the same descriptor on both sides). extra_photo: photo keypoints with their
    own descriptors (matched by nothing). half: the same kind of sets for the half-size features
    (Frame.half_features, the cache _match(half=True) reads); None: the full-size ones again."""
    rng = np.random.default_rng(seed)

    def build(groups):
        a_pts = np.concatenate([np.asarray(a, np.float32) for a, _ in groups]).reshape(-1, 2)
        p_pts = np.concatenate([np.asarray(p, np.float32) for _, p in groups]).reshape(-1, 2)
        desc = _desc(len(a_pts), rng)
        p_desc = desc.copy()
        if extra_photo:
            p_pts = np.concatenate([p_pts, rng.uniform(5, 50, (extra_photo, 2)).astype(np.float32)])
            p_desc = np.concatenate([p_desc, _desc(extra_photo, rng)])
        return (a_pts, desc), (p_pts, p_desc)

    (anchor.keypoints, anchor.descriptors), (photo.keypoints, photo.descriptors) = build(sets)
    (a_half, p_half) = build(half) if half is not None else build(sets)
    anchor.half_features, photo.half_features = a_half, p_half


def _grid(x0: float, x1: float, n: int) -> np.ndarray:
    """n x n points on a jittered grid over [x0, x1]^2 (float64 (n*n, 2)): spread, never collinear."""
    g = np.linspace(x0, x1, n)
    pts = np.array([[x, y] for y in g for x in g], np.float64)
    return pts + np.random.default_rng(int(x0 * 7 + n)).uniform(-2, 2, pts.shape)


def _matches(h_photo_to_anchor: np.ndarray, anchor_pts: np.ndarray):
    """(anchor_pts, photo_pts): the photo points that h maps onto anchor_pts."""
    return anchor_pts, project(np.linalg.inv(h_photo_to_anchor), anchor_pts)


def _error(h: np.ndarray, truth: np.ndarray, size: int) -> float:
    """px: how far h maps the corners of a (size x size) photo from where truth maps them."""
    c = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float64)
    return float(np.linalg.norm(project(h, c) - project(truth, c), axis=1).max())


def _hull_area(pts: np.ndarray) -> float:
    return float(cv2.contourArea(cv2.convexHull(np.asarray(pts, np.float32).reshape(-1, 1, 2))))


# ----------------------------------------------------------------------------------------------
# a small photo of a small object on a large anchor


REGION = np.array([[150, 150], [250, 150], [250, 250], [150, 250]], np.float64)  # the object, anchor px
CROP = np.array([[1, 0, 140], [0, 1, 140], [0, 0, 1.0]])  # the photo (120 px) shows anchor [140, 260)^2


def _object_scene():
    """(anchor, photo): anchor 400 px with the object's region set (10 % of it); the photo, 120 px, shows
    the object and a little around it (9 % of the anchor), at the anchor's scale: photo -> anchor is CROP."""
    img = _plane(400, seed=3)
    anchor = set_region(prepare(img, NO_ECC), REGION)
    photo = prepare(_view(img, CROP, (120, 120)), NO_ECC)
    return anchor, photo


# ----------------------------------------------------------------------------------------------
# a plane, slightly turned and shifted


TRUTH = _rot(3.0, 4.0, -3.0, 240)  # photo px -> anchor px


def _rotated_scene(cfg: AlignConfig = NO_ECC):
    """(anchor, photo): a 240-px textured plane and a view of it, slightly turned and shifted (TRUTH)."""
    img = _plane(240, seed=1)
    return prepare(img, cfg), prepare(_view(img, TRUTH, (240, 240)), cfg)
