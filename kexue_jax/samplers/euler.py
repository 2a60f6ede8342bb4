"""Euler's method on the PF-ODE, which is DDIM (η = 0) in the EDM parameterisation.

In the article's notation (t ≡ σ, v_θ = (x − D)/σ): x_{t_n} ≈ x_{t_{n+1}} − v_θ(x_{t_{n+1}}, t_{n+1})(t_{n+1} − t_n).
Equivalently x_{i+1} = (σ_{i+1}/σ_i)·x_i + (1 − σ_{i+1}/σ_i)·D(x_i, σ_i), the DDIM update (and DPM-Solver-1);
a last step to σ = 0 returns D(x, σ) exactly.

References:
    https://kexue.fm/archives/9881 (欧拉方法)
    Song, Meng & Ermon 2021 (DDIM); Karras et al. 2022 (EDM), Algorithm 1 without the correction.
"""
from __future__ import annotations

import jax
import numpy as np

from kexue_jax.samplers.common import check_afs_mean, counts_nfe, run_linear_multistep, validate_sigmas, validate_x

__all__ = ["ORDER", "sample_euler", "sample_ddim"]

ORDER = 1


def _nfe(sigmas, *, afs=False, **_):
    return len(sigmas) - 1 - int(bool(afs))


@counts_nfe(_nfe)
def sample_euler(denoise_fn, x_T: jax.Array, sigmas, *, key=None, afs: bool = False, afs_mean=None) -> jax.Array:
    """Euler/DDIM sampling of dx/dσ = (x − D(x, σ))/σ along `sigmas`.

    Args:
        denoise_fn: D(x [b, ...], σ scalar) -> x₀ estimate [b, ...].
        x_T: [b, ...] the start, already scaled to σ_max (x_T = σ_max·z for the VE process).
        sigmas: [N+1] decreasing grid; may end at 0.
        key: unused (deterministic sampler); accepted for the common signature.
        afs: replace the first slope by the analytical x/√(1 + σ²) (saves one NFE).
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...] the sample at sigmas[-1]. NFE = N (N − 1 with AFS).
    """
    del key
    s = validate_sigmas(sigmas)
    x = validate_x(x_T)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    a = np.ones(len(s) - 1)
    b = (s[1:] - s[:-1])[:, None]
    return run_linear_multistep(denoise_fn, x, s, a, b, model="d", afs=bool(afs), afs_mean=mean)


sample_ddim = sample_euler
