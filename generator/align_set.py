"""Align a set of handheld photos of one flat object to each other, without a clean reference.

    photos = [SetPhoto.load(img, cfg) for img in images]       # img: (H, W, 3), uint8 or float in [0, 1]
    res = align_set(photos, anchor=0)                           # SetResult
    res.homographies[i]     # float64 (3, 3), photo i px -> photo res.anchor px (kept photos only)
    res.rejected[i]         # why photo i was left out

Why not align every photo to the anchor (generator/align.py's `align`, as `drs-ingest` does
against a clean reference): every photo of a set is spoiled, the anchor too. Measured on the
semi-real captures (tests/semireal.py): the texture two photos share is often their occluders',
not the cover's, so photo-to-photo matching finds few right matches on a weakly textured cover,
and strong, consistent models on two alike occluders (up to 450 inliers, agreement 0.8, 100 px
off). So the photos are aligned to what they agree on, not to any one of them:

1. pair models (generator/pair_models.py): up to 3 homographies per pair of photos, those a flat,
   centred cover cannot give dropped (off centre, implausible, screen-fixed);
2. seeds: triplets whose models agree around the loop, then the strongest single pair models,
   then the anchor alone; each seed's median, in its first photo's frame, has each photo's own
   clutter outvoted;
3. consensus: every photo is aligned to each seed's median with align's trust checks (features,
   photometric agreement where the cover has texture) and the centre prior; the seed whose median
   explains the most photos wins, and only if it explains more than half of them (the cover is in
   every photo, alike occluders in a few: a world of a few photos is not the cover), two thirds
   when no loop confirms the seed (explains_enough);
4. refinement: every photo (the rejected ones too) aligned again, with ECC, to the median of the
   other accepted photos in the anchor's frame, `ROUNDS` times (leave one out: a median holding a
   photo's own pixels pulls its ECC to where it was put before); each photo's map onto the anchor
   goes through the median, by the anchor's own alignment to it.

Intruders (photos of another cover) fail the same checks against the median as against a clean
reference. When no seed explains more than half of the photos (a cover so weakly textured that no
pair of photos shares enough right matches), only the anchor is kept and every other photo says
why: the set fails closed rather than accepting a wrong alignment; so it does when, after the
refinement, no more than half of the photos still align. NumPy and OpenCV only; used by
`drs-restore --align` (trainer/restore_align.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from generator.align import (
    AlignConfig,
    Alignment,
    Frame,
    align,
    central_region,
    find_quad,
    prepare,
    project,
    set_region,
)
from generator.pair_models import (
    Seed,
    SetPhoto,
    all_pair_models,
    centre_problem,
    default_guard,
    distinct,
    loop_seeds,
    pair_seeds,
)

MAX_SEEDS = 4  # loop seeds whose medians are tried (then the 2 strongest pair models, then the anchor)
ROUNDS = 2  # realignments against the median of the other accepted photos
UNCONFIRMED_SHARE = 2 / 3  # of the photos a seed without a closed loop must explain (choose_seed)
RELATIVE_AGREEMENT = 0.6  # of the set's median agreement, below which a photo is an outlier (_drop_outliers)
DEFAULT_CONFIG = AlignConfig()


@dataclass
class SetResult:
    """anchor: the photo whose frame the homographies map into (the one asked for unless it could
    not be aligned to the others); homographies / alignments: of the kept photos (photo full px ->
    anchor full px, through the median: the anchor's own is the identity; alignments are onto the
    median); rejected: photo index -> reason; how: one line on what was done, for the console."""

    anchor: int
    homographies: dict[int, np.ndarray] = field(default_factory=dict)
    alignments: dict[int, Alignment] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    how: str = ""
    # float64 (4, 2), the anchor's work px: the cover's outline found in the median of the kept
    # photos (their gains matched, match_gains); None if not found, or not found in that frame
    outline: np.ndarray | None = None


# ---------------------------------------------------------------------------------- medians
def warped_stack(photos: list[SetPhoto], maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """float32 (len(maps), H, W, 3): the photos' small copies warped by maps[i] (photo i work px ->
    the frame's px) into a frame of `size` (W, H), NaN where a photo does not reach."""
    stack = np.full((len(maps), size[1], size[0], 3), np.nan, np.float32)
    for n, (i, h) in enumerate(maps.items()):
        stack[n] = cv2.warpPerspective(photos[i].small.astype(np.float32), h, size, flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan, np.nan, np.nan))
    return stack


