"""Semi-real capture sequences: a cover lying on a table, photographed by hand, with ground truth.

    cap = make_sequence(seed=3, photos=8, photo_size=(800, 600))
    cap.write(folder)          # reference.jpg, IMG_00.jpg ..., INTRUDER_00.jpg (real JPEG files)
    cap.truth[i]               # photo i px -> reference px, float64 (3, 3)
    cap.quad                   # the cover's corners in the reference, float64 (4, 2): TL, TR, BR, BL

What varies, each drawn from `default_rng([seed, ...])` so any sequence regenerates alone:

- the cover: a scikit-image photograph or a procedural book cover (generator/covers.py), cut to a
  book's aspect ratio (portrait 0.62-0.85, sometimes landscape), sometimes with a title band;
- the table: plain with slight noise (the case that broke a global ECC score), wood grain, or a
  stone/brick/grass texture;
- the camera: a pinhole looking at the table, tilted up to 25 degrees about a random axis, rolled
  up to 15 degrees, at 0.8-1.25 times the reference's scale, off centre by up to 6 % of the frame;
  the reference is near front-on and clean;
- the light and the things in the way (photos only): exposure, white balance, vignetting, a shading
  gradient, a soft wavy glare, a soft cast shadow, a textured occluder with its own shadow,
  sometimes motion blur; then signal-dependent sensor noise and JPEG at quality 80-95;
- intruders: photos of another cover on the same table, which ingest must reject.

The world is the table plane in "canvas" pixels; each camera is a homography world -> photo built
from a pinhole model (K [r1 r2 t]), so the truth is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data as skdata

PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
            "camera", "clock", "coins")
TABLES = ("plain", "plain", "wood", "gravel", "brick", "grass")  # plain twice: the common case


@dataclass
class SemiRealCapture:
    """One sequence. Images are uint8 (H, W, 3) RGB, decoded from the JPEG bytes that `write` saves."""

    reference: np.ndarray
    photos: list[np.ndarray]
    truth: list[np.ndarray]  # photo px -> reference px
    quad: np.ndarray  # (4, 2) cover corners in the reference, TL TR BR BL
    aspect: float  # the cover's true width / height
    intruders: list[np.ndarray] = field(default_factory=list)
    jpegs: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes
    info: dict = field(default_factory=dict)  # what was drawn (table, picture, per-photo spoilers)

    def write(self, folder: Path) -> list[str]:
        """Write every image as the JPEG it was made as; returns the file names."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.jpegs.items():
            (folder / name).write_bytes(data)
        return list(self.jpegs)

    @property
    def photo_names(self) -> list[str]:
        return [f"IMG_{i:02d}.jpg" for i in range(len(self.photos))]


