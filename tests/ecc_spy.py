"""A spy on cv2.findTransformECC for the alignment tests: it records each call and changes nothing.

The ECC steps of generator/align_ecc.py leave few traces in their result, so tests check which step ran
and with which mask by what reached OpenCV.
"""

from __future__ import annotations

import cv2


class EccSpy:
    """Records each cv2.findTransformECC call: (template, input image, mask as bool, returned cc, warp)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = cv2.findTransformECC

        def spy(template, image, warp, motion, criteria, mask, gauss):
            cc, out = real(template, image, warp, motion, criteria, mask, gauss)
            self.calls.append((template, image, mask.astype(bool), cc, out.copy()))
            return cc, out

        monkeypatch.setattr(cv2, "findTransformECC", spy)
