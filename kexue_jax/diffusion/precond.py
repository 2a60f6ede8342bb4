"""Denoiser parameterisations: EDM preconditioning and conversions between ε-, x₀-, v- and score-networks.

Everything is written in EDM coordinates: a noisy point is x = x₀ + σ n (n ~ N(0, I)), and a denoiser
D(x, σ) ≈ E[x₀ | x] is what the samplers in `kexue_jax.samplers` integrate (probability-flow ODE
dx/dσ = (x − D(x, σ))/σ). The blog's DDPM state x_t = ᾱ_t x₀ + β̄_t ε is the same point scaled by ᾱ_t:
x = x_t/ᾱ_t, σ = β̄_t/ᾱ_t, and conversely ᾱ = 1/√(1 + σ²), β̄ = σ/√(1 + σ²) ("VP" input scaling).

Parameterisations of a network f(x_in, σ) and their denoiser (x_in = x, or ᾱx with `vp_input=True`):
    'x0'     D = f
    'eps'    D = x − σ f                      (f ≈ ε, the noise; the blog's ε_θ)
    'v'      D = ᾱ² x − β̄ f = ᾱ x_in − β̄ f   (f ≈ v = ᾱ ε − β̄ x₀, Salimans & Ho; needs the VP scaling)
    'score'  D = x + σ² f                     (f ≈ ∇_x log p_σ(x), Tweedie)
EDM's preconditioned denoiser: D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ)) with
c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ.

References:
  https://kexue.fm/archives/9152 (and https://kexue.fm/archives/9881 for the ODE view);
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", arXiv:2206.00364
  (2022), Table 1 and Appendix B.6; Salimans & Ho, "Progressive Distillation", arXiv:2202.00512 (v-prediction).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.diffusion.schedules import DDPMSchedule, vp_sigmas

__all__ = ["PARAMETERIZATIONS", "edm_preconditioning", "edm_denoiser", "to_denoiser", "from_denoiser",
           "ddpm_denoiser", "round_sigma", "edm_loss", "edm_loss_weight"]

PARAMETERIZATIONS = ("eps", "x0", "v", "score")


def _check_param(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"`parameterization` must be one of {list(PARAMETERIZATIONS)}; got {parameterization!r}")


def _check_sigma_data(sigma_data) -> None:
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not sigma_data > 0:
        raise ValueError(f"`sigma_data` must be a float > 0; got {sigma_data!r}")


def _per_example(sigma: jax.Array, x: jax.Array) -> jax.Array:
    """σ as a scalar or [b] vector, reshaped to broadcast against x [b, ...] (rank promotion is off)."""
    sigma = jnp.asarray(sigma, x.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.shape != x.shape[:1]:
        raise ValueError(f"`sigma` must be a scalar or have shape [b] = {x.shape[:1]}; got {sigma.shape}")
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))


def _batch_sigma(sigma: jax.Array, x: jax.Array) -> jax.Array:
    """σ as a [b] vector (what networks take)."""
    sigma = jnp.asarray(sigma, x.dtype)
    return jnp.broadcast_to(sigma, x.shape[:1]) if sigma.ndim == 0 else sigma


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level σ (any shape; elementwise).

    c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ. They make
    the network's input and training target unit-variance for data of std σ_d (Karras et al. B.6).

    References:
      https://kexue.fm/archives/9881 ; Karras et al. 2022 (arXiv:2206.00364), Table 1.
    """
    _check_sigma_data(sigma_data)
    sigma = jnp.asarray(sigma)
    total = sigma ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / total
    c_out = sigma * sigma_data * jax.lax.rsqrt(total)
    c_in = jax.lax.rsqrt(total)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma, sigma_data: float = 0.5):
    """λ(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out²: makes the effective training target of F unit-weighted."""
    _check_sigma_data(sigma_data)
    sigma = jnp.asarray(sigma)
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def edm_denoiser(net_fn: Callable[[jax.Array, jax.Array], jax.Array], sigma_data: float = 0.5
                 ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """D(x, σ) = c_skip x + c_out F(c_in x, c_noise) for a raw network F(x_in [b, ...], c_noise [b]).

    Args:
      net_fn: F, called with the scaled input and the noise label c_noise = ¼ ln σ as a [b] vector.
      sigma_data: σ_d, the data standard deviation (0.5 in EDM).
    Returns:
      denoise_fn(x [b, ...], sigma scalar or [b]) -> x₀ estimate [b, ...].

    References:
      https://kexue.fm/archives/9881 ; Karras et al. 2022 (arXiv:2206.00364), eq. 7.
    """
    _check_sigma_data(sigma_data)

    def denoise(x, sigma):
        c_skip, c_out, c_in, c_noise = edm_preconditioning(_batch_sigma(sigma, x), sigma_data)
        e = lambda c: c.reshape(c.shape + (1,) * (x.ndim - 1))  # [b] -> [b, 1, ...]
        return e(c_skip) * x + e(c_out) * net_fn(e(c_in) * x, c_noise)

    return denoise


def to_denoiser(net_fn: Callable[[jax.Array, jax.Array], jax.Array], parameterization: str, *,
                vp_input: bool = False) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The EDM denoiser D(x, σ) of a network predicting ε, x₀, v or the score.

    Args:
      net_fn: f(x_in [b, ...], sigma [b]) -> prediction [b, ...].
      parameterization: 'eps' (D = x − σ f), 'x0' (D = f), 'v' (D = ᾱ x_in − β̄ f) or 'score' (D = x + σ² f).
      vp_input: feed the network x_in = ᾱ x = x/√(1 + σ²) (the DDPM state x_t) instead of x; required for 'v'.
    Returns:
      denoise_fn(x [b, ...], sigma scalar or [b]) -> [b, ...].

    References:
      https://kexue.fm/archives/9152 ; Karras et al. 2022 (arXiv:2206.00364), Table 1; Salimans & Ho 2022
      (arXiv:2202.00512), §4 (v).
    """
    _check_param(parameterization)
    if parameterization == "v" and not vp_input:
        raise ValueError("`vp_input` must be True for parameterization 'v' (v is defined on the VP state); "
                         "got False")

    def denoise(x, sigma):
        s = _per_example(sigma, x)
        bar_alpha = jax.lax.rsqrt(1.0 + s ** 2)
        x_in = bar_alpha * x if vp_input else x
        f = net_fn(x_in, _batch_sigma(sigma, x))
        if parameterization == "x0":
            return f
        if parameterization == "eps":
            return x - s * f
        if parameterization == "score":
            return x + s ** 2 * f
        return bar_alpha * x_in - (s * bar_alpha) * f

    return denoise


def from_denoiser(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], parameterization: str
                  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The inverse of `to_denoiser` (EDM coordinates x): a function (x, σ) -> ε, x₀, v or score from D.

    ε = (x − D)/σ, score = (D − x)/σ², v = ᾱ ε − β̄ D with ᾱ = 1/√(1 + σ²), β̄ = σ ᾱ (σ > 0).
    """
    _check_param(parameterization)

    def predict(x, sigma):
        s = _per_example(sigma, x)
        d = denoise_fn(x, sigma)
        if parameterization == "x0":
            return d
        if parameterization == "eps":
            return (x - d) / s
        if parameterization == "score":
            return (d - x) / s ** 2
        bar_alpha = jax.lax.rsqrt(1.0 + s ** 2)
        return bar_alpha * (x - d) / s - s * bar_alpha * d

    return predict


def round_sigma(sigma, schedule: DDPMSchedule) -> tuple[jax.Array, jax.Array]:
    """The grid noise level of a discrete-time DDPM nearest to σ in log σ, and its step t (1..T).

    A network trained on the article's integer steps is only defined at σ_t = β̄_t/ᾱ_t; like EDM's
    wrapper for DDPM checkpoints, samplers should run on rounded grids (round the σ grid first, then the
    denoiser sees exactly the σ it integrates).

    Returns:
      (σ_t, t) with the shapes of `sigma`; t is int32.
    """
    grid = jnp.asarray(vp_sigmas(schedule)[1:], jnp.float32)  # [T], increasing
    log_grid = jnp.log(grid)
    log_sigma = jnp.log(jnp.asarray(sigma, jnp.float32))
    idx = jnp.argmin(jnp.abs(log_sigma[..., None] - log_grid.reshape((1,) * log_sigma.ndim + (-1,))),
                     axis=-1)  # [...]
    return grid[idx], (idx + 1).astype(jnp.int32)


def ddpm_denoiser(eps_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: DDPMSchedule
                  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """D(x, σ) of the article's discrete ε-network ε_θ(x_t, t): D = x − σ_t ε_θ(ᾱ_t x, t), t = nearest step.

    Args:
      eps_fn: ε_θ(x_t [b, ...], t int32 [b]) with x_t = ᾱ_t x₀ + β̄_t ε (the blog's DDPM state).
      schedule: the DDPMSchedule it was trained with.
    Returns:
      denoise_fn(x, sigma scalar or [b]) in EDM coordinates x = x_t/ᾱ_t.

    References:
      https://kexue.fm/archives/9152 ; Karras et al. 2022 (arXiv:2206.00364), Appendix C.3.4 (iDDPM wrapper).
    """
    if not isinstance(schedule, DDPMSchedule):
        raise ValueError(f"`schedule` must be a DDPMSchedule; got {type(schedule).__name__}")
    bar_alpha_grid = jnp.asarray(schedule.bar_alpha, jnp.float32)

    def denoise(x, sigma):
        sig, t = round_sigma(_batch_sigma(sigma, x), schedule)  # [b], [b]
        e = lambda c: c.reshape(c.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
        return x - e(sig) * eps_fn(e(bar_alpha_grid[t]) * x, t)

    return denoise


def edm_loss(model, batch, *, key: jax.Array, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
             levels: int | None = None, data_key: str | None = None):
    """EDM training loss: E λ(σ) ‖D(x₀ + σ n, σ) − x₀‖², ln σ ~ N(P_mean, P_std²), summed over dimensions.

    The per-example sum (not the mean) follows the blog's experience with DDPM (a mean made the losses tiny)
    and equals EDM's `loss.sum()/batch`. `model(x_in, c_noise)` is the raw network F of `edm_denoiser`.

    Args:
      model: NNX module F(x_in [b, ...], c_noise [b]) -> [b, ...].
      batch: {'image': uint8 [b, h, w, c]} (dequantised to [−1, 1] with `levels` grey levels) or {'x': [b, d]}.
      key: this step's key; split into (dequantisation, σ, noise).
      sigma_data, p_mean, p_std: EDM's σ_d = 0.5, P_mean = −1.2, P_std = 1.2.
      levels, data_key: see `kexue_jax.diffusion.ddpm.prepare_batch`.
    Returns:
      (mean over the batch of the per-example weighted sum, {'mse_per_dim': unweighted mean squared error}).

    References:
      https://kexue.fm/archives/9881 ; Karras et al. 2022 (arXiv:2206.00364), eq. 8 and Table 1.
    """
    from kexue_jax.diffusion.ddpm import prepare_batch

    _check_sigma_data(sigma_data)
    if isinstance(p_std, bool) or not isinstance(p_std, (int, float)) or not p_std > 0:
        raise ValueError(f"`p_std` must be a float > 0; got {p_std!r}")
    key_data, key_sigma, key_noise = jax.random.split(key, 3)
    x0 = prepare_batch(batch, key=key_data, levels=levels, data_key=data_key)
    b = x0.shape[0]
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(key_sigma, (b,), x0.dtype))  # [b]
    noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
    denoise = edm_denoiser(model, sigma_data)
    e = lambda c: c.reshape(c.shape + (1,) * (x0.ndim - 1))
    d = denoise(x0 + e(sigma) * noise, sigma)
    sq = jnp.sum(((d - x0) ** 2).reshape(b, -1), axis=-1)  # [b]
    loss = jnp.mean(edm_loss_weight(sigma, sigma_data) * sq)
    return loss, {"mse_per_dim": jnp.mean(sq) / np.prod(x0.shape[1:])}