# ---------------------------------------------------------------------------------- the world
def cover_picture(rng: np.random.Generator, height: int, aspect: float, avoid: str | None = None,
                  picture: str | None = None) -> tuple[np.ndarray, str]:
    """(uint8 (height, round(height * aspect), 3), its source's name): a book-cover-like picture,
    never from the picture `avoid` (an intruder must be another cover, not another print of it).
    picture="procedural" forces a procedural cover (often weakly textured: a gradient, shapes, a
    little text); None draws one (30 % procedural). The same draws are made either way."""
    w = max(8, round(height * aspect))
    draw = rng.random()
    if (draw < 0.3) if picture is None else picture == "procedural":
        from generator.covers import procedural_cover

        name = "procedural"
        img = np.asarray(procedural_cover(rng, 512).convert("RGB"))
    else:
        i = int(rng.integers(len(PICTURES)))
        name = PICTURES[i] if PICTURES[i] != avoid else PICTURES[(i + 1) % len(PICTURES)]
        img = getattr(skdata, name)()
        if img.ndim == 2:  # a grey print in a coloured ink
            img = (img[..., None] * rng.uniform(0.4, 1.0, 3)).astype(np.uint8)
    ih, iw = img.shape[:2]
    # The largest crop of the picture at the cover's aspect, from a random place.
    ch, cw = (ih, round(ih * aspect)) if ih * aspect <= iw else (round(iw / aspect), iw)
    y0, x0 = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
    pic = cv2.resize(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw, :3]), (w, height), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.6:  # a title band and a thin frame, as many covers have
        im = Image.fromarray(pic)
        draw = ImageDraw.Draw(im)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        top = rng.random() < 0.5
        band = (0, 0, w, int(0.18 * height)) if top else (0, int(0.8 * height), w, height)
        draw.rectangle(band, fill=colour)
        ink = tuple(255 - c for c in colour)
        font = ImageFont.load_default(size=max(8, int(0.07 * height)))
        draw.text((0.08 * w, band[1] + 0.04 * height), "THE SILENT RIVER", fill=ink, font=font)
        draw.rectangle((0, 0, w - 1, height - 1), outline=ink, width=max(1, height // 150))
        pic = np.asarray(im)
    return np.ascontiguousarray(pic), name


def table_texture(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1]: the table surface, size (W, H)."""
    w, h = size
    base = rng.uniform(0.25, 0.8, 3).astype(np.float32)
    if kind == "plain":
        low = cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        fine = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.0)
        grey = 1 + 0.03 * low + rng.uniform(0.01, 0.03) * fine
    elif kind == "wood":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        period = rng.uniform(0.01, 0.03) * max(w, h)
        rings = np.sin(2 * np.pi * (yy + 0.08 * max(w, h) * warp) / period)
        streaks = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=8, sigmaY=0.7)
        grey = 1 + 0.12 * rings + 0.15 * streaks
        base = np.array([0.55, 0.36, 0.2], np.float32) * rng.uniform(0.7, 1.2)
    else:
        tex = getattr(skdata, kind)().astype(np.float32) / 255
        reps = (int(np.ceil(h / tex.shape[0])), int(np.ceil(w / tex.shape[1])))
        tile = np.tile(tex, reps)  # the texture repeats: a long table of it
        scale = rng.uniform(1.0, 2.0)
        grey = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        grey = np.resize(grey, (h, w)) if grey.shape[0] < h or grey.shape[1] < w else grey[:h, :w]
        grey = 0.6 + 0.8 * (grey - grey.mean())
    return np.clip(grey[..., None] * base, 0, 1).astype(np.float32)


def world(rng: np.random.Generator, cover_px: int, table: str, aspect: float,
          avoid: str | None = None, picture: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The table with the cover on it: (canvas float32 (H, W, 3), cover corners (4, 2) canvas px,
    the cover picture's name)."""
    ch = cover_px if aspect <= 1 else round(cover_px / aspect)
    cw = round(ch * aspect)
    side = int(3.0 * max(ch, cw))
    canvas = table_texture(rng, table, (side, side))
    x0, y0 = (side - cw) // 2, (side - ch) // 2
    # A faint contact shadow around the cover (it has a thickness), then the cover itself.
    rim = np.zeros((side, side), np.float32)
    rim[y0 - 2:y0 + ch + 4, x0 - 2:x0 + cw + 4] = 1
    canvas *= 1 - 0.25 * cv2.GaussianBlur(rim, (0, 0), max(1.0, ch / 300))[..., None]
    pic, name = cover_picture(rng, ch, aspect, avoid, picture)
    canvas[y0:y0 + ch, x0:x0 + cw] = pic.astype(np.float32) / 255
    corners = np.array([[x0 - 0.5, y0 - 0.5], [x0 + cw - 0.5, y0 - 0.5], [x0 + cw - 0.5, y0 + ch - 0.5],
                        [x0 - 0.5, y0 + ch - 0.5]], np.float64)
    return canvas, corners, name


def camera(rng: np.random.Generator | None, photo_size: tuple[int, int], centre: np.ndarray, cover_px: float,
           fill: float, tilt_deg: float, roll_deg: float, scale: float, shift: float) -> np.ndarray:
    """Homography world (canvas px) -> photo px of a pinhole camera looking at `centre`.

    fill: the cover's long side over the photo's short side at scale 1, front-on; tilt about a
    random in-plane axis, roll about the optical axis, shift: off-centre fraction of the frame.
    """
    w, h = photo_size
    f = 1.1 * max(w, h)  # a phone's main camera: ~65 degrees across the long side
    k = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    axis_angle = rng.uniform(0, 2 * np.pi) if rng is not None else 0.0
    axis = np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0])
    tilt, _ = cv2.Rodrigues(axis * np.deg2rad(tilt_deg))
    roll, _ = cv2.Rodrigues(np.array([0, 0, np.deg2rad(roll_deg)]))
    r = roll @ tilt
    depth = f * cover_px / (fill * scale * min(w, h))  # canvas px: the cover spans fill * scale of the frame
    offset = shift * np.array([w, h]) * (rng.uniform(-1, 1, 2) if rng is not None else 0) * depth / f
    t = np.array([offset[0], offset[1], depth])
    to_centre = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1.0]])
    hom = k @ np.c_[r[:, 0], r[:, 1], t] @ to_centre
    return hom / hom[2, 2]


