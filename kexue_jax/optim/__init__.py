"""Optimizer articles as optax transforms (issue 3).

- Exponentiated gradient and EG-learned step sizes: https://kexue.fm/archives/8968
- Momentum as a damped ODE, SGD as an SDE: https://kexue.fm/archives/5655
- GAN dynamics on the Dirac GAN: https://kexue.fm/archives/6583
- bert4keras optimizer-wrapper parity (`kexue_jax.optim.bert4keras`).
"""
from kexue_jax.optim import bert4keras
from kexue_jax.optim.dirac_gan import (dirac_gan_field, dirac_gan_losses, integrate_field,
                                       train_dirac_gan)
from kexue_jax.optim.exponentiated_gradient import (EGPlusMinusState, EGSGDState, EGStepSizeState,
                                                    ExponentiatedGradientState, eg_gains,
                                                    eg_global_scale, eg_plus_minus, eg_sgd,
                                                    eg_step_size_adaptation, exponentiated_gradient,
                                                    scale_by_exponentiated_gradient)
from kexue_jax.optim.hypergradient import HypergradientState, hypergradient_descent
from kexue_jax.optim.momentum_ode import (ShiftedMomentumState, beta_for_new_lr,
                                          damped_oscillator_exact, heavy_ball_ode,
                                          integrate_damped_oscillator, momentum_coefficients,
                                          momentum_schedule, ode_from_momentum,
                                          scale_by_shifted_momentum, sgd_stationary_variance,
                                          simulate_sgd_sde)
from kexue_jax.optim.stats import optimizer_stats

__all__ = [
    "bert4keras", "dirac_gan_field", "dirac_gan_losses", "integrate_field", "train_dirac_gan",
    "EGPlusMinusState", "EGSGDState", "EGStepSizeState", "ExponentiatedGradientState", "eg_gains",
    "eg_global_scale", "eg_plus_minus", "eg_sgd", "eg_step_size_adaptation", "exponentiated_gradient",
    "scale_by_exponentiated_gradient", "HypergradientState", "hypergradient_descent",
    "ShiftedMomentumState", "beta_for_new_lr", "damped_oscillator_exact", "heavy_ball_ode",
    "integrate_damped_oscillator", "momentum_coefficients", "momentum_schedule", "ode_from_momentum",
    "scale_by_shifted_momentum", "sgd_stationary_variance", "simulate_sgd_sde", "optimizer_stats",
]
