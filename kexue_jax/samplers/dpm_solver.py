"""DPM-Solver-2 (singlestep, noise form) and multistep DPM-Solver++ (2M, 3M; data-prediction form).

In the EDM (VE, α_t = 1) parameterisation with λ = −log σ and h_i = λ_{i+1} − λ_i:

DPM-Solver-2 (Lu et al. 2022, r = ½): σ_s = σ_i^{1−r}σ_{i+1}^{r}, u = x + (σ_s − σ_i)·d_i,
    x_{i+1} = x + (σ_{i+1} − σ_i)·[(1/2r)·d(u, σ_s) + (1 − 1/2r)·d_i];
for r = ½ this is the article's geometric-midpoint rule x_{t_n} ≈ x_{t_{n+1}} − v(x_{√(t_n t_{n+1})}, √(t_n t_{n+1}))Δt.

DPM-Solver++ (Lu et al. 2022b), with D_j = D(x_j, σ_j), φ₁ = expm1(−h), r₀ = h_{i−1}/h, r₁ = h_{i−2}/h:
    order 1: x_{i+1} = (σ_{i+1}/σ_i)·x_i − φ₁·D_i                                   (= DDIM)
    order 2: x_{i+1} = (σ_{i+1}/σ_i)·x_i − φ₁·D_i − ½φ₁·(D_i − D_{i−1})/r₀
    order 3: D1₀ = (D_i − D_{i−1})/r₀, D1₁ = (D_{i−1} − D_{i−2})/r₁, D1 = D1₀ + r₀/(r₀+r₁)·(D1₀ − D1₁),
             D2 = (D1₀ − D1₁)/(r₀ + r₁), φ₂ = φ₁/h + 1, φ₃ = φ₂/h − ½,
             x_{i+1} = (σ_{i+1}/σ_i)·x_i − φ₁·D_i + φ₂·D1 − φ₃·D2.
Step i uses order min(order, i + 1) (warm start); with `lower_order_final` and fewer than 10 steps, also at
most N − i (Lu et al.'s rule); a last step to σ = 0 is first order (x = D). On the first 2nd-order step the
multipliers of D_1 and D_0 are (1 − e^{−h})(1 + 1/(2r₀)) and −(1 − e^{−h})/(2r₀) — the coefficient checked in
tests/samplers/test_coefficients.py (the class of bug found in NVIDIA/physicsnemo PR #1932).

References:
    https://kexue.fm/archives/9881 (几何平均中间点 = DPM-Solver-2 的特例)
    Lu et al. 2022, "DPM-Solver" (arXiv 2206.00927); Lu et al. 2022, "DPM-Solver++" (arXiv 2211.01095).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.samplers.common import (afs_direction, check_afs_mean, check_int, counts_nfe, run_linear_multistep,
                                       scan_steps, validate_sigmas, validate_x)

__all__ = ["ORDER", "sample_dpm_solver_2", "sample_dpm_solver_pp", "dpm_solver_pp_coefficients",
           "dpm_solver_pp_orders"]

# Global orders of the samplers as run. Canonical 3M is second order: its third-order term is halved (see
# `dpm_solver_pp_coefficients`) and its first-order warm start leaves an O(h²) error on step 0 anyway
# (tests/samplers/test_order.py; its constant is still well below 2M's).
ORDER = {"dpm_solver_2": 2, "dpm_solver_pp_2m": 2, "dpm_solver_pp_3m": 2}


def _nfe_2(sigmas, *, afs=False, **_):
    return 2 * (len(sigmas) - 1) - int(sigmas[-1] == 0) - int(bool(afs))


@counts_nfe(_nfe_2)
def sample_dpm_solver_2(denoise_fn, x_T: jax.Array, sigmas, *, key=None, afs: bool = False,
                        r: float = 0.5, afs_mean=None) -> jax.Array:
    """Singlestep DPM-Solver-2 (2 NFE per step; a last step to σ = 0 is Euler).

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...]; x_T: [b, ...] at sigmas[0]; sigmas: [N+1] decreasing.
        key: unused. afs: analytical first slope. r: position of the intermediate point in log σ, (0, 1].
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = 2N − [σ_N = 0] − [afs].
    """
    del key
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    if not (np.isfinite(r) and 0 < r <= 1):
        raise ValueError(f"`r` must be in (0, 1]; got {r!r}")
    mean = check_afs_mean(afs_mean, bool(afs), x)
    dt = x.dtype
    sig = jnp.asarray(s, dt)
    mid = jnp.asarray(np.where(s[1:] > 0, s[:-1] ** (1 - r) * np.maximum(s[1:], 1e-300) ** r, 0.0), dt)
    w_mid = 1 / (2 * r)

    def step(x, i, first_afs, last_euler):
        sc, sn, sm = sig[i], sig[i + 1], mid[i]
        d = afs_direction(x, sc, mean) if first_afs else (x - denoise_fn(x, sc)) / sc
        if last_euler:
            return x + (sn - sc) * d
        u = x + (sm - sc) * d
        d_mid = (u - denoise_fn(u, sm)) / sm
        return x + (sn - sc) * (w_mid * d_mid + (1 - w_mid) * d)

    return scan_steps(step, x, len(s) - 1, peel_first=bool(afs), peel_last=bool(s[-1] == 0))


def dpm_solver_pp_orders(sigmas, order: int, lower_order_final: bool = True) -> np.ndarray:
    """The order used at each step (int [N]): warm start, Lu et al.'s lower-order final, order 1 into σ = 0."""
    n = len(sigmas) - 1
    p = np.minimum(order, np.arange(1, n + 1))
    if lower_order_final and n < 10:
        p = np.minimum(p, n - np.arange(n))
    if sigmas[-1] == 0:
        p[-1] = 1
    return p


