"""Classical multi-image baselines the network is compared against (GUIDE section 4).

Every baseline maps a set of K aligned images to one image:

    inputs: float (K, H, W, 3) in [0, 1]   ->   output: float32 (H, W, 3) in [0, 1]

and is independent of the order of the K images, like the network.

- `median`, `mean`: per-pixel statistics over the set.
- `weiss`: Weiss 2001, "Deriving intrinsic images from image sequences": the maximum-likelihood
  reflectance under a Laplacian prior on illumination derivatives is the median over the sequence
  of log-derivative filter outputs, reintegrated by an FFT Poisson solve.
- `rpca`: robust PCA (Candes et al. 2011) by inexact augmented Lagrange multipliers (Lin, Chen &
  Ma 2010): the stacked images split into a low-rank part (the cover under varying light) and a
  sparse part (occluders, speculars); the output is the per-pixel median of the low-rank frames.

Cost at 256x256, K = 9, measured on a 2-core CPU: median 0.01 s, mean 0.001 s, weiss 0.1 s,
rpca about 0.6 s (20-30 ALM iterations). Weiss is one median over K gradient images plus one FFT
of a 2H x 2W image per channel; RPCA is a thin SVD of an (H*W*3) x K matrix per iteration, done
through the K x K Gram matrix so it is linear in the pixel count, in float32 with in-place
updates because memory traffic dominates.
"""

from __future__ import annotations

import numpy as np

__all__ = ["median", "mean", "weiss", "rpca", "rpca_decompose", "BASELINES"]

# Added before taking logs so black pixels (shadows, dark print) stay finite; 1/255 is one sRGB
# step, small enough not to shift mid-tones, large enough not to blow up quantised blacks.
LOG_EPS = 1.0 / 255.0


def _check(inputs) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] < 1:
        raise ValueError(f"inputs must be (K, H, W, 3) with K >= 1, got {x.shape}")
    return x


def median(inputs) -> np.ndarray:
    """Per-pixel, per-channel median over the K images: (K, H, W, 3) -> (H, W, 3)."""
    return np.median(_check(inputs), axis=0).astype(np.float32)


