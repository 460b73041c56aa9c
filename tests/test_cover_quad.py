"""generator/cover_quad.py: the cover's outline, its true aspect ratio, the rectifying map."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from generator.cover_quad import find_quad, flat_size, order_corners, parse_corners, quad_aspect, rectify_map
from tests.semireal import camera, make_sequence


@pytest.mark.parametrize("seed", [4, 9, 11])
def test_outline_of_a_cover_on_a_plain_table(seed):
    cap = make_sequence(seed, photos=0, intruders=0, photo_size=(480, 360), table="plain")
    found = find_quad(cap.reference)
    assert found.quad is not None, found.reason
    assert found.reason is None and found.support >= 0.8
    err = np.linalg.norm(found.quad - cap.quad, axis=1).max()
    assert err < 0.01 * np.hypot(480, 360), err
    assert quad_aspect(found.quad, (480, 360)) == pytest.approx(cap.aspect, rel=0.03)


@pytest.mark.parametrize("seed", [10, 12, 30, 33])
def test_outline_of_a_cover_on_a_textured_table(seed):
    """Gravel and brick tables: the colour blob lies a little off the cover's edges and the edge map
    finds frames printed on the cover; snapped to the edges, the outline is found, and it is the
    outline, not a printed frame."""
    cap = make_sequence(seed, photos=0, intruders=0, photo_size=(800, 600))
    assert cap.info["table"] in ("gravel", "brick")
    found = find_quad(cap.reference)
    assert found.quad is not None, found.reason
    err = np.linalg.norm(found.quad - cap.quad, axis=1).max()
    assert err < 0.01 * np.hypot(800, 600), err


def test_no_outline_says_why():
    rng = np.random.default_rng(0)
    flat = np.clip(120 + rng.normal(0, 3, (240, 320, 3)), 0, 255).astype(np.uint8)
    found = find_quad(flat)
    assert found.quad is None and found.reason
    # A cover filling the whole frame has no outline either (the table is not in view).
    whole = make_sequence(1, photos=0, intruders=0, photo_size=(320, 240)).reference[60:180, 120:220]
    assert find_quad(whole).quad is None


@pytest.mark.parametrize("tilt,aspect", [(0.0, 0.7), (20.0, 0.7), (25.0, 1.4), (12.0, 0.62)])
def test_aspect_ratio_through_perspective(tilt, aspect):
    """A rectangle of known aspect seen through a pinhole camera at a tilt: the sides alone
    mislead (foreshortening), the vanishing geometry does not."""
    size = (800, 600)
    w, h = 300 * aspect, 300.0
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]])
    cam = camera(np.random.default_rng(3), size, corners.mean(axis=0), max(w, h), 0.6, tilt, 5.0, 1.0, 0.0)
    quad = cv2.perspectiveTransform(corners[None].astype(np.float64), cam)[0]
    assert quad_aspect(order_corners(quad), size) == pytest.approx(aspect, rel=0.01)


def test_rectify_map_sends_the_quad_to_the_flat_frame():
    quad = np.array([[100.0, 80], [400, 95], [390, 500], [90, 480]])
    size = flat_size(0.75, 300)
    assert size == (300, 400)
    m = rectify_map(quad, size)
    got = cv2.perspectiveTransform(quad[None], m)[0]
    np.testing.assert_allclose(got, [[-0.5, -0.5], [299.5, -0.5], [299.5, 399.5], [-0.5, 399.5]], atol=1e-6)
    assert flat_size(1.5, 200) == (300, 200)


def test_parse_corners_any_order_and_errors():
    q = parse_corners("400,95, 100,80, 90,480, 390,500")
    np.testing.assert_allclose(q, [[100, 80], [400, 95], [390, 500], [90, 480]])
    with pytest.raises(ValueError, match="expected 8 numbers"):
        parse_corners("1,2,3")
    with pytest.raises(ValueError, match="not numbers"):
        parse_corners("a,b,c,d,e,f,g,h")
    with pytest.raises(ValueError, match="convex|sharper"):
        parse_corners("0,0,100,0,50,5,0,100")