def dpm_solver_pp_coefficients(sigmas, order: int = 2, lower_order_final: bool = True,
                               exact_third_order: bool = False):
    """Per-step (a [N], b [N, 3]) with x_{i+1} = a_i x_i + b_{i,0} D_i + b_{i,1} D_{i−1} + b_{i,2} D_{i−2}.

    exact_third_order: the canonical multistep D2 = (D1₀ − D1₁)/(r₀ + r₁) estimates h²D''/2, while φ₃ = φ₂/h − ½
    is normalised for h²D'' (as in the singlestep solver, whose D2 carries a factor 2), so canonical 3M
    halves its third-order term and is only second order; True doubles D2 (then a 3M step is exact when D is
    quadratic in λ; tested). False (default) reproduces Lu et al.'s code and the published tables.
    """
    s = validate_sigmas(sigmas)
    order = check_int("order", order, 1, 3)
    p = dpm_solver_pp_orders(s, order, lower_order_final)
    n = len(s) - 1
    with np.errstate(divide="ignore"):
        lam = -np.log(s)
    a, b = np.zeros(n), np.zeros((n, 3))
    for i in range(n):
        a[i] = s[i + 1] / s[i]
        if p[i] == 1:
            b[i, 0] = 1 - a[i]  # −φ₁ = 1 − e^{−h}, exact also when σ_{i+1} = 0
            continue
        h = lam[i + 1] - lam[i]
        phi1 = np.expm1(-h)
        r0 = (lam[i] - lam[i - 1]) / h
        u = np.array([1 / r0, -1 / r0, 0.0])  # D1₀ in terms of (D_i, D_{i−1}, D_{i−2})
        if p[i] == 2:
            b[i] = -phi1 * np.array([1.0, 0, 0]) - 0.5 * phi1 * u
            continue
        r1 = (lam[i - 1] - lam[i - 2]) / h
        w = np.array([0.0, 1 / r1, -1 / r1])  # D1₁
        d1 = u + r0 / (r0 + r1) * (u - w)
        d2 = (u - w) / (r0 + r1) * (2.0 if exact_third_order else 1.0)
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        b[i] = -phi1 * np.array([1.0, 0, 0]) + phi2 * d1 - phi3 * d2
    return a, b


def _nfe_pp(sigmas, *, afs=False, **_):
    return len(sigmas) - 1 - int(bool(afs))


@counts_nfe(_nfe_pp)
def sample_dpm_solver_pp(denoise_fn, x_T: jax.Array, sigmas, *, key=None, order: int = 2,
                         afs: bool = False, lower_order_final: bool = True,
                         exact_third_order: bool = False, afs_mean=None) -> jax.Array:
    """Multistep DPM-Solver++ (order 2 = 2M, 3 = 3M) in data-prediction form, 1 NFE per step.

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...]; x_T: [b, ...] at sigmas[0]; sigmas: [N+1] decreasing, may
            end at 0.
        key: unused. order: 1, 2 or 3. afs: the first D is x − σ·x/√(1 + σ²) (no evaluation).
        lower_order_final: lower the order over the last steps when N < 10 (Lu et al.).
        exact_third_order: double the canonical 3M's D2 (see `dpm_solver_pp_coefficients`).
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = N − [afs].
    """
    del key
    order = check_int("order", order, 1, 3)
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    a, b = dpm_solver_pp_coefficients(s, order, lower_order_final, exact_third_order)
    return run_linear_multistep(denoise_fn, x, s, a, b, model="x0", afs=bool(afs), afs_mean=mean)
