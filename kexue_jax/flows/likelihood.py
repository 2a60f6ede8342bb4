"""Likelihood accounting for flows on integer images: dequantisation and bits/dim.

An image x ∈ {0, …, L−1}^D (L grey levels: 256 for 8-bit data, 17 for the 8×8 digits) is dequantised to
y = (x + u)/L, u ~ U[0, 1)^D, so y ∈ [0, 1)^D. A continuous density p on y gives the discrete model
P(x) = ∫_{bin(x)} p ≥ L^{−D}·exp(E_u log p(y)) (Jensen), so

    bits/dim = (−log p(y) + D·ln L) / (D·ln 2)

upper-bounds −log₂ P(x)/D. The flows model y − ½ ∈ [−½, ½) (openai/glow's x/n_bins − ½); the shift has
unit Jacobian, so bits/dim is unchanged. The uniform density on the cube has log p = 0 and gives exactly
log₂ L bits/dim: 8 for 8-bit data, log₂ 17 = 4.087 for digits (spec generative.md §0.1). Blog codes use
other noise widths (NICE: U[−0.01, 0]; Su's Glow: U[0, 1/256] on [−1, 1]), whose raw losses are not
comparable to published bits/dim; this module always uses the standard bin width 1/L.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

__all__ = ["check_levels", "dequantize", "bits_per_dim"]


def check_levels(levels) -> int:
    """`levels` must be an integer >= 2 (a Python or NumPy int, not a bool)."""
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 2:
        raise ValueError(f"`levels` must be an integer >= 2; got {levels!r}")
    return int(levels)


def dequantize(images: jax.Array, *, key: jax.Array, levels: int) -> jax.Array:
    """y = (x + u)/levels, u ~ U[0, 1): integer images [b, ...] -> float32 [b, ...] in [0, 1)."""
    levels = check_levels(levels)
    x = jnp.asarray(images).astype(jnp.float32)
    return (x + jax.random.uniform(key, x.shape, jnp.float32)) / levels


def bits_per_dim(log_prob: jax.Array, num_dims: int, levels: int) -> jax.Array:
    """(−log p(y) + D·ln levels)/(D·ln 2) per example, for log p(y) [b] in nats of y ∈ [0, 1)^D."""
    levels = check_levels(levels)
    if isinstance(num_dims, bool) or not isinstance(num_dims, numbers.Integral) or num_dims < 1:
        raise ValueError(f"`num_dims` must be an integer >= 1; got {num_dims!r}")
    return (-log_prob + num_dims * math.log(levels)) / (num_dims * math.log(2.0))
