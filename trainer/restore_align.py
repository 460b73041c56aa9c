"""`drs-restore --align`: the Transform that warps each streamed photo onto one frame.

The anchor photo's frame, or the flat cover when its outline is found; photos are aligned by
consensus of the whole set (generator/align_set.py) or, with --align-mode anchor, each against the
anchor (generator/align.py, drs-ingest's alignment). trainer/restore.py streams the photos through
it (restore_files(..., transform=aligner)).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.restore import ALIGN_MODES, RestoreError, _to_hwc, load_image


class Aligner:
    """--align: a Transform that warps photo i onto the anchor photo's frame, or onto the flat cover.

    mode "consensus" (default): the photos are aligned to the median of those that agree
    (generator/align_set.py; each photo's work copy is held meanwhile); when the anchor itself does
    not align to the others, the best-aligned photo becomes the anchor (`how` says so). mode
    "anchor": one streamed pre-pass (one photo in memory at a time, plus the anchor) aligns each
    photo to the anchor. Either way photos whose
    alignment cannot be trusted are dropped (listed in `rejected` as (path, reason)); `paths`
    and `homographies` (float64 (3, 3), photo px -> anchor px, at `size`) are those kept, in
    order, so index i of the restore stream is paths[i]. Anchor pixels fill what a photo does
    not cover, so the set mean there is not darkened. Deterministic: "multi" calls it per pass.

    rectify: "auto" finds the cover's outline (generator/cover_quad.py) in the anchor or, when glare
    or a hand spoils it there, in the per-pixel median of the aligned photos (at most 512 px, where
    each photo's occluders and glare are outvoted), and outputs the flat, front-on cover at its own aspect ratio (`to_out`, anchor px
    -> output px; `out_size`); "off" keeps the anchor's frame; `corners` (4, 2) anchor px give the
    outline. `outline` says what happened (for the console); `quad` (4, 2) anchor px: the outline
    rectified to, None when not rectified.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], anchor: int = 0, cfg=None,
                 progress: bool = True, rectify: str = "auto", corners: np.ndarray | None = None,
                 mode: str = "consensus"):
        # cv2: only needed with --align
        from generator.align import AlignConfig, align, prepare, set_region

        if not 0 <= anchor < len(paths):
            raise RestoreError(f"--align-to {anchor}: there are {len(paths)} photos (indices 0..{len(paths) - 1})")
        if mode not in ALIGN_MODES:
            raise RestoreError(f"--align-mode {mode!r}: one of {', '.join(ALIGN_MODES)}")
        cfg = cfg or AlignConfig()
        self.how = "each photo aligned to the anchor photo (--align-mode anchor)"
        if mode == "consensus":
            return self._consensus(paths, size, anchor, cfg, progress, rectify, corners)
        self.anchor_path = Path(paths[anchor])
        self.anchor = _to_hwc(load_image(self.anchor_path, size))
        anchor_frame = prepare(self.anchor, cfg)
        self.to_out, self.out_size, self.outline, self.quad = np.eye(3), size, "", None
        quad, how = self._anchor_outline(rectify, corners)
        # Without an outline, the whole anchor photo counts (the photos were chosen by the user; a
        # central region, as drs-ingest uses against intruders, would extrapolate to the borders).
        set_region(anchor_frame, quad)
        look = quad is None and rectify == "auto" and corners is None
        median = _MedianView(size) if look else None  # the aligned photos, small, for the outline
        self.paths: list[Path] = []
        self.homographies: list[np.ndarray] = []
        self.rejected: list[tuple[Path, str]] = []
        for i, p in enumerate(tqdm(paths, desc="aligning", unit="img", disable=not progress)):
            if i == anchor:
                h, reason = np.eye(3), None
            else:
                img = _to_hwc(load_image(p, size))
                res = align(anchor_frame, prepare(img, cfg), cfg)
                h, reason = res.homography, res.reason
                if reason is None and median is not None:
                    median.add(img, h)
            if i == anchor and median is not None:
                median.add(self.anchor, h)
            if reason is None:
                self.paths.append(Path(p))
                self.homographies.append(h)
            else:
                self.rejected.append((Path(p), reason))
        if median is not None and median.count >= 3:
            found = median.find_quad()
            if found is not None:
                quad, how = found, f"the outline found in the median of the aligned photos (not in the anchor: {how})"
        self._finish(quad, size, how, rectify, corners)

    def _anchor_outline(self, rectify: str, corners: np.ndarray | None) -> tuple[np.ndarray | None, str]:
        """(quad in anchor px or None, how it was found) from --corners, --rectify off, or the anchor."""
        from generator.align import find_quad

        if corners is not None:
            return np.asarray(corners, np.float64), "the given --corners"
        if rectify == "off":
            return None, "not rectified (--rectify off): output in the anchor photo's frame"
        found = find_quad(self.anchor)
        return found.quad, found.reason if found.quad is None else f"the outline found in {self.anchor_path.name}"

    def _finish(self, quad: np.ndarray | None, size: tuple[int, int], how: str, rectify: str,
                corners: np.ndarray | None) -> None:
        """The output frame (rectified to quad, or the anchor's) and the anchor fill, once the
        homographies are known."""
        import cv2

        if quad is not None:
            self._rectify(quad, size, how)
        elif rectify == "off" and corners is None:
            self.outline = how
        else:
            self.outline = (f"no cover outline found in {self.anchor_path.name} or the other photos ({how}); output "
                            "in the anchor photo's frame (give --corners x1,y1,...,x4,y4 to rectify)")
        self.size = size
        # What fills pixels a photo does not cover: the anchor, seen in the output frame (uint8: 1/4
        # of the float's memory).
        fill = cv2.warpPerspective(self.anchor, self.to_out, self.out_size, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
        self.anchor = (fill * 255 + 0.5).astype(np.uint8)

    def _consensus(self, paths: Sequence[Path], size: tuple[int, int], anchor: int, cfg, progress: bool,
                   rectify: str, corners: np.ndarray | None) -> None:
        """--align-mode consensus (generator/align_set.py): every photo aligned to the median of the
        photos that agree, not to one spoiled photo. Holds each photo's work copy and, while
        refining, float32 warped copies of all of them: about 85 MB per 1024x768 photo at the
        peak (benchmarks/align_memory.py); the restore itself still streams."""
        from generator.align import project
        from generator.align_set import SetPhoto, align_set

        photos = [SetPhoto.load(_to_hwc(load_image(p, size)), cfg)
                  for p in tqdm(paths, desc="preparing", unit="img", disable=not progress)]
        res = align_set(photos, anchor, cfg)
        self.how = res.how
        if res.anchor != anchor:
            if corners is not None:
                raise RestoreError(f"--corners are in {Path(paths[anchor]).name}'s px, but that photo does not align to "
                                   f"the others ({res.rejected.get(anchor, '')}); give them in "
                                   f"{Path(paths[res.anchor]).name}'s px with --align-to {res.anchor}")
            self.how += (f"; {Path(paths[anchor]).name} does not align to the others, so the output is in "
                         f"{Path(paths[res.anchor]).name}'s frame")
        self.anchor_path = Path(paths[res.anchor])
        self.anchor = _to_hwc(load_image(self.anchor_path, size))
        self.to_out, self.out_size, self.outline, self.quad = np.eye(3), size, "", None
        self.paths = [Path(p) for i, p in enumerate(paths) if i in res.homographies]
        self.homographies = [res.homographies[i] for i in range(len(paths)) if i in res.homographies]
        self.rejected = [(Path(paths[i]), why) for i, why in sorted(res.rejected.items())]
        quad, how = self._anchor_outline(rectify, corners)
        looked_in_anchor = corners is None and rectify != "off"
        if looked_in_anchor and quad is None and res.outline is not None and len(self.paths) >= 3:
            # Found in the median, in the anchor's work frame: each photo's glare and hand outvoted,
            # the photos' exposures matched (align_set.match_gains).
            quad = project(np.linalg.inv(photos[res.anchor].frame.to_work), res.outline)
            how = f"the outline found in the median of the aligned photos (not in the anchor: {how})"
        self._finish(quad, size, how, rectify, corners)

    def _rectify(self, quad: np.ndarray, size: tuple[int, int], how: str) -> None:
        """Set to_out / out_size / outline for the cover outlined by quad (anchor px)."""
        from generator.align import flat_size, quad_aspect, rectify_map

        aspect = quad_aspect(quad, size)
        # The flat cover at about the resolution the anchor shows it with: nothing is thrown away.
        sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
        short = int(round(min(sides[0] + sides[2], sides[1] + sides[3]) / 2))
        self.out_size = flat_size(aspect, max(short, 8))
        self.to_out = rectify_map(quad, self.out_size)
        self.quad = np.asarray(quad, np.float64)
        self.outline = f"rectified to {how}: {self.out_size[0]}x{self.out_size[1]} px, aspect {aspect:.3f}"

    def __call__(self, index: int, img: torch.Tensor) -> torch.Tensor:
        import cv2

        h = self.to_out @ self.homographies[index]
        src = _to_hwc(img)
        if (src.shape[1], src.shape[0]) != self.size:
            # --resize with the first photo dropped: the stream resized to another photo's size.
            src = cv2.resize(src, self.size, interpolation=cv2.INTER_CUBIC)
        warped = cv2.warpPerspective(src, h, self.out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0)
        cover = cv2.warpPerspective(np.ones(src.shape[:2], np.float32), h, self.out_size, flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # warped already holds cover * photo; the rest of each pixel's weight goes to the anchor.
        warped += (1 - cover)[..., None] * (self.anchor.astype(np.float32) / 255.0)
        return torch.from_numpy(warped).permute(2, 0, 1).contiguous()


class _MedianView:
    """The aligned photos at most 512 px on the long side, in the anchor's frame, for a per-pixel
    median: one occluder or glare per photo is outvoted, the cover's outline stays (uint8, K small
    images: a few MB for dozens of photos)."""

    SIDE = 512

    def __init__(self, size: tuple[int, int]):
        from generator.align import scale_matrix

        self.scale = min(1.0, self.SIDE / max(size))
        self.small = (max(1, round(size[0] * self.scale)), max(1, round(size[1] * self.scale)))
        self.to_small = scale_matrix(self.small[0] / size[0], self.small[1] / size[1])
        self.frames: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return len(self.frames)

    def add(self, img: np.ndarray, h: np.ndarray) -> None:
        """img float (H, W, 3) at the stream size, h: its homography onto the anchor."""
        import cv2

        small = cv2.resize(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), self.small, interpolation=cv2.INTER_AREA)
        m = self.to_small @ h @ np.linalg.inv(self.to_small)
        self.frames.append(cv2.warpPerspective(small, m, self.small, flags=cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_REPLICATE))

    def find_quad(self) -> np.ndarray | None:
        """The outline in the median, anchor px; None if not found."""
        from generator.align import find_quad, project

        found = find_quad(np.median(np.stack(self.frames), axis=0).astype(np.uint8))
        return None if found.quad is None else project(np.linalg.inv(self.to_small), found.quad)
