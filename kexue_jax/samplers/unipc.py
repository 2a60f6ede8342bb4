"""UniPC (Zhao et al. 2023): the multistep UniP predictor with the UniC corrector, data-prediction form.

VE form, λ = −log σ, h = λ_{i+1} − λ_i, φ₁ = expm1(−h), B(h) = −h ('bh1') or expm1(−h) ('bh2'),
r_k = (λ_{i−k} − λ_i)/h, D1_k = (D_{i−k} − D_i)/r_k (k = 1 … p−1), r_p = 1:

    x̃ = (σ_{i+1}/σ_i)·x_i − φ₁·D_i
    predictor UniP-p:  x^p_{i+1} = x̃ − B(h)·Σ_{k<p} ρ^p_k·D1_k,  R_{p−1}ρ^p = g_{p−1}  (ρ^p = ½ for p = 2)
    corrector UniC-p:  x_{i+1} = x̃ − B(h)·(Σ_{k<p} ρ^c_k·D1_k + ρ^c_p·(D(x^p_{i+1}, σ_{i+1}) − D_i)),  R_p ρ^c = g_p
                       (ρ^c = ½ for p = 1)
with R_p[m, k] = r_k^m and g_m = m!·φ_{m+1}(h)/B(h) in the recursion φ_{k+1} = φ_k/(−h) − 1/k!. The model
value at the predicted point is reused by the next step, so the corrector costs no NFE; the last step is not
corrected. p = min(order, i + 1), lowered to N − i at the end when N < 10; into σ = 0, p = 1 (x = D).
The N < 10 condition is DPM-Solver's rule; the official UniPC code (and diff-sampler, whose runs gave the
published AMED tables) lowers the final orders at every N, so from N = 10 on the two differ (ours keeps
order p on the last steps there).

References:
    https://kexue.fm/archives/9881 (线性多步法)
    Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models".
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.samplers.common import (afs_direction, check_afs_mean, check_choice, check_int, counts_nfe, scan_steps,
                                       validate_sigmas, validate_x)

__all__ = ["ORDER", "sample_unipc", "unipc_coefficients"]

ORDER = 4  # UniPC-p with the corrector has order p + 1 (Zhao et al., Thm 3.3); default order=3 (UniPC-3)
VARIANTS = ("bh1", "bh2")


def _step_coefficients(lam, i, p, variant, corrector):
    """(a, b) with result = a·x_i + Σ_k b_k·m_k over m = (D_{i+1}, D_i, D_{i−1}, …) for the corrector or
    m = (D_i, D_{i−1}, …) for the predictor."""
    h = lam[i + 1] - lam[i]
    a = np.exp(-h)
    phi1 = np.expm1(-h)
    size = p + 1 if corrector else p
    b = np.zeros(size)
    o = 1 if corrector else 0  # index of D_i
    b[o] = -phi1
    if not np.isfinite(h):
        return 0.0, b  # into σ = 0: x = D_i
    hh = -h
    bh = hh if variant == "bh1" else np.expm1(hh)
    rks = np.array([(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0])
    R, g = [], []
    h_phi_k, fact = phi1 / hh - 1, 1.0
    for m in range(1, p + 1):
        R.append(rks ** (m - 1))
        g.append(h_phi_k * fact / bh)
        fact *= m + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, g = np.array(R), np.array(g)
    if corrector:
        rho = np.array([0.5]) if p == 1 else np.linalg.solve(R, g)
        for k in range(1, p):  # D1_k = (D_{i−k} − D_i)/r_k
            b[o + k] += -bh * rho[k - 1] / rks[k - 1]
            b[o] += bh * rho[k - 1] / rks[k - 1]
        b[0] += -bh * rho[-1]
        b[o] += bh * rho[-1]
    elif p >= 2:
        rho = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], g[:-1])
        for k in range(1, p):
            b[o + k] += -bh * rho[k - 1] / rks[k - 1]
            b[o] += bh * rho[k - 1] / rks[k - 1]
    return a, b


def unipc_coefficients(sigmas, order: int = 3, variant: str = "bh1", lower_order_final: bool = True):
    """Predictor (a [N], bp [N, order]) and corrector (bc [N, order+1]) coefficient tables."""
    s = validate_sigmas(sigmas)
    order = check_int("order", order, 1, 3)
    check_choice("variant", variant, VARIANTS)
    n = len(s) - 1
    p = np.minimum(order, np.arange(1, n + 1))
    if lower_order_final and n < 10:
        p = np.minimum(p, n - np.arange(n))
    if s[-1] == 0:
        p[-1] = 1
    with np.errstate(divide="ignore"):
        lam = -np.log(s)
    a, bp, bc = np.zeros(n), np.zeros((n, order)), np.zeros((n, order + 1))
    for i in range(n):
        a[i], c = _step_coefficients(lam, i, p[i], variant, False)
        bp[i, :len(c)] = c
        if i < n - 1:
            _, c = _step_coefficients(lam, i, p[i], variant, True)
            bc[i, :len(c)] = c
    return a, bp, bc


def _nfe(sigmas, *, afs=False, **_):
    return len(sigmas) - 1 - int(bool(afs))


@counts_nfe(_nfe)
def sample_unipc(denoise_fn, x_T: jax.Array, sigmas, *, key=None, order: int = 3, variant: str = "bh1",
                 afs: bool = False, lower_order_final: bool = True, afs_mean=None) -> jax.Array:
    """UniPC-p sampling, 1 NFE per step.

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...]; x_T: [b, ...] at sigmas[0]; sigmas: [N+1] decreasing, may
            end at 0. key: unused. order: 1..3. variant: 'bh1' | 'bh2'. afs: analytical first D.
        lower_order_final: lower the order over the last steps when N < 10.
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = N − [afs].
    """
    del key
    order = check_int("order", order, 1, 3)
    check_choice("variant", variant, VARIANTS)
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    a, bp, bc = unipc_coefficients(s, order, variant, lower_order_final)
    n, k = bp.shape
    dt = x.dtype
    a_j, bp_j, sig = jnp.asarray(a, dt), jnp.asarray(bp, dt), jnp.asarray(s, dt)
    # Row j corrects step j−1 (row 0: no correction, x_0 = x_T).
    a_c = jnp.asarray(np.concatenate([[0.0], a[:-1]]), dt)
    bc_j = jnp.asarray(np.concatenate([np.zeros((1, k + 1)), bc[:-1]]), dt)
    keep_pred = jnp.asarray(np.eye(1, n)[0], dt)

    def step(carry, j, first_afs, last):
        del last
        x_prev, x_pred, hist = carry
        if first_afs:
            m = x_pred - sig[j] * afs_direction(x_pred, sig[j], mean)
        else:
            m = denoise_fn(x_pred, sig[j])
        hist = jnp.concatenate([m[None], hist[:-1]], axis=0)  # [k+1, ...]: D_j, D_{j−1}, …
        x_j = keep_pred[j] * x_pred + a_c[j] * x_prev + jnp.tensordot(bc_j[j], hist, axes=1)
        x_next = a_j[j] * x_j + jnp.tensordot(bp_j[j], hist[:k], axes=1)
        return x_j, x_next, hist

    hist = jnp.zeros((k + 1,) + x.shape, dt)
    _, out, _ = scan_steps(step, (x, x, hist), n, peel_first=bool(afs))
    return out
