"""Seeded 2-D toy densities for flows and other density models (no download; generated in numpy).

The three sets follow `jhjacobsen/invertible-resnet` `models/toy_data.py` (the same file as FFJORD's
`lib/toy_data.py`), as summarised in spec/generative.md §0.1:

- `8gaussians`: 8 centres on the unit circle at multiples of 45°, scaled by 4; each point is centre +
  0.5·N(0, I); everything is divided by 1.414. The label is the index k of the centre at angle k·45°.
- `two_moons`: scikit-learn's `make_moons(noise=0.1)` construction, times 2, shifted by (−1, −0.2). Built
  here in numpy (the same points, shuffle and noise model as `make_moons`, drawn from
  `numpy.random.default_rng(seed)`) so that loading it does not import `sklearn.datasets` (1-2 s).
  The label is the moon (0 upper/outer, 1 lower/inner), as in `make_moons`.
- `checkerboard`: x1 ~ U[−2, 2), x2 = U[0, 1) − 2·randint(0, 2) + (floor(x1) mod 2), both times 2. Every
  point lies in a square of side 2 whose corner indices (floor(x1/2), floor(x2/2)) have an even sum.

Departures from the reference code, none of which changes the distribution: the references draw from numpy's
global RNG point by point; here one `numpy.random.default_rng(seed)` draws vectorised, so the samples differ
while the densities are the same. The 8 centres are ordered by angle so the label means the angle.
"""
from __future__ import annotations

import numpy as np

__all__ = ["EIGHT_GAUSSIANS_SCALE", "EIGHT_GAUSSIANS_STD", "EIGHT_GAUSSIANS_DIVISOR", "eight_gaussian_centres",
           "eight_gaussians", "eight_gaussians_log_prob", "two_moons", "checkerboard"]

EIGHT_GAUSSIANS_SCALE = 4.0     # radius of the circle of centres before the final division
EIGHT_GAUSSIANS_STD = 0.5       # per-coordinate noise std before the final division
EIGHT_GAUSSIANS_DIVISOR = 1.414  # the reference divides by this literal, not by sqrt(2)


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1; got {n!r}")


def _unit_circle_centres() -> np.ndarray:
    angles = np.arange(8) * (np.pi / 4)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [8, 2]


def eight_gaussian_centres() -> np.ndarray:
    """The 8 mode centres after the division, 4/1.414·(cos k·45°, sin k·45°), float64 [8, 2]."""
    return EIGHT_GAUSSIANS_SCALE * _unit_circle_centres() / EIGHT_GAUSSIANS_DIVISOR


def eight_gaussians(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points of the 8-Gaussians mixture: (x float32 [n, 2], label int32 [n] = index of the centre)."""
    _check_n(n)
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 8, size=n)
    noise = rng.standard_normal((n, 2)) * EIGHT_GAUSSIANS_STD
    x = (EIGHT_GAUSSIANS_SCALE * _unit_circle_centres()[label] + noise) / EIGHT_GAUSSIANS_DIVISOR
    return x.astype(np.float32), label.astype(np.int32)


def eight_gaussians_log_prob(x: np.ndarray) -> np.ndarray:
    """Exact log-density of the 8-Gaussians mixture at x [..., 2] (float64 [...]).

    p(x) = (1/8) Σ_k N(x; c_k, s² I) with c_k the centres above and s = 0.5/1.414. Its negative mean over
    samples estimates the entropy, the best test NLL any model can reach (2.832 nats, spec §0.1).
    """
    x = np.asarray(x, dtype=np.float64)
    s = EIGHT_GAUSSIANS_STD / EIGHT_GAUSSIANS_DIVISOR
    sq = np.sum((x[..., None, :] - eight_gaussian_centres()) ** 2, axis=-1)  # [..., 8]
    log_comp = -0.5 * sq / s**2 - np.log(2 * np.pi * s**2)
    top = np.max(log_comp, axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.mean(np.exp(log_comp - top), axis=-1))


def two_moons(n: int, *, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """n points of two interleaved moons: (x float32 [n, 2], label int32 [n], 0 outer / 1 inner moon).

    Same construction as `sklearn.datasets.make_moons(n, noise=noise)` (n//2 points evenly spaced along
    the outer half circle, the rest along the inner one, shuffled, plus N(0, noise²) per coordinate),
    then x·2 + (−1, −0.2) as in the i-ResNet/FFJORD toy code.
    """
    _check_n(n)
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise ValueError(f"`noise` must be a number >= 0; got {noise!r}")
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    points = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
                             np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], axis=1)])  # [n, 2]
    label = np.concatenate([np.zeros(n_out, np.int32), np.ones(n_in, np.int32)])
    order = rng.permutation(n)
    points, label = points[order], label[order]
    points = points + rng.normal(scale=noise, size=points.shape)
    x = points * 2 + np.array([-1.0, -0.2])
    return x.astype(np.float32), label


def checkerboard(n: int, *, seed: int) -> np.ndarray:
    """n points of the FFJORD/i-ResNet checkerboard, float32 [n, 2] in [−4, 4)²."""
    _check_n(n)
    rng = np.random.default_rng(seed)
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2 + np.floor(x1) % 2
    x = np.stack([x1, x2], axis=1) * 2  # [n, 2]
    return x.astype(np.float32)
