"""Shared pieces of the sampler suite: the σ grids, argument checks, NFE counting, the linear-multistep
runner, and the Gaussian-data oracle (exact denoiser and exact ODE solution) the tests prove against.

Conventions (STYLE.md §4). Every sampler integrates the probability-flow ODE of the EDM (variance-exploding)
parameterisation, x_σ = x₀ + σ·ε,

    dx/dσ = (x − D(x, σ)) / σ,

where `denoise_fn(x, σ) = D(x, σ)` returns the x₀ estimate (Karras et al. 2022); σ is a scalar or a [b]
array with one level per row (AMED's learned intermediate times differ per row). A VP model with the blog's
ᾱ_t, β̄_t (DDPM article 9152; ᾱ is a *standard deviation*, not the paper's cumulative variance) maps to this
with x_VE = x_VP/ᾱ_t and σ = β̄_t/ᾱ_t. In the AMED article (9881) the same ODE is written dx_t/dt = v_θ(x_t, t)
with t ≡ σ and v_θ = (x − D)/σ, the grid runs 0 = t₀ < … < t_N = T and the sampler walks it downwards; here
`sigmas` is that grid in sampling order (decreasing), `sigmas[0]` = t_N = σ_max, and it may end at 0.

`sigmas` is a static schedule: it is converted with NumPy, validated eagerly, and every step coefficient is
computed in float64 before tracing; close over it (or pass it as a NumPy array) when jitting a sampler.

References:
    https://kexue.fm/archives/9881 (AMED and the ODE view of sampling)
    https://kexue.fm/archives/9152 (DDPM in the blog's notation)
    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM).
    Lu et al. 2022, "DPM-Solver" / "DPM-Solver++"; Zhang & Chen 2022, "DEIS" (iPNDM);
    Zhao et al. 2023, "UniPC"; Zhou et al. 2023, "Fast ODE-based Sampling for Diffusion Models in Around 5
    Steps" (AMED).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "edm_sigmas", "logsnr_sigmas", "time_uniform_sigmas", "refine_sigmas", "nfe",
    "afs_direction", "check_afs_mean", "gaussian_denoiser", "gaussian_ode_solution", "mixture_denoiser",
]

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------- grids
# The σ grids live with the schedules (one home, as the issue specifies); re-exported here for samplers.
from kexue_jax.diffusion.schedules import edm_sigmas, logsnr_sigmas, time_uniform_sigmas  # noqa: E402,F401

def refine_sigmas(sigmas, inserted: int, rho: float | None = 7.0) -> np.ndarray:
    """Inserts `inserted` (M) points into every interval of `sigmas`, as the AMED teacher grid does.

    Interpolation is linear in σ^{1/ρ} (so an EDM grid of ρ refines to the EDM grid with (M+1)(N−1)+1 points
    exactly, nested) or in log σ when rho is None (a log-SNR grid refines to a log-SNR grid).

    Returns: float64 [(M+1)·(len(sigmas)−1) + 1]; element (M+1)·i equals sigmas[i].
    """
    s = validate_sigmas(sigmas, allow_zero_end=rho is not None)
    if isinstance(inserted, bool) or not isinstance(inserted, (int, np.integer)) or inserted < 0:
        raise ValueError(f"`inserted` must be a non-negative integer; got {inserted!r}")
    u = np.linspace(0.0, 1.0, inserted + 2)[:-1]
    if rho is None:
        a, b = np.log(s[:-1]), np.log(s[1:])
        fine = np.exp(a[:, None] + u[None, :] * (b - a)[:, None])
    else:
        a, b = s[:-1] ** (1 / rho), s[1:] ** (1 / rho)
        fine = (a[:, None] + u[None, :] * (b - a)[:, None]) ** rho
    out = np.concatenate([fine.reshape(-1), s[-1:]])
    out[:: inserted + 1] = s  # exact nesting, no round-off drift at the student points
    return out


# ---------------------------------------------------------------------------------------- validation
def validate_sigmas(sigmas, *, min_steps: int = 1, allow_zero_end: bool = True) -> np.ndarray:
    """Eager check of a sampling grid; returns it as float64 NumPy [n]."""
    if isinstance(sigmas, jax.core.Tracer):
        raise ValueError("`sigmas` must be a concrete (static) array, closed over or passed as NumPy when "
                         f"jitting; got a tracer {sigmas}")
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] < min_steps + 1:
        raise ValueError(f"`sigmas` must be 1-D with at least {min_steps + 1} points ({min_steps} step"
                         f"{'s' if min_steps > 1 else ''} for this sampler); got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"`sigmas` must be finite; got {s}")
    if not np.all(np.diff(s) < 0):
        raise ValueError(f"`sigmas` must be strictly decreasing (sampling runs from sigma_max down); got {s}")
    if allow_zero_end:
        if not (s[-1] >= 0 and np.all(s[:-1] > 0)):
            raise ValueError(f"`sigmas` must be positive (only the last may be 0); got {s}")
    elif not s[-1] > 0:
        raise ValueError(f"`sigmas` must be positive for this sampler (its last point may not be 0); got {s}")
    return s


def validate_x(x_T) -> jax.Array:
    if not isinstance(x_T, (jax.Array, np.ndarray)) or np.ndim(x_T) < 1:
        raise ValueError(f"`x_T` must be an array [b, ...] with a leading batch axis; got {type(x_T).__name__} "
                         f"of shape {np.shape(x_T)}")
    x = jnp.asarray(x_T)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`x_T` must have a floating dtype; got {x.dtype}")
    return x


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}; got {value!r}")


def check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"`{name}` must be an integer in [{lo}, {hi}]; got {value!r}")
    return int(value)


def check_callable(name: str, value) -> None:
    if not callable(value):
        raise ValueError(f"`{name}` must be callable; got {type(value).__name__}")


def row_keys(key, batch: int) -> jax.Array:
    """Per-row keys so a row's noise depends only on (key, row) or on its own key, not on the batch.

    Accepts one key (rows get fold_in(key, row)) or a batch of keys [b] (used as they are).
    """
    if key is None:
        raise ValueError("`key` must be a jax.random key for a stochastic sampler; got None")
    key = jnp.asarray(key)
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    single = key.shape == () if typed else key.shape == (2,)
    if single:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
    if key.shape[:1] != (batch,):
        raise ValueError(f"`key` must be one key or a batch of {batch} keys; got shape {key.shape}")
    return key


def row_normal(keys: jax.Array, step, shape, dtype) -> jax.Array:
    """N(0, I) noise [b, *shape] for one step; row i uses fold_in(keys[i], step)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape, dtype))(keys)


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """[b] -> [b, 1, ..., 1] to scale x row-wise (explicit, rank promotion raises)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


# ------------------------------------------------------------------------------------------------ NFE
def nfe(sampler: Callable, sigmas, **opts) -> int:
    """Number of denoiser evaluations `sampler` makes on `sigmas` with options `opts` (AFS counted as 0)."""
    count = getattr(sampler, "count_nfe", None)
    if count is None:
        raise ValueError(f"`sampler` must be one of the kexue_jax.samplers.sample_* functions; got {sampler!r}")
    return int(count(validate_sigmas(sigmas), **opts))


def counts_nfe(count: Callable):
    """Attaches an NFE counter `count(sigmas, **opts) -> int` to a sampler (read by `nfe`)."""
    def wrap(fn):
        fn.count_nfe = count
        return fn
    return wrap


# ------------------------------------------------------------------------------------- AFS and oracle
def afs_direction(x: jax.Array, sigma, mean: jax.Array | None = None) -> jax.Array:
    """The analytical first step (GENIE/AMED): d = x/√(1 + σ²) in place of (x − D(x, σ))/σ.

    At σ_max the data term of x is negligible, D ≈ 0 for zero-mean unit-scale data, so the exact slope
    x·σ/(1 + σ²) tends to x/√(1 + σ²) (relative gap 1 − σ/√(1 + σ²) ~ 1/(2σ²)). Saves one NFE.

    mean: None (the paper's AFS) or the data mean μ, shape [1, ...] broadcastable to x (see `check_afs_mean`):
    d = (x − μ)/√(1 + σ²). Ours, not the paper's: for data of mean μ, D(x, σ) → μ as σ grows, so the paper's
    slope is off by μ/σ, which matters for data far from zero-mean (mnist in [−1, 1] has mean −0.73).

    References:
        https://kexue.fm/archives/9881; Dockhorn et al. 2022 (GENIE); Zhou et al. 2023 (AMED), code `afs`.
    """
    x_c = x if mean is None else x - mean
    return x_c / jnp.sqrt(1 + jnp.asarray(sigma, x.dtype) ** 2)


def check_afs_mean(afs_mean, afs: bool, x: jax.Array) -> jax.Array | None:
    """Validates a sampler's `afs_mean` before anything compiles; returns None or μ as [1, *x.shape[1:]].

    afs_mean: None (the paper's zero-mean AFS), a number, or an array of shape x.shape[1:] (one example, e.g.
    the per-pixel data mean) or any shape broadcastable to it; finite. Only meaningful with afs=True.
    """
    if afs_mean is None:
        return None
    if not afs:
        raise ValueError("`afs_mean` is the data mean used by the analytical first step; it needs afs=True, "
                         f"got afs={afs!r} with afs_mean given")
    if isinstance(afs_mean, bool):
        raise ValueError(f"`afs_mean` must be None, a number or an array broadcastable to {x.shape[1:]}; "
                         f"got {afs_mean!r}")
    shape = tuple(np.shape(afs_mean))
    try:
        ok = len(shape) <= x.ndim - 1 and np.broadcast_shapes(shape, x.shape[1:]) == tuple(x.shape[1:])
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"`afs_mean` must be a number or an array broadcastable to one example's shape "
                         f"{tuple(x.shape[1:])}; got shape {shape}")
    if not isinstance(afs_mean, jax.core.Tracer):
        values = np.asarray(afs_mean)
        if values.dtype.kind not in "biuf" or not np.all(np.isfinite(values)):
            raise ValueError(f"`afs_mean` must hold finite real numbers; got {afs_mean!r}")
    return jnp.broadcast_to(jnp.asarray(afs_mean, x.dtype), x.shape[1:])[None]


def gaussian_denoiser(mu: jax.Array, s) -> DenoiseFn:
    """Exact D(x, σ) = (s²x + σ²μ)/(s² + σ²) for data N(μ, s²I) (μ [d] or scalar broadcast over [b, d])."""
    def denoise(x, sigma):
        s2 = jnp.asarray(s, x.dtype) ** 2
        sig2 = bcast(jnp.asarray(sigma, x.dtype), x) ** 2
        return (s2 * x + sig2 * jnp.broadcast_to(mu, x.shape).astype(x.dtype)) / (s2 + sig2)
    return denoise


def gaussian_ode_solution(x, mu, s, sigma_from, sigma_to):
    """Exact PF-ODE flow for N(μ, s²I) data: x(σ') = μ + (x − μ)·√((s² + σ'²)/(s² + σ²)) (a straight line)."""
    mu = jnp.broadcast_to(jnp.asarray(mu, x.dtype), x.shape)
    return mu + (x - mu) * jnp.sqrt((s ** 2 + sigma_to ** 2) / (s ** 2 + sigma_from ** 2))


def mixture_denoiser(centres: jax.Array, std) -> DenoiseFn:
    """Exact D(x, σ) for an equal-weight mixture of N(c_k, std²I): posterior-weighted component means.

    Component k given x_σ: responsibility w_k ∝ N(x; c_k, (std² + σ²)I), and E[x₀|x, k] is the Gaussian
    denoiser of that component. centres: [K, d]; x: [b, d].
    """
    def denoise(x, sigma):
        c = jnp.asarray(centres, x.dtype)
        sig2 = jnp.broadcast_to(jnp.asarray(sigma, x.dtype) ** 2, x.shape[:1])[:, None]  # [b, 1]
        v = jnp.asarray(std, x.dtype) ** 2 + sig2  # [b, 1]
        sq = jnp.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1)  # [b, K]
        w = jax.nn.softmax(-0.5 * sq / v, axis=-1)  # [b, K]
        mean_k = (std ** 2 * x[:, None, :] + sig2[:, :, None] * c[None, :, :]) / v[:, :, None]  # [b, K, d]
        return jnp.einsum("bk,bkd->bd", w, mean_k)
    return denoise


def scan_steps(step, x, n: int, *, peel_first: bool = False, peel_last: bool = False):
    """Runs step(x, i, first, last) for i = 0..n−1; steps flagged static (AFS first, σ = 0 last) are traced
    separately so the scanned body has no branch on the step index."""
    lo, hi = int(peel_first), n - int(peel_last)
    if peel_first:
        x = step(x, 0, True, n == 1 and peel_last)
    if hi > lo:
        x, _ = jax.lax.scan(lambda c, i: (step(c, i, False, False), None), x, jnp.arange(lo, hi))
    if peel_last and not (peel_first and n == 1):
        x = step(x, n - 1, False, True)
    return x


# ------------------------------------------------------------------------------ linear multistep runner
def run_linear_multistep(denoise_fn: DenoiseFn, x: jax.Array, sigmas: np.ndarray, a: np.ndarray,
                         b: np.ndarray, *, model: str, afs: bool, afs_mean: jax.Array | None = None,
                         return_trajectory: bool = False) -> jax.Array:
    """x_{i+1} = a_i·x_i + Σ_k b_{i,k}·m_{i−k}, m = D (model='x0') or d = (x − D)/σ (model='d').

    One denoiser call per step (none on step 0 with AFS, whose data mean is afs_mean, see `afs_direction`).
    The history [K, ...] holds m_i, m_{i−1}, ...; a: [N], b: [N, K] float64, cast to x's dtype.
    Returns x_N, or with return_trajectory every state [N, b, ...] (element i is x_{i+1}).
    """
    n, k = b.shape
    dt = x.dtype
    a_j, b_j, s_j = jnp.asarray(a, dt), jnp.asarray(b, dt), jnp.asarray(sigmas[:-1], dt)

    def model_out(x, sigma, first_afs):
        if first_afs:
            d = afs_direction(x, sigma, afs_mean)
            return d if model == "d" else x - sigma * d
        den = denoise_fn(x, sigma)
        return (x - den) / sigma if model == "d" else den

    def update(x, hist, i):
        mix = jnp.tensordot(b_j[i], hist, axes=1)  # [K] · [K, *x] -> [*x]
        return a_j[i] * x + mix

    def push(hist, m):
        return jnp.concatenate([m[None], hist[:-1]], axis=0)

    hist = jnp.zeros((k,) + x.shape, dt)
    start, first = 0, []
    if afs:
        hist = push(hist, model_out(x, s_j[0], True))
        x = update(x, hist, 0)
        start, first = 1, [x[None]]

    def body(carry, i):
        x, hist = carry
        hist = push(hist, model_out(x, s_j[i], False))
        x = update(x, hist, i)
        return (x, hist), (x if return_trajectory else None)

    (x, _), traj = jax.lax.scan(body, (x, hist), jnp.arange(start, n))
    return jnp.concatenate(first + [traj], axis=0) if return_trajectory else x