def shoot(canvas: np.ndarray, world_to_photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The camera's view of the canvas, float32 (H, W, 3) in [0, 1]."""
    return cv2.warpPerspective(canvas, world_to_photo, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# ---------------------------------------------------------------------------------- light, clutter, sensor
def spoil(rng: np.random.Generator, img: np.ndarray, clean: bool = False) -> tuple[np.ndarray, dict]:
    """Light, things in the way and the sensor, on float32 (H, W, 3) in place -> (float32, what was done)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    cx, cy = 0.5 * w / max(h, w), 0.5 * h / max(h, w)
    info: dict = {}
    if clean:
        gain, cast, vignette = rng.uniform(0.95, 1.05), rng.uniform(0.97, 1.03, 3), rng.uniform(0.0, 0.05)
    else:
        gain, cast, vignette = rng.uniform(0.55, 1.3), rng.uniform(0.8, 1.2, 3), rng.uniform(0.1, 0.4)
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (cx * cx + cy * cy)
    light = gain * (1 - vignette * r2)
    if not clean:
        a = rng.uniform(0, 2 * np.pi)
        light = light * (1 + rng.uniform(0.1, 0.4) * (np.cos(a) * (xx - cx) + np.sin(a) * (yy - cy)))
        light = light * (1 - rng.uniform(0.35, 0.65) * _soft_blob(rng, h, w, xx, yy, soft=rng.uniform(0.01, 0.04)))
        info["shadow"] = True
    img *= (light[..., None] * cast).astype(np.float32)
    if not clean:
        # Soft glare: a broad sheen, rippled as a laminated cover ripples it.
        gx, gy = rng.uniform(0.25, 0.75) * 2 * cx, rng.uniform(0.25, 0.75) * 2 * cy
        s = rng.uniform(0.05, 0.14)
        sheen = np.exp(-((xx - gx) ** 2 + ((yy - gy) * rng.uniform(0.5, 1.5)) ** 2) / (2 * s * s))
        sheen *= 1 + 0.3 * np.sin(2 * np.pi * (xx * rng.uniform(8, 20) + 0.3 * np.sin(yy * 15)))
        img += (rng.uniform(0.3, 0.9) * sheen)[..., None].astype(np.float32)
        _occluder(rng, img, xx, yy)
        info["occluder"] = True
        if rng.random() < 0.15:
            length = 2 * int(round(rng.uniform(0.0015, 0.004) * max(h, w))) + 1  # odd: the kernel is centred
            kernel = np.zeros((length, length), np.float32)
            kernel[length // 2] = 1
            rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1)
            kernel = cv2.warpAffine(kernel, rot, (length, length))
            img[:] = cv2.filter2D(img, -1, kernel / kernel.sum())
            info["motion_blur_px"] = length
    # Sensor: shot noise grows with the signal, plus read noise, a little of it in colour.
    shot, read = rng.uniform(2e-4, 2e-3), rng.uniform(1e-5, 1e-4)
    if clean:
        shot, read = shot / 4, read / 4
    sigma = np.sqrt(shot * np.clip(img, 0, 1) + read)
    lum = rng.standard_normal((h, w, 1), dtype=np.float32)
    img += sigma * (0.8 * lum + 0.45 * rng.standard_normal((h, w, 3), dtype=np.float32))
    return img, info


def _soft_blob(rng, h, w, xx, yy, soft: float) -> np.ndarray:
    """float32 (H, W) in [0, 1]: an irregular blob (a hand, a lamp arm) with an edge `soft` wide."""
    mask = np.zeros((h, w), np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    for _ in range(3):
        centre = (int(cx + rng.normal(0, 0.08) * w), int(cy + rng.normal(0, 0.08) * h))
        axes = (int(rng.uniform(0.1, 0.3) * w), int(rng.uniform(0.05, 0.2) * h))
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), soft * max(h, w))


def _occluder(rng, img: np.ndarray, xx, yy) -> None:
    """A textured object close to the camera (a mug, a pen, a fist), 3-20 % of the frame, with a shadow."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    centre = (int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h))
    area = rng.uniform(0.03, 0.2) * h * w
    ratio = rng.uniform(0.2, 1.0)
    a = np.sqrt(area / (np.pi * ratio))
    # The angle is drawn at the same point of the stream in both branches (the stream, and so every
    # later draw of the photo, is as it was before the texture moved with the object).
    ellipse = rng.random() < 0.5
    angle = float(rng.uniform(0, 180))
    if ellipse:
        cv2.ellipse(mask, centre, (int(a), int(a * ratio)), angle, 0, 360, 1, -1)
    else:
        box = cv2.boxPoints((centre, (2 * a, 2 * a * ratio), angle)).astype(np.int32)
        cv2.fillConvexPoly(mask, box, 1)
    m = mask.astype(bool)
    shadow = cv2.GaussianBlur(np.roll(mask, (int(0.03 * h), int(0.03 * w)), axis=(0, 1)).astype(np.float32),
                              (0, 0), 0.02 * max(h, w))
    img *= (1 - 0.5 * shadow)[..., None]
    tex = getattr(skdata, ("brick", "gravel", "grass")[int(rng.integers(3))])().astype(np.float32) / 255
    tex = _object_texture(tex, centre, angle, (w, h))
    shade = 0.7 + 0.5 * (xx - xx[m].mean()) / max(float(np.ptp(xx[m])), 1e-3)
    colour = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    img[m] = ((0.5 + tex[m])[:, None] * colour * shade[m][:, None]).astype(np.float32)


def _object_texture(tex: np.ndarray, centre: tuple[int, int], angle_deg: float, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W): texture `tex` (h, w) painted on an object centred at `centre` (photo px) and
    turned by angle_deg, at one texture px per photo px * (tex size / photo size) as before.

    Why: the texture must move with the object. Fixed in photo pixels, two photos (or a photo and
    an intruder) whose occluders drew the same texture matched each other at the identity, which
    no real capture does (a mug moves with its pattern). In the object's own coordinates, two
    photos of the same kind of object relate by the objects' relative motion, as two photos of
    one real mug or hand do."""
    w, h = size
    th, tw = tex.shape[:2]
    sx, sy = tw / w, th / h  # texture px per photo px, as the old full-frame resize gave
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    # photo px -> texture px: about the object's centre, turned with it, the texture's centre there.
    rot = np.array([[c, s], [-s, c]]) * np.array([[sx], [sy]])
    shift = np.array([(tw - 1) / 2, (th - 1) / 2]) - rot @ np.asarray(centre, np.float64)
    to_tex = np.c_[rot, shift]
    return cv2.warpAffine(tex, to_tex, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def to_jpeg(img: np.ndarray, quality: int) -> tuple[np.ndarray, bytes]:
    """float (H, W, 3) [0, 1] RGB -> (decoded uint8 RGB, JPEG bytes)."""
    u8 = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    data = buf.tobytes()
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy(), data


# ---------------------------------------------------------------------------------- sequences
def make_sequence(seed: int, photos: int = 8, photo_size: tuple[int, int] = (800, 600), intruders: int = 1,
                  table: str | None = None, max_tilt: float = 25.0, max_roll: float = 15.0,
                  scale_range: tuple[float, float] = (0.8, 1.25), detail: float = 1.3,
                  avoid_picture: str | None = None, picture: str | None = None) -> SemiRealCapture:
    """A reference and `photos` handheld photos of one cover, plus `intruders` photos of another.

    picture="procedural": the cover is a procedural one (see cover_picture); intruders still draw.
    detail: canvas px of the cover per photo px at the largest scale (> 1: photos are not blurred by
    upsampling; < 1 saves time and memory for huge photos).
    """
    rng = np.random.default_rng([seed, 13])
    table = table or TABLES[int(rng.integers(len(TABLES)))]
    aspect = float(rng.uniform(0.62, 0.85) if rng.random() < 0.8 else rng.uniform(1.2, 1.5))
    fill = rng.uniform(0.55, 0.7)
    cover_px = int(detail * fill * scale_range[1] * min(photo_size))
    canvas, corners, picture = world(np.random.default_rng([seed, 1]), cover_px, table, aspect, avoid_picture, picture)
    centre = corners.mean(axis=0)
    ref_cam = camera(rng, photo_size, centre, cover_px, fill, rng.uniform(0, 3), rng.uniform(-3, 3), 1.0, 0.02)
    ref, _ = spoil(np.random.default_rng([seed, 2]), shoot(canvas, ref_cam, photo_size), clean=True)
    reference, ref_bytes = to_jpeg(ref, 95)
    cap = SemiRealCapture(reference, [], [], _project(ref_cam, corners), aspect, jpegs={"reference.jpg": ref_bytes},
                          info={"table": table, "picture": picture, "photos": []})
    for i in range(photos):
        prng = np.random.default_rng([seed, 100 + i])
        cam = camera(prng, photo_size, centre, cover_px, fill, prng.uniform(0, max_tilt), prng.uniform(-max_roll, max_roll),
                     prng.uniform(*scale_range), 0.06)
        img, info = spoil(prng, shoot(canvas, cam, photo_size))
        quality = int(prng.integers(80, 96))
        photo, data = to_jpeg(img, quality)
        cap.photos.append(photo)
        t = ref_cam @ np.linalg.inv(cam)
        cap.truth.append(t / t[2, 2])
        cap.jpegs[f"IMG_{i:02d}.jpg"] = data
        cap.info["photos"].append({**info, "jpeg_quality": quality})
    for j in range(intruders):
        # Another cover on the same kind of table, photographed the same way.
        other = make_sequence(seed + 1_000_003 + j, photos=1, photo_size=photo_size, intruders=0, table=table,
                              max_tilt=max_tilt, max_roll=max_roll, scale_range=scale_range, detail=detail,
                              avoid_picture=None if picture == "procedural" else picture)
        cap.intruders.append(other.photos[0])
        cap.jpegs[f"INTRUDER_{j:02d}.jpg"] = other.jpegs["IMG_00.jpg"]
    return cap


def residuals(estimate: np.ndarray, truth: np.ndarray, quad: np.ndarray, n: int = 16) -> np.ndarray:
    """Distances (reference px) between where the estimate and the truth (photo px -> reference px)
    put an n x n grid of points of the cover (inside `quad`, reference px): (n * n,)."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    tl, tr, br, bl = quad
    pts = ((1 - u) * (1 - v))[..., None] * tl + (u * (1 - v))[..., None] * tr + (u * v)[..., None] * br \
        + ((1 - u) * v)[..., None] * bl
    pts = pts.reshape(-1, 2)
    in_photo = _project(np.linalg.inv(truth), pts)
    return np.linalg.norm(_project(estimate, in_photo) - pts, axis=1)


def _project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]