def mean(inputs) -> np.ndarray:
    """Per-pixel, per-channel mean over the K images: (K, H, W, 3) -> (H, W, 3)."""
    return _check(inputs).mean(axis=0, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Weiss 2001


def _mirror_gradients(gx: np.ndarray, gy: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of the even (mirror) extension of an HxW image, from the image's own gradients.

    gx: (H, W-1, C) forward x-differences, gy: (H-1, W, C) forward y-differences. Returns the
    periodic forward differences of the (2H, 2W, C) extension. The extension makes the image
    periodic without a seam, so the FFT solve below is the Neumann (zero-flux) Poisson solve and
    leaves no wrap-around artefacts at the borders. Each output value is +-1 times one input value
    or zero, so this commutes with the median over the sequence.
    """
    c = gx.shape[-1]
    zero_col = np.zeros((h, 1, c), gx.dtype)
    ex_row = np.concatenate([gx, zero_col, -gx[:, ::-1], zero_col], axis=1)  # (H, 2W, C)
    ex = np.concatenate([ex_row, ex_row[::-1]], axis=0)  # (2H, 2W, C)
    zero_row = np.zeros((1, w, c), gy.dtype)
    ey_col = np.concatenate([gy, zero_row, -gy[::-1], zero_row], axis=0)  # (2H, W, C)
    ey = np.concatenate([ey_col, ey_col[:, ::-1]], axis=1)  # (2H, 2W, C)
    return ex, ey


def _poisson_fft(ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """Least-squares image r (zero mean) whose periodic forward differences best match (ex, ey).

    Solves min ||dx r - ex||^2 + ||dy r - ey||^2 in the Fourier domain, where the forward
    difference has transfer function exp(2 pi i f) - 1. Shapes (N, M, C) -> (N, M, C).
    """
    n, m = ex.shape[:2]
    fx = (np.exp(2j * np.pi * np.fft.rfftfreq(m)) - 1.0)[None, :, None]  # along width
    fy = (np.exp(2j * np.pi * np.fft.fftfreq(n)) - 1.0)[:, None, None]  # along height
    gx = np.fft.rfft2(ex, axes=(0, 1))
    gy = np.fft.rfft2(ey, axes=(0, 1))
    denom = np.abs(fx) ** 2 + np.abs(fy) ** 2
    denom[0, 0, :] = 1.0  # the DC term is unconstrained by derivatives; fixed by the offset later
    r_hat = (np.conj(fx) * gx + np.conj(fy) * gy) / denom
    r_hat[0, 0, :] = 0.0
    return np.fft.irfft2(r_hat, s=(n, m), axes=(0, 1))


def weiss(inputs) -> np.ndarray:
    """Weiss 2001 maximum-likelihood reflectance: (K, H, W, 3) -> (H, W, 3) in [0, 1].

    Per channel, in the log domain: horizontal and vertical derivative filters applied to every
    image, the median over the K images taken per pixel (illumination edges move between images,
    reflectance edges do not, so the median keeps the latter), the median gradient field
    reintegrated by an FFT Poisson solve, and the unknown constant resolved against the images: the
    log reflectance is shifted so its median over pixels equals that of the per-pixel median log
    image (the reflectance of a Lambertian surface is only defined up to that scale).
    With K = 1 the output is the input (up to the LOG_EPS round trip).
    """
    x = _check(inputs)
    k, h, w, _ = x.shape
    logs = np.log(x + LOG_EPS)  # (K, H, W, 3)
    gx = np.median(np.diff(logs, axis=2), axis=0)  # (H, W-1, 3)
    gy = np.median(np.diff(logs, axis=1), axis=0)  # (H-1, W, 3)
    ex, ey = _mirror_gradients(gx.astype(np.float64), gy.astype(np.float64), h, w)
    log_r = _poisson_fft(ex, ey)[:h, :w]  # (H, W, 3), zero-mean over the extension
    reference = np.median(logs, axis=0)
    offset = np.median((reference - log_r).reshape(-1, 3), axis=0)  # (3,)
    out = np.exp(log_r + offset) - LOG_EPS
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# RPCA


def _thin_svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of a tall (N, K) matrix with N >> K via the K x K Gram matrix: O(N K^2), not O(N^2 K).

    Returns u (N, r) in m's dtype, s (r,) and vt (r, K) in float64, r = numerical rank.
    Squaring the condition number loses precision on tiny singular values, but those are exactly
    the ones the shrinkage below sets to zero, so the low-rank part is unaffected. The K x K
    eigenproblem is solved in float64 whatever m's dtype.
    """
    gram = (m.T @ m).astype(np.float64)
    evals, v = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    s = np.sqrt(np.clip(evals[order], 0.0, None))
    v = v[:, order]
    keep = s > s[0] * 1e-7 if s[0] > 0 else np.zeros_like(s, dtype=bool)
    u = (m @ v[:, keep].astype(m.dtype)) / s[keep].astype(m.dtype)
    return u, s[keep], v[:, keep].T


def rpca_decompose(
    d: np.ndarray,
    lam: float | None = None,
    tol: float = 1e-7,
    max_iter: int = 500,
    rho: float = 1.5,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust PCA by inexact ALM: D = L + S with L low rank and S sparse.

    d: (N, K) float matrix (any N, K; N >= K is fastest). lam defaults to 1 / sqrt(max(N, K)),
    the value with recovery guarantees (Candes et al. 2011). Stops when ||D - L - S||_F / ||D||_F
    < tol. dtype: working precision; float32 halves the memory traffic that dominates the cost
    (use a tol >= 1e-6 with it). Returns (L, S), both (N, K) in dtype.
    """
    d = np.asarray(d, dtype=dtype)
    transposed = d.shape[0] < d.shape[1]
    if transposed:  # the Gram-matrix SVD wants the long side first
        d = np.ascontiguousarray(d.T)
    n, k = d.shape
    lam = 1.0 / np.sqrt(max(n, k)) if lam is None else lam
    norm_fro = float(np.linalg.norm(d))
    if norm_fro == 0:
        zeros = np.zeros_like(d)
        return (zeros.T, zeros.T.copy()) if transposed else (zeros, zeros.copy())
    # Initialisation from Lin, Chen & Ma (2010), Algorithm 5; the spectral norm via the Gram matrix.
    norm_two = float(np.sqrt(np.linalg.eigvalsh((d.T @ d).astype(np.float64))[-1]))
    y = d / dtype(max(norm_two, float(np.abs(d).max()) / lam))
    mu = 1.25 / norm_two
    mu_bar = mu * 1e7
    low = np.zeros_like(d)
    sparse = np.zeros_like(d)
    work = np.empty_like(d)
    for _ in range(max_iter):
        # In-place updates: every step is a pass over N x K values, so temporaries cost real time.
        np.multiply(y, dtype(1.0 / mu), out=work)
        work += d
        work -= sparse  # work = D - S + Y/mu
        u, s, vt = _thin_svd(work)
        s = np.maximum(s - 1.0 / mu, 0.0)  # singular value thresholding
        r = int((s > 0).sum())
        low = (u[:, :r] * s[:r].astype(dtype)) @ vt[:r].astype(dtype)
        work += sparse
        work -= low  # work = D - L + Y/mu
        np.abs(work, out=sparse)  # S = soft(work, lam/mu), built in place
        sparse -= dtype(lam / mu)
        np.maximum(sparse, 0.0, out=sparse)
        sparse *= np.sign(work)
        work -= sparse
        work -= y * dtype(1.0 / mu)  # work = D - L - S, the constraint residual
        y += dtype(mu) * work
        mu = min(mu * rho, mu_bar)
        if np.linalg.norm(work) / norm_fro < tol:
            break
    return (low.T, sparse.T) if transposed else (low, sparse)


def rpca(inputs, tol: float = 1e-5) -> np.ndarray:
    """RPCA background: (K, H, W, 3) -> (H, W, 3) in [0, 1].

    Each image is one column of an (H*W*3, K) matrix; the low-rank part holds the cover under the
    changing light, the sparse part the occluders and highlights. The output is the per-pixel
    median of the K low-rank frames (with rank 1 they differ only by a scale; the median is robust
    if a little rank leaks in). Runs in float32 with tol 1e-5 of the image norm: the result is
    within ~1e-3 of a float64 solve, a quarter of one 8-bit step, at half the cost.
    """
    x = _check(inputs)
    k, h, w, c = x.shape
    d = x.reshape(k, -1).T  # (H*W*3, K)
    low, _ = rpca_decompose(d, tol=tol, dtype=np.float32)
    frames = low.T.reshape(k, h, w, c)
    return np.clip(np.median(frames, axis=0), 0.0, 1.0).astype(np.float32)


# Name -> function, in the order tables and plots list them.
BASELINES = {"median": median, "mean": mean, "weiss": weiss, "rpca": rpca}
