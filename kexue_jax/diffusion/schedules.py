"""Noise schedules as pure functions: the article's DDPM schedule, linear/cosine variances, EDM grids.

Notation (kexue.fm/archives/9152, "DDPM = 自回归式VAE"). The blog writes the forward ("encoder") step as
p(x_t|x_{t-1}) = N(α_t x_{t-1}, β_t² I) with α_t² + β_t² = 1, hence p(x_t|x_0) = N(ᾱ_t x_0, β̄_t² I) with
ᾱ_t = α_1⋯α_t and β̄_t = √(1 − ᾱ_t²). Every α, β here is a STANDARD DEVIATION-like factor: the blog's
α_t, β_t, ᾱ_t, β̄_t are the square roots of Ho et al.'s (α_t, β_t, ᾱ_t, 1 − ᾱ_t):

    blog (this module)        Ho et al. 2020            Karras et al. 2022 (EDM, VP)
    alpha[t]²                 α_t = 1 − β_t             —
    beta[t]²                  β_t (the variance)        —
    bar_alpha[t]              √ᾱ_t                      s(t) = 1/√(1 + σ²)
    bar_beta[t]               √(1 − ᾱ_t)                s(t)·σ(t)
    bar_beta[t]/bar_alpha[t]  √((1 − ᾱ_t)/ᾱ_t)          σ(t)

A `DDPMSchedule` holds arrays of length T + 1 indexed by the article's integer time t = 0..T, with the
conventions alpha[0] = bar_alpha[0] = 1 and beta[0] = bar_beta[0] = 0 (no noise at t = 0), so that code reads
`bar_alpha[t]` exactly as the article does.

Continuous grids of σ for ODE samplers (EDM coordinates x = x_VP/ᾱ, D(x, σ) the x₀ estimate):
`edm_sigmas` (Karras' ρ-polynomial), `logsnr_sigmas` (uniform in log σ = −½ logSNR) and `time_uniform_sigmas`
(uniform in the time of the VP-SDE whose endpoints are σ_max and σ_min, as in zju-pi/diff-sampler).

References:
  https://kexue.fm/archives/9152 ; Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models",
  arXiv:2006.11239 (2020); Nichol & Dhariwal, "Improved DDPM", arXiv:2102.09672 (2021) (cosine schedule);
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", arXiv:2206.00364 (2022).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["DDPMSchedule", "schedule_from_variances", "article_schedule", "linear_schedule", "cosine_schedule",
           "make_schedule", "SCHEDULES", "vp_sigmas", "edm_sigmas", "logsnr_sigmas", "time_uniform_sigmas",
           "sigma_grid", "GRIDS"]

SCHEDULES = ("article", "linear", "cosine")
GRIDS = ("polynomial", "logsnr", "time_uniform")


class DDPMSchedule(NamedTuple):
    """The article's discrete schedule, every array float64 [T + 1] indexed by t = 0..T."""

    alpha: np.ndarray  # α_t = √(1 − β_t²), α_0 = 1
    beta: np.ndarray  # β_t, the std of the noise added at step t; β_0 = 0
    bar_alpha: np.ndarray  # ᾱ_t = α_1⋯α_t, ᾱ_0 = 1
    bar_beta: np.ndarray  # β̄_t = √(1 − ᾱ_t²), β̄_0 = 0

    @property
    def num_steps(self) -> int:
        """T."""
        return self.alpha.shape[0] - 1


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}")
    return int(num_steps)