def match_gains(stack: np.ndarray, reference: int) -> np.ndarray:
    """A copy of the warped_stack with each photo's colour channels scaled so that, where it and
    photo `reference` both show the frame, its median equals the reference's.

    Why: the photos of a set differ in exposure and white balance, and where the number of photos
    that reach a pixel changes (their borders), the median jumps between them: straight edges on
    the table, as strong as the cover's own, and find_quad took those for the outline. Measured by
    benchmarks/restore_alignment.py (12 sets), outline looked for in the plain median: 4 sets
    rectified, 1 of them wrongly (7.7 % of the diagonal); in this one: 5, all right."""
    out = stack.copy()
    ref = stack[reference]
    for layer in out:
        both = np.isfinite(layer[..., 0]) & np.isfinite(ref[..., 0])
        if not both.any():
            continue
        for c in range(layer.shape[-1]):
            have = float(np.median(layer[..., c][both]))
            if have > 1e-3:
                layer[..., c] *= float(np.median(ref[..., c][both])) / have
    return out


def stack_median(stack: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the per-pixel median of a warped_stack over the photos that show each pixel
    (one photo's occluder or glare is outvoted where three or more do); 0 where none does."""
    with warnings.catch_warnings():  # a pixel no photo shows is a NaN median, set to 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(stack, axis=0)
    return np.clip(np.nan_to_num(med, nan=0.0) + 0.5, 0, 255).astype(np.uint8)


def median_view(photos: list[SetPhoto], maps: dict[int, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3): the median of the photos warped by maps (see warped_stack) into a frame of `size`."""
    return stack_median(warped_stack(photos, maps, size))


def median_frame(median: np.ndarray, cfg: AlignConfig, like: Frame | None = None,
                 outline_in: np.ndarray | None = None) -> tuple[Frame, str]:
    """The median prepared as an anchor, its checks restricted to the cover: its outline when found
    in it, else the central 30 % (where the capture protocol puts it; a photo of another cover on
    the same patterned table must not pass on the table); or the region of frame `like` (the same
    frame size). outline_in: the image (of the same frame) to look for the outline in, if not the
    median itself. Returns (frame, what region)."""
    frame = prepare(median, cfg)
    if like is not None:
        quad = None if like.region is None else project(np.linalg.inv(like.to_work), like.region.astype(np.float64))
        set_region(frame, quad, like.ecc_in_region)
        return frame, "like"
    found = find_quad(median if outline_in is None else outline_in)
    if found.quad is not None:
        set_region(frame, found.quad)
        return frame, "outline"
    set_region(frame, central_region(frame.size), ecc_in_region=False)
    return frame, f"centre ({found.reason})"


# ---------------------------------------------------------------------------------- consensus
def align_photo(photo: SetPhoto, target: Frame, cfg: AlignConfig) -> Alignment:
    """A photo aligned to `target` (a median, in one photo's work frame) with align's trust checks,
    and the centre prior (centre_problem): a median built on alike occluders explains them, off
    the cover's centre."""
    r = align(target, photo.frame, cfg)
    if r.ok:
        r.reason = centre_problem(r.homography @ np.linalg.inv(photo.frame.to_work), photo.frame.work_size,
                                  target.size)
        if r.reason is not None:
            r.homography = None
    return r


def align_all(photos: list[SetPhoto], target: Frame, cfg: AlignConfig) -> dict[int, Alignment]:
    """Every photo aligned to `target` by align_photo."""
    return {i: align_photo(p, target, cfg) for i, p in enumerate(photos)}


def _accepted(results: dict[int, Alignment]) -> list[int]:
    return [i for i, r in results.items() if r.ok]


def _rank(results: dict[int, Alignment]) -> tuple[int, float]:
    """How well a median explains the set: photos accepted, then their summed agreement."""
    ok = [r for r in results.values() if r.ok]
    return len(ok), float(sum(r.score for r in ok))


def choose_seed(photos: list[SetPhoto], seeds: list[Seed], cfg: AlignConfig) -> tuple[Seed, dict[int, Alignment]] | None:
    """The seed whose median the most photos align to (features and checks only, no ECC: this only
    chooses), with those alignments; None when none explains more than half of the photos."""
    quick = replace(cfg, ecc=False)
    best = None
    for seed in seeds:
        first = photos[seed.members[0]]
        maps = dict(zip(seed.members, seed.to_first, strict=True))
        target, _ = median_frame(median_view(photos, maps, first.frame.work_size), quick)
        results = align_all(photos, target, quick)
        if best is None or _rank(results) > _rank(best[1]):
            best = (seed, results)
        if len(_accepted(results)) == len(photos):
            break  # every photo explained: no other seed can do better
    # A world that explains only half of the photos or fewer is not the cover (which is in all of
    # them) but something a few photos share: alike occluders, or an intruder with the same kind of
    # occluder (measured: sets whose cover gave no right pair model still had 3 of 6 photos agree
    # on one occluder, an intruder among them).
    return best if best is not None and explains_enough(best[0], best[1], len(photos)) else None


def explains_enough(seed: Seed, results: dict[int, Alignment], n: int) -> bool:
    """Whether a seed's median, to which `results` aligned the n photos, may be taken for the cover:
    more than half of the photos (the cover is in all of them, alike occluders in a few), and at
    least UNCONFIRMED_SHARE of them when no loop confirms the seed (one pair model, or the anchor
    alone). Measured: a pair model along a wood table's grain had 5 of 9 photos agree and kept
    photos 4-260 px off (with uint8 warped copies, which were then not kept), where right sets
    seeded by a pair model or the anchor had 6-8 of 9 (benchmarks/restore_alignment.py, 22 sets)."""
    if not _majority(results, n):
        return False
    return len(seed.members) >= 3 or len(_accepted(results)) >= UNCONFIRMED_SHARE * n


def _drop_outliers(results: dict[int, Alignment]) -> None:
    """Reject (in place) the accepted photos that agree with the cover far less than the others do.

    Why: another cover photographed on the same patterned table aligns by the table and agrees a
    little where the cover is. Measured (semi-real sets, agreement over the cover's region against
    the median of the others): such an intruder 0.36 where the set's median was 0.77 (ratio 0.47),
    while the weakest genuine photo of a set stayed at 0.78-0.82 of its set's median."""
    ok = [i for i in _accepted(results) if results[i].agreement is not None]
    if len(ok) < 3:
        return
    typical = float(np.median([results[i].agreement for i in ok]))
    for i in ok:
        r = results[i]
        if r.agreement < RELATIVE_AGREEMENT * typical:
            r.reason = (f"agrees with the cover far less than the other photos ({r.agreement:.2f} against their "
                        f"median {typical:.2f}; another cover on the same table?)")
            r.homography = None


def _majority(results: dict[int, Alignment], n: int) -> bool:
    """Whether more than half of the n photos (and at least 2) are accepted."""
    return len(_accepted(results)) > max(1, n // 2)


def _to_work_map(res: Alignment, photo: SetPhoto) -> np.ndarray:
    """photo work px -> median px from an alignment (photo full px -> median px)."""
    return res.homography @ np.linalg.inv(photo.frame.to_work)


def refine(photos: list[SetPhoto], frame_photo: int, results: dict[int, Alignment], first: np.ndarray,
           cfg: AlignConfig, rounds: int = ROUNDS) -> tuple[dict[int, Alignment], np.ndarray, str]:
    """Realign every photo against the median of the other accepted ones, in photo `frame_photo`'s
    work frame, `rounds` times. results: alignments onto a previous median whose px map to the frame
    photo's work px by `first` (3x3). Returns (final alignments, the cover's outline found in the
    last median of all accepted photos, their gains matched (match_gains; work px, None if not
    found), what region the checks used).

    Leave one out: a median that holds a photo's own pixels pulls its ECC towards where it was put
    last time (its own noise and texture match themselves exactly). Measured: with the photo in
    its median, a set stayed ~2 px off its true frame round after round."""
    size = photos[frame_photo].frame.work_size
    region = ""
    for _ in range(rounds):
        maps = {i: first @ _to_work_map(r, photos[i]) for i, r in results.items() if r.ok}
        stack = warped_stack(photos, maps, size)
        # The outline is looked for with the photos' gains matched; the alignment targets stay the
        # plain medians the trust checks were calibrated on (with matched gains everywhere, measured
        # by benchmarks/restore_alignment.py: one more genuine photo left out, no better alignment).
        median = stack_median(match_gains(stack, list(maps).index(frame_photo) if frame_photo in maps else 0))
        whole, region = median_frame(stack_median(stack), cfg, outline_in=median)
        results, first = {}, np.eye(3)
        for i in range(len(photos)):
            if i in maps and len(maps) >= 3:
                others = stack[[n for n, j in enumerate(maps) if j != i]]
                target, _ = median_frame(stack_median(others), cfg, like=whole)
            else:
                target = whole
            results[i] = align_photo(photos[i], target, cfg)
    outline = project(np.linalg.inv(whole.to_work), whole.region.astype(np.float64)) if region == "outline" else None
    return results, outline, region


def align_set(photos: list[SetPhoto], anchor: int = 0, cfg: AlignConfig = DEFAULT_CONFIG,
              guard: dict | None = None) -> SetResult:
    """Align every photo of a set onto photo `anchor` by consensus (see the module's docstring).
    When the anchor itself does not align to the others, the output is in the frame of the photo
    that aligns best (SetResult.anchor says which).

    guard: screen_fixed_problem's thresholds for the pair models; default_guard of the work size."""
    n = len(photos)
    if not 0 <= anchor < n:
        raise ValueError(f"anchor {anchor}: there are {n} photos")
    if n == 1:
        return SetResult(anchor, homographies={anchor: np.eye(3)}, how="one photo: nothing to align")
    size = photos[anchor].frame.work_size
    models = all_pair_models(photos, cfg, default_guard(size) if guard is None else guard)
    seeds = distinct(loop_seeds(models, size, n), MAX_SEEDS) + distinct(pair_seeds(models), 2) + \
        [Seed([anchor], [np.eye(3)], 0)]
    chosen = choose_seed(photos, seeds, cfg)
    if chosen is None:
        return _anchor_only(anchor, n, "no alignment explains more than half of the photos (two thirds without a "
                                       "loop of photos to confirm it; too few consistent "
                                       "feature matches on the cover)")
    seed, results = chosen
    how = _seed_words(seed, len(_accepted(results)), n)
    # Refine in the anchor's frame when the anchor is among the photos the seed's median explains.
    frame_photo = _best(results, anchor)
    to_frame = photos[frame_photo].frame.to_work @ np.linalg.inv(results[frame_photo].homography)
    results, outline, region = refine(photos, frame_photo, results, to_frame, cfg)
    _drop_outliers(results)
    if not _majority(results, n):  # the refinement's full checks can leave too few to be the cover
        return _anchor_only(anchor, n, f"after refinement only {len(_accepted(results))} of {n} photos align "
                                       "to the median of the others (more than half needed)")
    final = _best(results, anchor)
    res = SetResult(final, outline=outline if final == frame_photo else None,
                    how=f"{how}, refined against the median of the others (checks over its {region})")
    to_anchor = np.linalg.inv(results[final].homography)  # median px -> output anchor full px
    for i, r in results.items():
        if r.ok:
            h = to_anchor @ r.homography
            res.homographies[i], res.alignments[i] = h / h[2, 2], r
        else:
            res.rejected[i] = r.reason
    return res


def _best(results: dict[int, Alignment], anchor: int) -> int:
    """The anchor if it is accepted, else the accepted photo that agrees best."""
    return anchor if results[anchor].ok else max(_accepted(results), key=lambda i: results[i].score)


def _seed_words(seed: Seed, agreeing: int, n: int) -> str:
    """What the chosen seed was, for the console."""
    members = ", ".join(map(str, seed.members))
    what = {3: f"seeded by photos {members}, which agree around a loop", 2: f"seeded by photos {members}"}
    return what.get(len(seed.members), "seeded by the anchor photo") + f" ({agreeing} of {n} photos agree with it)"


def _anchor_only(anchor: int, n: int, why: str) -> SetResult:
    """The set failing closed: only the anchor is kept, every other photo says why."""
    res = SetResult(anchor, homographies={anchor: np.eye(3)}, how=f"no consensus: {why}; only the anchor photo is kept")
    res.rejected = {i: f"not aligned: {why}" for i in range(n) if i != anchor}
    return res
