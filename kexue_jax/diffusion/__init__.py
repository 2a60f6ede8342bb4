"""Diffusion models in three parts: schedules, the DDPM loss/ELBO/sampler, and denoiser parameterisations.

Notation of kexue.fm/archives/9152 (α, β are standard deviations, the square roots of Ho et al.'s; see
`schedules` for the map to Ho/Karras). `schedules` holds the noise schedules and σ grids as pure functions,
`ddpm` the article's training loss, ELBO in bits/dim and ancestral sampler, `precond` EDM preconditioning
and the ε/x₀/v/score ↔ D(x, σ) conversions that feed the samplers in `kexue_jax.samplers`, and `metrics`
FD-digits, class coverage and the energy distance. The NFE-table runner (`kexue_jax.diffusion.nfe_table`)
is imported on its own; this package imports only jax, flax, optax and numpy (no data, no side effects).

Usage (the article's ε-loss on a batch, then its EDM denoiser D(x, σ) in a fast sampler):

    import jax, jax.numpy as jnp
    from kexue_jax import diffusion, samplers

    schedule = diffusion.article_schedule(1000)          # α_t = √(1 − 0.02·t/T), ᾱ_T = 6.5e-3
    eps_fn = lambda x_t, t: jnp.zeros_like(x_t)          # ε_θ(x_t, t int32 [b]): a trained U-Net in practice
    batch = {"x": jax.random.normal(jax.random.key(0), (8, 2))}
    loss, aux = diffusion.ddpm_loss(eps_fn, batch, key=jax.random.key(1), schedule=schedule)
    denoise = diffusion.ddpm_denoiser(eps_fn, schedule)  # D(x, σ) in EDM coordinates, x = x_t/ᾱ_t
    sigma_max = float(diffusion.vp_sigmas(schedule)[-1])  # σ_T = β̄_T/ᾱ_T ≈ 154
    sigmas, _ = diffusion.round_sigma(diffusion.edm_sigmas(10, sigma_max=sigma_max), schedule)
    sigmas = jnp.append(sigmas, 0.0)                     # the σ_t the network was trained at, then 0
    x_T = sigmas[0] * jax.random.normal(jax.random.key(2), (8, 2))
    x_0 = samplers.sample_dpm_solver_pp(denoise, x_T, sigmas, order=3)

References:
    https://kexue.fm/archives/9152 (DDPM = 自回归式VAE); https://kexue.fm/archives/9881 (AMED);
    Ho et al. 2020 (DDPM); Karras et al. 2022 (EDM).
"""
from kexue_jax.diffusion.ddpm import (SIGMAS, WEIGHTINGS, TimeMLP, ddpm_loss, ddpm_loss_terms, ddpm_sample,
                                      elbo_bits_per_dim, elbo_terms, evaluate, negative_elbo, prepare_batch,
                                      prior_kl, sigma_choice, step_weight, to_images)
from kexue_jax.diffusion.metrics import (class_histogram_metrics, classifier_features, data_fd_references,
                                         energy_distance, frechet_distance, gaussian_statistics, image_metrics,
                                         train_classifier)
from kexue_jax.diffusion.precond import (PARAMETERIZATIONS, ddpm_denoiser, edm_denoiser, edm_loss,
                                         edm_loss_weight, edm_preconditioning, from_denoiser, round_sigma,
                                         to_denoiser)
from kexue_jax.diffusion.schedules import (GRIDS, SCHEDULES, DDPMSchedule, article_schedule, cosine_schedule,
                                           edm_sigmas, linear_schedule, logsnr_sigmas, make_schedule,
                                           schedule_from_variances, sigma_grid, time_uniform_sigmas, vp_sigmas)

__all__ = [
    # schedules
    "DDPMSchedule", "schedule_from_variances", "article_schedule", "linear_schedule", "cosine_schedule",
    "make_schedule", "SCHEDULES", "vp_sigmas", "edm_sigmas", "logsnr_sigmas", "time_uniform_sigmas",
    "sigma_grid", "GRIDS",
    # ddpm
    "SIGMAS", "WEIGHTINGS", "prepare_batch", "sigma_choice", "step_weight", "ddpm_loss_terms", "ddpm_loss",
    "elbo_terms", "prior_kl", "negative_elbo", "elbo_bits_per_dim", "ddpm_sample", "TimeMLP", "evaluate",
    "to_images",
    # precond
    "PARAMETERIZATIONS", "edm_preconditioning", "edm_denoiser", "to_denoiser", "from_denoiser",
    "ddpm_denoiser", "round_sigma", "edm_loss", "edm_loss_weight",
    # metrics
    "frechet_distance", "gaussian_statistics", "energy_distance", "class_histogram_metrics",
    "train_classifier", "classifier_features", "image_metrics", "data_fd_references",
]