def schedule_from_variances(variances) -> DDPMSchedule:
    """The schedule whose per-step noise variances are β_t² = variances[t − 1], t = 1..T.

    α_t = √(1 − β_t²), ᾱ_t = Π_{s≤t} α_s (accumulated as exp Σ ½ log(1 − β_s²) for accuracy),
    β̄_t = √(1 − ᾱ_t²) (computed as √(−expm1(2 log ᾱ_t)) so small β̄_t keep full precision).

    Args:
      variances: array-like [T] of β_t² in (0, 1).
    Returns:
      a DDPMSchedule of float64 arrays [T + 1].
    """
    v = np.asarray(variances, dtype=np.float64)
    if v.ndim != 1 or v.size < 1 or not np.all(np.isfinite(v)) or np.any(v <= 0) or np.any(v >= 1):
        raise ValueError(f"`variances` must be a non-empty 1-D array with values in (0, 1); got {variances!r}")
    log_alpha = 0.5 * np.log1p(-v)  # [T]
    log_bar_alpha = np.concatenate([[0.0], np.cumsum(log_alpha)])  # [T + 1]
    alpha = np.concatenate([[1.0], np.exp(log_alpha)])
    beta = np.concatenate([[0.0], np.sqrt(v)])
    bar_alpha = np.exp(log_bar_alpha)
    bar_beta = np.sqrt(-np.expm1(2.0 * log_bar_alpha))
    return DDPMSchedule(alpha, beta, bar_alpha, bar_beta)


def article_schedule(num_steps: int = 1000, max_variance: float = 0.02) -> DDPMSchedule:
    """The blog's schedule α_t = √(1 − max_variance·t/T), t = 1..T (T = 1000, max_variance = 0.02).

    So β_t² = 0.02·t/T runs from 2e-5 to 0.02 and ᾱ_T = 6.48e-3 (spec generative.md §11.4).

    References:
      https://kexue.fm/archives/9152 (section 超参设置); bojone/Keras-DDPM ddpm.py.
    """
    num_steps = _check_num_steps(num_steps)
    if not (isinstance(max_variance, (int, float)) and 0 < max_variance < 1):
        raise ValueError(f"`max_variance` must be a float in (0, 1); got {max_variance!r}")
    t = np.arange(1, num_steps + 1, dtype=np.float64)
    return schedule_from_variances(max_variance * t / num_steps)


def linear_schedule(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMSchedule:
    """Ho et al.'s linear variance schedule: β_t² (the paper's β_t) linear from `beta_start` to `beta_end`.

    References:
      https://kexue.fm/archives/9152 ; Ho et al. 2020 (arXiv:2006.11239), §4.
    """
    num_steps = _check_num_steps(num_steps)
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise ValueError(f"`{name}` must be a float in (0, 1); got {value!r}")
    return schedule_from_variances(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def cosine_schedule(num_steps: int = 1000, s: float = 0.008, max_variance: float = 0.999) -> DDPMSchedule:
    """Nichol & Dhariwal's cosine schedule: ᾱ_t² = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2).

    Per-step variances β_t² = 1 − ᾱ_t²/ᾱ_{t−1}², clipped at `max_variance` (0.999) as in the paper, so the
    last step does not have β_T = 1 exactly.

    References:
      https://kexue.fm/archives/9152 ; Nichol & Dhariwal 2021 (arXiv:2102.09672), eq. 17.
    """
    num_steps = _check_num_steps(num_steps)
    if not (isinstance(s, (int, float)) and s > 0):
        raise ValueError(f"`s` must be a float > 0; got {s!r}")
    if not (isinstance(max_variance, (int, float)) and 0 < max_variance < 1):
        raise ValueError(f"`max_variance` must be a float in (0, 1); got {max_variance!r}")
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    variances = np.minimum(1.0 - f[1:] / f[:-1], max_variance)
    return schedule_from_variances(variances)


def make_schedule(name: str, num_steps: int = 1000) -> DDPMSchedule:
    """`article_schedule`, `linear_schedule` or `cosine_schedule` by name (configs name schedules by string)."""
    if name not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}; got {name!r}")
    return {"article": article_schedule, "linear": linear_schedule, "cosine": cosine_schedule}[name](num_steps)


def vp_sigmas(schedule: DDPMSchedule) -> np.ndarray:
    """σ_t = β̄_t/ᾱ_t [T + 1]: the EDM noise level of step t (x_t/ᾱ_t = x_0 + σ_t ε); σ_0 = 0."""
    return schedule.bar_beta / schedule.bar_alpha


def _check_sigma_range(sigma_min, sigma_max) -> None:
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"`{name}` must be a float > 0; got {value!r}")
    if not sigma_max > sigma_min:
        raise ValueError(f"`sigma_max` must be > `sigma_min` ({sigma_min}); got {sigma_max}")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"`n` must be an int >= 2; got {n!r}")
    return int(n)


