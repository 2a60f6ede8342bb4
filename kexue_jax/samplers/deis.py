"""DEIS multistep (Zhang & Chen): Adams–Bashforth with exact integrals of a Lagrange polynomial.

In the VE parameterisation the linear part of the ODE vanishes, dx/dσ = d = ε, so the exponential integrator
reads x_{i+1} = x_i + Σ_j d_{i−j}·∫_{σ_i}^{σ_{i+1}} ℓ_j(τ(σ)) dσ, where ℓ_j is the Lagrange basis on the
nodes τ(σ_i), …, τ(σ_{i−p+1}) and τ is the interpolation variable: 'vp_time' (the VP-SDE time t(σ) spanning
[σ_min, σ_max] as in `time_uniform_sigmas`: tAB-DEIS) or 'sigma' (ρAB-DEIS; then this is variable-step
Adams–Bashforth in σ). p = min(order, i + 1). The σ-integrals are done by 16-point Gauss–Legendre (exact for
'sigma'; the integrand is smooth in σ for 'vp_time').

References:
    https://kexue.fm/archives/9881 (线性多步法)
    Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS), tAB/ρAB.
"""
from __future__ import annotations

import jax
import numpy as np

from kexue_jax.samplers.common import (check_afs_mean, check_choice, check_int, counts_nfe, run_linear_multistep,
                                       validate_sigmas, validate_x)

__all__ = ["ORDER", "sample_deis", "deis_coefficients"]

ORDER = 3
INTERPOLATIONS = ("vp_time", "sigma")


def _vp_time(sigma, sigma_min, sigma_max, epsilon_s=1e-3):
    a_min, a_max = np.log1p(sigma_min ** 2), np.log1p(sigma_max ** 2)
    beta_d = 2 * (a_min / epsilon_s - a_max) / (epsilon_s - 1)
    beta_min = a_max - 0.5 * beta_d
    return (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log1p(sigma ** 2)) - beta_min) / beta_d


def deis_coefficients(sigmas, order: int = 3, interpolation: str = "vp_time"):
    """(a [N], b [N, order]) for run_linear_multistep in d form."""
    s = validate_sigmas(sigmas)
    order = check_int("order", order, 1, 4)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    pos = s[s > 0]
    if interpolation == "sigma":
        tau = lambda v: v  # noqa: E731
    else:
        tau = lambda v: _vp_time(v, pos.min(), s[0])  # noqa: E731
    nodes, weights = np.polynomial.legendre.leggauss(16)
    n = len(s) - 1
    b = np.zeros((n, order))
    for i in range(n):
        p = min(order, i + 1)
        lo, hi = s[i], s[i + 1]
        q = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)  # quadrature points in σ
        wq = 0.5 * (hi - lo) * weights
        tq, tn = tau(q), tau(s[i - np.arange(p)])
        for j in range(p):
            ell = np.ones_like(q)
            for k in range(p):
                if k != j:
                    ell = ell * (tq - tn[k]) / (tn[j] - tn[k])
            b[i, j] = np.sum(wq * ell)
    return np.ones(n), b


def _nfe(sigmas, *, afs=False, **_):
    return len(sigmas) - 1 - int(bool(afs))


@counts_nfe(_nfe)
def sample_deis(denoise_fn, x_T: jax.Array, sigmas, *, key=None, order: int = 3,
                interpolation: str = "vp_time", afs: bool = False, afs_mean=None) -> jax.Array:
    """DEIS (tAB by default; 'sigma' gives ρAB), 1 NFE per step.

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...]; x_T: [b, ...] at sigmas[0]; sigmas: [N+1] decreasing, may
            end at 0. key: unused. order: number of nodes, 1..4. interpolation: 'vp_time' | 'sigma'.
        afs: analytical first slope.
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = N − [afs].
    """
    del key
    order = check_int("order", order, 1, 4)
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    a, b = deis_coefficients(s, order, interpolation)
    return run_linear_multistep(denoise_fn, x, s, a, b, model="d", afs=bool(afs), afs_mean=mean)
