"""EDM's Heun sampler (2nd order), with optional stochastic churn (Karras et al. 2022, Algorithm 2).

Article form (t ≡ σ, v = (x − D)/σ): x̃ = x_{t_{n+1}} − v(x_{t_{n+1}}, t_{n+1})Δt, then
x_{t_n} ≈ x_{t_{n+1}} − ½[v(x̃, t_n) + v(x_{t_{n+1}}, t_{n+1})]Δt. A last step to σ = 0 is a plain Euler step
(EDM; the correction would divide by σ = 0). With churn, each step first raises the noise level to
σ̂ = σ_i(1 + γ_i), γ_i = min(S_churn/N, √2 − 1) for σ_i ∈ [S_min, S_max], adding √(σ̂² − σ_i²)·S_noise·z.

References:
    https://kexue.fm/archives/9881 (高阶方法, Heun)
    Karras et al. 2022 (EDM), Algorithms 1 and 2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.samplers.common import (afs_direction, check_afs_mean, counts_nfe, row_keys, row_normal, scan_steps,
                                       validate_sigmas, validate_x)

__all__ = ["ORDER", "sample_heun"]

ORDER = 2


def _nfe(sigmas, *, afs=False, **_):
    n = len(sigmas) - 1
    return 2 * n - int(sigmas[-1] == 0) - int(bool(afs))


def _check_churn(s_churn, s_min, s_max, s_noise):
    for name, v in (("s_churn", s_churn), ("s_min", s_min), ("s_noise", s_noise)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"`{name}` must be a finite number >= 0; got {v!r}")
    if not s_max >= s_min:
        raise ValueError(f"`s_max` must be >= s_min; got {s_max!r} < {s_min!r}")


@counts_nfe(_nfe)
def sample_heun(denoise_fn, x_T: jax.Array, sigmas, *, key=None, afs: bool = False, s_churn: float = 0.0,
                s_min: float = 0.0, s_max: float = float("inf"), s_noise: float = 1.0,
                afs_mean=None) -> jax.Array:
    """Heun (trapezoidal predictor–corrector) sampling of dx/dσ = (x − D(x, σ))/σ.

    Args:
        denoise_fn: D(x [b, ...], σ) -> [b, ...].
        x_T: [b, ...] at sigmas[0].
        sigmas: [N+1] decreasing; may end at 0 (that step is Euler).
        key: required when s_churn > 0: one key (row i uses fold_in(key, i)) or a batch [b] of keys.
        afs: analytical first slope x/√(1 + σ²) (saves one NFE).
        s_churn, s_min, s_max, s_noise: EDM's stochasticity (s_churn = 0: deterministic ODE solver).
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = 2N − [σ_N = 0] − [afs].
    """
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    _check_churn(s_churn, s_min, s_max, s_noise)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    n = len(s) - 1
    gamma = np.where((s[:-1] >= s_min) & (s[:-1] <= s_max), min(s_churn / n, np.sqrt(2) - 1), 0.0)
    stochastic = s_churn > 0
    keys = row_keys(key, x.shape[0]) if stochastic else None
    dt = x.dtype
    sig = jnp.asarray(s, dt)
    sig_hat = jnp.asarray(s[:-1] * (1 + gamma), dt)
    up = jnp.asarray(np.sqrt(np.maximum((s[:-1] * (1 + gamma)) ** 2 - s[:-1] ** 2, 0.0)) * s_noise, dt)

    def step(x, i, first_afs, last_euler):
        sh, sn = sig_hat[i], sig[i + 1]
        if stochastic:
            x = x + up[i] * row_normal(keys, i, x.shape[1:], dt)
        d = afs_direction(x, sh, mean) if first_afs else (x - denoise_fn(x, sh)) / sh
        x_pred = x + (sn - sh) * d
        if last_euler:
            return x_pred
        d_next = (x_pred - denoise_fn(x_pred, sn)) / sn
        return x + (sn - sh) * 0.5 * (d + d_next)

    return scan_steps(step, x, n, peel_first=bool(afs), peel_last=bool(s[-1] == 0))
