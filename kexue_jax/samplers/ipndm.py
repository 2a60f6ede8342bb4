"""iPNDM: the improved pseudo-numerical method of Zhang & Chen, Adams–Bashforth on d = (x − D)/σ.

x_{i+1} = x_i + (σ_{i+1} − σ_i)·Σ_k c^{(p)}_k d_{i−k}, with the fixed (equal-step) Adams–Bashforth weights
c^{(1)} = (1), c^{(2)} = (3, −1)/2, c^{(3)} = (23, −16, 5)/12, c^{(4)} = (55, −59, 37, −9)/24 and
p = min(max_order, i + 1) (lower-order warm start instead of PNDM's Runge–Kutta start, 1 NFE per step).

References:
    https://kexue.fm/archives/9881 (线性多步法)
    Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS, iPNDM);
    Liu et al. 2022 (PNDM); Zhou et al. 2023 (AMED), whose baseline and plugin use this form.
"""
from __future__ import annotations

import jax
import numpy as np

from kexue_jax.samplers.common import (check_afs_mean, check_int, counts_nfe, run_linear_multistep, validate_sigmas,
                                       validate_x)

__all__ = ["ORDER", "AB_WEIGHTS", "sample_ipndm", "ipndm_coefficients"]

# Global order on the non-uniform grids used in practice: the weights are the equal-step Adams–Bashforth ones,
# so with σ-steps that vary smoothly they are consistent only to second order (the higher weights improve the
# constant, not the rate; measured in tests/samplers/test_order.py). Nominal AB order of max_order = 4: 4.
ORDER = 2

AB_WEIGHTS = (
    np.array([1.0]),
    np.array([3.0, -1.0]) / 2,
    np.array([23.0, -16.0, 5.0]) / 12,
    np.array([55.0, -59.0, 37.0, -9.0]) / 24,
)


def ipndm_weights(step: int, max_order: int) -> np.ndarray:
    """The four AB weights (zero-padded) used at step `step` (0-based)."""
    w = np.zeros(4)
    p = min(max_order, step + 1)
    w[:p] = AB_WEIGHTS[p - 1]
    return w


def ipndm_coefficients(sigmas, max_order: int = 4):
    """(a [N], b [N, 4]) for run_linear_multistep in d form: a = 1, b_i = (σ_{i+1} − σ_i)·c^{(p_i)}."""
    s = validate_sigmas(sigmas)
    max_order = check_int("max_order", max_order, 1, 4)
    n = len(s) - 1
    b = np.stack([(s[i + 1] - s[i]) * ipndm_weights(i, max_order) for i in range(n)])
    return np.ones(n), b


def _nfe(sigmas, *, afs=False, **_):
    return len(sigmas) - 1 - int(bool(afs))


@counts_nfe(_nfe)
def sample_ipndm(denoise_fn, x_T: jax.Array, sigmas, *, key=None, max_order: int = 4,
                 afs: bool = False, afs_mean=None) -> jax.Array:
    """iPNDM sampling (1 NFE per step).

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...]; x_T: [b, ...] at sigmas[0]; sigmas: [N+1] decreasing, may
            end at 0. key: unused. max_order: 1..4. afs: analytical first slope.
            afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = N − [afs].
    """
    del key
    max_order = check_int("max_order", max_order, 1, 4)
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    a, b = ipndm_coefficients(s, max_order)
    return run_linear_multistep(denoise_fn, x, s, a, b, model="d", afs=bool(afs), afs_mean=mean)
