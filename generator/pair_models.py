"""Photo-to-photo homographies for a set of handheld photos: the models a pair of photos supports,
the guards that drop the ones a flat cover cannot give, and the loops that confirm them.

    photos = [SetPhoto.load(img) for img in images]
    models = all_pair_models(photos, AlignConfig(), default_guard(photos[0].frame.work_size))
    seeds = loop_seeds(models, photos[0].frame.work_size, len(photos))   # Seed: photos that agree

Every pair of photos is matched once, and up to `MAX_MODELS` homographies are pulled out of the
matches one after another (sequential MAGSAC): the cover with the table it lies on, and any other
thing that shows in both photos. Measured on the semi-real captures (tests/semireal.py, 12 sets
of 8 photos + an intruder, all pairs): 238 right models, and 154 wrong ones, mostly on two alike
occluders (up to 450 inliers); intruders gave 76. Two guards drop what cannot be the cover:

- `centre_problem`: the capture protocol centres every photo on the cover, so a right model maps
  one frame's centre near the other's (measured: at most 0.10 of the diagonal, median 0.04; wrong
  models a median 0.17, intruders 0.31);
- `screen_fixed_problem`: a near-identity model whose inliers are not the object's (a lens
  sticker, a date stamp, an overlay, or a texture fixed in photo pixels as tests/semireal.py once
  drew its occluders): no right model moved its inliers less than 21 px (2 % of the diagonal).

What survives is still not known to be the cover (two photos with the same mug agree on the mug);
`loop_seeds` finds triplets whose models agree around the loop, and generator/align_set.py lets
the photos vote on them. NumPy and OpenCV only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import cv2
import numpy as np

from generator.align import AlignConfig, Frame, homography_problem, prepare, project, work_copy

MAX_MODELS = 3  # homographies pulled out of one pair's matches
MIN_PAIR_INLIERS = 8  # for a pair model (the seeds are confirmed around loops, so fewer than align's 10)
# Of the work image's diagonal: how far H_ij and H_ik H_kj may disagree on the central grid. Right
# models are ~0.5 px off each; at 1 % three photos of a wood-grained table closed a loop on models
# that slid 12-17 px along the grain (measured, 640x480), at 0.5 % they did not.
LOOP_TOLERANCE = 0.005
# The capture protocol (README: "from roughly the same position", the cover filling most of the
# frame) centres every photo on the cover; see the module docstring for the measurement.
MAX_CENTRE_SHIFT = 0.15  # of the diagonal
DEFAULT_CONFIG = AlignConfig()


# ---------------------------------------------------------------------------------- the photos
@dataclass
class SetPhoto:
    """One photo prepared for set alignment: its Frame and a small colour copy (uint8 (h, w, 3),
    the work size) for the medians."""

    frame: Frame
    small: np.ndarray

    @classmethod
    def load(cls, image: np.ndarray, cfg: AlignConfig = DEFAULT_CONFIG) -> SetPhoto:
        img = np.asarray(image)
        if img.dtype != np.uint8:
            img = np.clip(img.astype(np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
        small, _ = work_copy(img, cfg.work_size)
        return cls(prepare(img, cfg), np.ascontiguousarray(small))


@dataclass
class PairModel:
    """A homography between two photos' work copies: photo j work px -> photo i work px, with its
    inlier points (src in j, dst in i, float32 (n, 2))."""

    i: int
    j: int
    h: np.ndarray
    src: np.ndarray
    dst: np.ndarray

    @property
    def inliers(self) -> int:
        return len(self.src)


# ---------------------------------------------------------------------------------- the guard
def screen_fixed_problem(h: np.ndarray, src: np.ndarray, dst: np.ndarray, size: tuple[int, int],
                         region: np.ndarray | None = None, still_px: float = 0.0,
                         blob: float = 0.0) -> str | None:
    """Why a photo-to-photo homography h (src px -> dst px, inliers src, dst float (n, 2)) is
    supported only by things fixed on the screen, or None.

    A thing that stays put in the frame while the camera moves (a lens smudge, a date stamp, an
    overlay, glare from a lamp fixed to the phone, a pattern that was printed in screen pixels)
    matches itself at the identity. Such a model is only rejected when it is near the identity
    (every inlier moved less than `still_px` px) AND its inliers are not the object's: most of
    them outside `region` (the object's quadrilateral in dst px, when known), or all of them in
    one blob (convex hull under `blob` of the frame, size (W, H)). A handheld set taken from one
    spot also aligns near the identity, but its inliers spread over the object."""
    if len(src) == 0 or still_px <= 0:
        return None
    moved = np.linalg.norm(project(h, src.astype(np.float64)) - src, axis=1)
    if np.max(moved) >= still_px:
        return None
    if region is not None:
        inside = np.array([cv2.pointPolygonTest(region.astype(np.float32).reshape(-1, 1, 2),
                                                (float(x), float(y)), False) >= 0 for x, y in dst])
        if inside.mean() < 0.5:
            return (f"screen-fixed match: the model is near the identity (inliers moved < {still_px:.1f} px) and "
                    f"{1 - inside.mean():.0%} of its {len(dst)} inliers lie outside the object")
    hull = cv2.contourArea(cv2.convexHull(dst.astype(np.float32).reshape(-1, 1, 2))) if len(dst) >= 3 else 0.0
    frac = hull / float(size[0] * size[1])
    if frac < blob:
        return (f"screen-fixed match: the model is near the identity (inliers moved < {still_px:.1f} px) and its "
                f"{len(dst)} inliers sit in one blob ({frac:.1%} of the frame)")
    return None


def centre_problem(h: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int],
                   limit: float = MAX_CENTRE_SHIFT) -> str | None:
    """Why homography h (src px -> dst px) cannot relate two photos centred on the same cover, or None:
    it moves the centre of the src frame more than `limit` of the diagonal from the dst's centre."""
    c_src = np.array([[(src_size[0] - 1) / 2, (src_size[1] - 1) / 2]])
    c_dst = np.array([(dst_size[0] - 1) / 2, (dst_size[1] - 1) / 2])
    shift = float(np.linalg.norm(project(h, c_src)[0] - c_dst)) / float(np.hypot(*dst_size))
    if shift > limit:
        return (f"off centre: the photo's centre lands {shift:.0%} of the diagonal from the others' (max "
                f"{limit:.0%}; the cover should fill the middle of every photo)")
    return None


# ---------------------------------------------------------------------------------- pair models
def match_points(a: Frame, b: Frame, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test matches of b's features to a's -> (b points, a points), float32 (m, 2) work px."""
    if a.descriptors is None or b.descriptors is None or len(a.keypoints) < 2 or len(b.keypoints) < 2:
        return np.empty((0, 2), np.float32), np.empty((0, 2), np.float32)
    norm = cv2.NORM_L2 if a.descriptors.dtype == np.float32 else cv2.NORM_HAMMING
    pairs = cv2.BFMatcher(norm).knnMatch(b.descriptors, a.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    src = np.array([b.keypoints[m.queryIdx] for m in good], np.float32).reshape(-1, 2)
    dst = np.array([a.keypoints[m.trainIdx] for m in good], np.float32).reshape(-1, 2)
    return src, dst


def pair_models(photos: list[SetPhoto], i: int, j: int, cfg: AlignConfig, guard: dict) -> list[PairModel]:
    """Up to MAX_MODELS plausible, not screen-fixed homographies photo j -> photo i (work px),
    strongest first: each found among the matches the previous ones left over."""
    a, b = photos[i].frame, photos[j].frame
    src, dst = match_points(a, b, cfg.ratio)
    models: list[PairModel] = []
    for _ in range(MAX_MODELS):
        if len(src) < MIN_PAIR_INLIERS:
            break
        h, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, cfg.ransac_threshold, maxIters=5000, confidence=0.999)
        if h is None or inl is None or inl.sum() < MIN_PAIR_INLIERS:
            break
        inl = inl.ravel().astype(bool)
        problem = homography_problem(h, b.work_size, a.work_size, cfg)[0] or \
            screen_fixed_problem(h, src[inl], dst[inl], a.work_size, **guard) or centre_problem(h, b.work_size, a.work_size)
        if problem is None:
            models.append(PairModel(i, j, h / h[2, 2], src[inl], dst[inl]))
        src, dst = src[~inl], dst[~inl]
    return models


def all_pair_models(photos: list[SetPhoto], cfg: AlignConfig, guard: dict) -> dict[tuple[int, int], list[PairModel]]:
    """pair_models of every pair i < j (photo j -> photo i); the other direction is the inverse."""
    return {(i, j): pair_models(photos, i, j, cfg, guard) for i, j in itertools.combinations(range(len(photos)), 2)}


def model_between(models: dict, i: int, j: int, m: int) -> np.ndarray:
    """Model m of the pair as a map photo j work px -> photo i work px (either stored direction)."""
    if i < j:
        return models[(i, j)][m].h
    return np.linalg.inv(models[(j, i)][m].h)


def probe_grid(size: tuple[int, int]) -> np.ndarray:
    """(9, 2) px: a 3 x 3 grid over the central 60 % of a frame (W, H), where a set's photos overlap;
    the frame's corners would exaggerate small differences by extrapolation."""
    w, h = size
    u, v = np.meshgrid(np.linspace(0.2, 0.8, 3) * (w - 1), np.linspace(0.2, 0.8, 3) * (h - 1))
    return np.c_[u.ravel(), v.ravel()]


@dataclass
class Seed:
    """Photos whose models agree around a loop: members[0] is the frame the others map into;
    to_first[k]: photo members[k] work px -> photo members[0] work px. strength: the weakest
    model's inlier count (what ranks seeds)."""

    members: list[int]
    to_first: list[np.ndarray]
    strength: int
    models: set = field(default_factory=set)  # (i, j, m) keys of the models used


def loop_seeds(models: dict, size: tuple[int, int], n: int) -> list[Seed]:
    """Triplets (i, j, k) with models that agree around the loop, H_ik ~ H_ij H_jk within
    LOOP_TOLERANCE of the diagonal on the central grid, strongest first."""
    probe, tol = probe_grid(size), LOOP_TOLERANCE * float(np.hypot(*size))
    seeds = []
    for i, j, k in itertools.combinations(range(n), 3):
        for a, b, c in itertools.product(range(len(models[(i, j)])), range(len(models[(j, k)])),
                                         range(len(models[(i, k)]))):
            h_ij, h_jk, h_ik = models[(i, j)][a], models[(j, k)][b], models[(i, k)][c]
            gap = np.linalg.norm(project(h_ij.h @ h_jk.h, probe) - project(h_ik.h, probe), axis=1).max()
            if gap <= tol:
                strength = min(h_ij.inliers, h_jk.inliers, h_ik.inliers)
                seeds.append(Seed([i, j, k], [np.eye(3), h_ij.h, h_ik.h], strength,
                                  {(i, j, a), (j, k, b), (i, k, c)}))
    return sorted(seeds, key=lambda s: -s.strength)


def pair_seeds(models: dict) -> list[Seed]:
    """Single pair models as seeds (when no loop closes), strongest first."""
    seeds = [Seed([i, j], [np.eye(3), m.h], m.inliers, {(i, j, a)})
             for (i, j), ms in models.items() for a, m in enumerate(ms)]
    return sorted(seeds, key=lambda s: -s.strength)


def distinct(seeds: list[Seed], limit: int) -> list[Seed]:
    """The strongest seeds that share no model with a stronger one (a strong occluder-to-occluder
    model would otherwise fill every slot), at most `limit`."""
    chosen, used = [], set()
    for s in seeds:
        if not s.models & used:
            chosen.append(s)
            used |= s.models
        if len(chosen) == limit:
            break
    return chosen


def default_guard(size: tuple[int, int]) -> dict:
    """screen_fixed_problem's thresholds for a work frame of size (W, H). Measured on the semi-real
    captures (see the module docstring): no right photo-to-photo model moved its
    inliers less than 21 px (1024x768 work px: 2 % of the diagonal), so 0.5 % of the diagonal leaves
    a wide margin for handheld sets and still catches a thing that stays put within JPEG jitter;
    5 % of the frame is align's own min_spread for a blob of matches."""
    return {"still_px": 0.005 * float(np.hypot(*size)), "blob": 0.05}
