"""DDPM ancestral sampling (blog article 9152) written on the EDM σ grid.

The blog's step, with its ᾱ_t, β̄_t (standard deviations: ᾱ_t² + β̄_t² = 1) and α_t² + β_t² = 1:

    x_{t−1} = (x_t − (β_t²/β̄_t)·ε_θ(x_t, t))/α_t + σ_t·z.

With x_VE = x/ᾱ_t, σ = β̄_t/ᾱ_t, ε = (x_VE − D)/σ this is, from σ to the next σ' < σ,

    x' = D + (σ'²/σ²)(x − D) + std·z,
    std² = (σ² − σ'²)(1 + σ'²)/(1 + σ²)   for σ_t = β_t            (`variance='beta'`, data ~ N(0, I) optimum),
    std  = σ'·√(σ² − σ'²)/σ              for σ_t = β̄_{t−1}β_t/β̄_t  (`variance='posterior'`, single-point optimum).

(β_t² = (σ² − σ'²)/(1 + σ²) and β̄_{t−1}/ᾱ_{t−1} = σ', 1/ᾱ_{t−1} = √(1 + σ'²).) The mean is the posterior
mean of x_{σ'} given x_σ and x₀ = D. With the article's schedule, pass σ_t = β̄_t/ᾱ_t for t = T … 1 followed by 0
and x_T = z/ᾱ_T to reproduce the 1000-step sampler exactly.

References:
    https://kexue.fm/archives/9152 (生成扩散模型漫谈（二）：DDPM = 自回归式VAE)
    Ho, Jain & Abbeel 2020 (DDPM); Karras et al. 2022 (EDM) for the σ parameterisation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.samplers.common import (check_choice, counts_nfe, row_keys, row_normal, validate_sigmas,
                                       validate_x)

__all__ = ["ORDER", "VARIANCES", "sample_ddpm", "ddpm_step_std"]

# Weak order of the ancestral (Euler–Maruyama-like) discretisation; it is checked through the sample
# statistics (tests/samplers/test_order.py), not through a pathwise slope.
ORDER = 1
VARIANCES = ("beta", "posterior")


def ddpm_step_std(sigma, sigma_next, variance: str):
    """The noise std of one ancestral step from σ to σ' (formulas in the module docstring)."""
    check_choice("variance", variance, VARIANCES)
    if variance == "beta":
        return np.sqrt((sigma ** 2 - sigma_next ** 2) * (1 + sigma_next ** 2) / (1 + sigma ** 2))
    return sigma_next * np.sqrt(sigma ** 2 - sigma_next ** 2) / sigma


def _nfe(sigmas, **_):
    return len(sigmas) - 1


@counts_nfe(_nfe)
def sample_ddpm(denoise_fn, x_T: jax.Array, sigmas, *, key=None, variance: str = "beta") -> jax.Array:
    """Ancestral DDPM sampling along `sigmas`.

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...].
        x_T: [b, ...] at sigmas[0] (for the VP prior N(0, I): z·√(1 + σ_max²)).
        sigmas: [N+1] decreasing, may end at 0.
        key: one key (row i uses fold_in(key, i), so a row's noise does not depend on the batch) or [b] keys.
        variance: 'beta' (σ_t = β_t) or 'posterior' (σ_t = β̄_{t−1}β_t/β̄_t).
    Returns:
        [b, ...]. NFE = N.
    """
    check_choice("variance", variance, VARIANCES)
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    keys = row_keys(key, x.shape[0])
    dt = x.dtype
    ratio = jnp.asarray(s[1:] ** 2 / s[:-1] ** 2, dt)
    std = jnp.asarray(ddpm_step_std(s[:-1], s[1:], variance), dt)
    sig = jnp.asarray(s[:-1], dt)

    def body(x, i):
        den = denoise_fn(x, sig[i])
        x = den + ratio[i] * (x - den) + std[i] * row_normal(keys, i, x.shape[1:], dt)
        return x, None

    x, _ = jax.lax.scan(body, x, jnp.arange(len(s) - 1))
    return x