def _finish(sigmas: np.ndarray, append_zero: bool) -> np.ndarray:
    return np.concatenate([sigmas, [0.0]]) if append_zero else sigmas


def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
               append_zero: bool = False) -> np.ndarray:
    """Karras' grid σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..n−1 (decreasing).

    Args:
      n: number of grid points (>= 2).
      sigma_min, sigma_max: endpoints, 0 < σ_min < σ_max.
      rho: the exponent ρ > 0 (7 in EDM; ρ = 1 is uniform in σ).
      append_zero: append σ_n = 0 (EDM's last Euler step to the data).
    Returns:
      float64 [n] (or [n + 1] with the trailing 0).

    References:
      https://kexue.fm/archives/9881 ; Karras et al. 2022 (arXiv:2206.00364), eq. 5.
    """
    n = _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"`rho` must be a float > 0; got {rho!r}")
    i = np.arange(n, dtype=np.float64) / (n - 1)
    sigmas = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact endpoints despite the power round trip
    return _finish(sigmas, append_zero)


def logsnr_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *,
                  append_zero: bool = False) -> np.ndarray:
    """Uniform in logSNR = −2 log σ: σ_i = exp(log σ_max + i/(n−1)·(log σ_min − log σ_max)) (decreasing).

    References:
      https://kexue.fm/archives/9881 ; Lu et al., "DPM-Solver" (arXiv:2206.00927), §3.3 (uniform λ grid).
    """
    n = _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return _finish(sigmas, append_zero)


def time_uniform_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 1.0, *,
                        epsilon_s: float = 1e-3, append_zero: bool = False) -> np.ndarray:
    """Uniform (for ρ = 1) in the time of a VP-SDE: σ(τ) = √(exp(½β_d τ² + β_min τ) − 1), τ: 1 → ε_s.

    β_d and β_min are chosen so that σ(1) = σ_max and σ(ε_s) = σ_min; the times are
    τ_i = (1 + i/(n−1)·(ε_s^{1/ρ} − 1))^ρ, the "time_uniform" schedule of zju-pi/diff-sampler (used by
    DEIS with ρ = 2 and by AMED-Solver with ρ = 1).

    References:
      https://kexue.fm/archives/9881 ; Zhou et al., "Fast ODE-based Sampling for Diffusion Models in Around
      5 Steps" (arXiv:2312.00094); Song et al. 2021 (arXiv:2011.13456) for the VP-SDE σ(τ).
    """
    n = _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"`rho` must be a float > 0; got {rho!r}")
    if not (isinstance(epsilon_s, (int, float)) and 0 < epsilon_s < 1):
        raise ValueError(f"`epsilon_s` must be a float in (0, 1); got {epsilon_s!r}")
    log_max, log_min = math.log1p(sigma_max ** 2), math.log1p(sigma_min ** 2)
    # log(1 + σ²(τ)) = ½β_d τ² + β_min τ through both endpoints.
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    beta_min = log_max - 0.5 * beta_d
    i = np.arange(n, dtype=np.float64) / (n - 1)
    tau = (1 + i * (epsilon_s ** (1 / rho) - 1)) ** rho
    sigmas = np.sqrt(np.expm1(0.5 * beta_d * tau ** 2 + beta_min * tau))
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return _finish(sigmas, append_zero)


def sigma_grid(kind: str, n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float | None = None, *,
               append_zero: bool = False) -> np.ndarray:
    """One of the grids by name: 'polynomial' (ρ default 7), 'logsnr', 'time_uniform' (ρ default 1)."""
    if kind not in GRIDS:
        raise ValueError(f"`kind` must be one of {list(GRIDS)}; got {kind!r}")
    if kind == "polynomial":
        return edm_sigmas(n, sigma_min, sigma_max, 7.0 if rho is None else rho, append_zero=append_zero)
    if kind == "logsnr":
        return logsnr_sigmas(n, sigma_min, sigma_max, append_zero=append_zero)
    return time_uniform_sigmas(n, sigma_min, sigma_max, 1.0 if rho is None else rho, append_zero=append_zero)
