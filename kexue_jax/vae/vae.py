"""Variational autoencoder from the Bayesian (joint-distribution) viewpoint.

Su's derivation (VAE II): with the data distribution p̃(x), the encoder p(z|x) and the generator
q(x|z)q(z), minimise the KL divergence of the joints p(x,z) = p̃(x)p(z|x) and q(x,z) = q(x|z)q(z).
Dropping the constant E log p̃(x) leaves the loss

    L = E_{x~p̃} [ E_{z~p(z|x)}[-log q(x|z)] + KL(p(z|x) ‖ q(z)) ],

with q(z) = N(0, I) and p(z|x) = N(μ(x), diag σ²(x)), so KL = ½ Σ (μ² + σ² − log σ² − 1). The generator
q(x|z) is Bernoulli(sigmoid(logits(z))) (−log q(x|z) is the binary cross-entropy) or Gaussian
N(μ̃(z), σ̃²) (−log q(x|z) = ½‖(x−μ̃)/σ̃‖² + Σ log σ̃ + (D/2) log 2π); a fixed σ̃ sets the balance
between reconstruction and KL, a learned σ̃ lets maximum likelihood choose it. One reparameterised
sample z = μ + σ ⊙ ε per example per step.

Notation follows the article, the reverse of Kingma & Welling: p(z|x) is the encoder (their q_φ(z|x))
and q(x|z) the decoder (their p_θ(x|z)). Every log-density is a per-example **sum** over data or latent
dimensions (a proper log-likelihood in nats); only the loss takes the batch mean.

References:
    https://kexue.fm/archives/5343 (变分自编码器（二）：从贝叶斯观点出发)
    https://kexue.fm/archives/8791 (变分自编码器（八）：估计样本概率密度)
    Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv:1312.6114 (2013).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LIKELIHOODS = ('bernoulli', 'gaussian')
DECODER_SCALES = ('learned_scalar', 'learned_pixel')
# The test set is binarised / dequantised once with this seed, independently of the evaluation key,
# so that every run and every checkpoint is scored on the very same test points.
EVAL_PREPROCESS_SEED = 0
_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------------
# Pure functions: per-example sums, shapes [b, ...] -> [b].


def _sum_per_example(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def _check_batched(name: str, a) -> None:
    if jnp.ndim(a) < 1:
        raise ValueError(f"`{name}` must have a leading batch axis (ndim >= 1); got shape {jnp.shape(a)}")


def _check_same_shape(name_a: str, a, name_b: str, b) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(f"`{name_b}` must have the shape of `{name_a}` {jnp.shape(a)}; got {jnp.shape(b)}")


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example.

    KL(p(z|x) ‖ q(z)) = ½ Σ_i (μ_i² + σ_i² − log σ_i² − 1).

    Args:
        mean: μ, [b, d].
        log_var: log σ², [b, d].

    Returns:
        [b] KL in nats.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), appendix B.
    """
    _check_batched('mean', mean)
    _check_same_shape('mean', mean, 'log_var', log_var)
    return 0.5 * _sum_per_example(jnp.square(mean) + jnp.exp(log_var) - log_var - 1.0)


def reparameterize(mean: jax.Array, log_var: jax.Array, *, key: jax.Array) -> jax.Array:
    """Draws z ~ N(μ, diag σ²) as z = μ + σ ⊙ ε, ε ~ N(0, I), so gradients flow into μ and σ.

    Args:
        mean: μ, [b, d].
        log_var: log σ², [b, d].
        key: PRNG key for ε.

    Returns:
        z, [b, d] (dtype of `mean`).

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), §2.4.
    """
    _check_same_shape('mean', mean, 'log_var', log_var)
    epsilon = jax.random.normal(key, jnp.shape(mean), dtype=jnp.result_type(mean))
    return mean + jnp.exp(0.5 * log_var) * epsilon


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log q(x|z) of independent Bernoulli pixels with ρ = sigmoid(logits), per example.

    log q(x|z) = Σ_i [x_i log ρ_i + (1 − x_i) log(1 − ρ_i)] = Σ_i [x_i ℓ_i − softplus(ℓ_i)],

    i.e. minus the binary cross-entropy; the softplus form never evaluates log 0, so |ℓ| = 100 stays
    finite. x may be any value in [0, 1] (Su's MNIST code feeds grey levels /255).

    Args:
        logits: ℓ, [b, ...].
        x: targets in [0, 1], same shape as `logits`.

    Returns:
        [b] log-likelihood in nats.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), appendix C.1.
    """
    _check_batched('logits', logits)
    _check_same_shape('logits', logits, 'x', x)
    return _sum_per_example(x * logits - jax.nn.softplus(logits))


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale) -> jax.Array:
    """log N(x; μ̃, diag σ̃²) per example.

    log q(x|z) = −Σ_i [ ½((x_i − μ̃_i)/σ̃_i)² + log σ̃_i + ½ log 2π ].

    Args:
        x: data, [b, ...].
        mean: μ̃, same shape as `x`.
        log_scale: log σ̃, broadcastable to `x` (a scalar, a per-pixel [...] array, or [b, ...]).

    Returns:
        [b] log-likelihood in nats.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), appendix C.2.
    """
    _check_batched('x', x)
    _check_same_shape('x', x, 'mean', mean)
    try:
        # Explicit broadcast: the repo runs with rank promotion disabled, and a per-pixel log σ̃ of
        # shape [D] must still pair with x of shape [b, D].
        log_scale = jnp.broadcast_to(log_scale, jnp.shape(x))
    except ValueError as err:
        raise ValueError(f"`log_scale` must broadcast to the shape of `x` {jnp.shape(x)}; "
                         f"got {jnp.shape(log_scale)}") from err
    standardised = (x - mean) * jnp.exp(-log_scale)
    return _sum_per_example(-0.5 * jnp.square(standardised) - log_scale - 0.5 * _LOG_2PI)


def diagonal_gaussian_log_prob(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """log N(z; μ, diag σ²) per example: the encoder density log p(z|x).

    log p(z|x) = −½ Σ_i [ (z_i − μ_i)²/σ_i² + log σ_i² + log 2π ].

    Args:
        z: [b, d].
        mean: μ, [b, d].
        log_var: log σ², [b, d].

    Returns:
        [b] log-density in nats.

    References:
        https://kexue.fm/archives/8791 (the importance weight q(x|z)q(z)/p(z|x)).
    """
    _check_batched('z', z)
    _check_same_shape('z', z, 'mean', mean)
    _check_same_shape('z', z, 'log_var', log_var)
    return -0.5 * _sum_per_example(jnp.square(z - mean) * jnp.exp(-log_var) + log_var + _LOG_2PI)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
    """log q(z) = log N(z; 0, I) = −½ Σ_i (z_i² + log 2π) per example.

    Args:
        z: [b, d].

    Returns:
        [b] log-density in nats.

    References:
        https://kexue.fm/archives/5343 (the prior q(z) = N(0, I)).
    """
    _check_batched('z', z)
    return -0.5 * _sum_per_example(jnp.square(z) + _LOG_2PI)


# ----------------------------------------------------------------------------------------------------
# NNX modules: they own parameters and call the functions above.


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}")
    return int(value)


def _hidden_sizes(hidden) -> tuple[int, ...]:
    sizes = (hidden,) if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool) else hidden
    if (not isinstance(sizes, Sequence) or isinstance(sizes, str) or len(sizes) == 0
            or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in sizes)):
        raise ValueError(f"`hidden` must be a positive int or a non-empty sequence of positive ints; got {hidden!r}")
    return tuple(int(h) for h in sizes)


class _ReluTrunk(nnx.Module):
    """Linear + ReLU layers, the hidden part of Su's MLP encoder and decoder (784 → 256 → ...)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], *, rngs: nnx.Rngs):
        sizes = (in_features,) + hidden
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, h: jax.Array) -> jax.Array:
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return h


class GaussianEncoder(nnx.Module):
    """The encoder p(z|x) = N(μ(x), diag σ²(x)): an MLP returning (μ, log σ²).

    Args:
        in_features: D, the flattened data size.
        hidden: width of the ReLU hidden layer, or a sequence of widths.
        latent_dim: d.
        rngs: NNX RNG streams for the initialisers.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), appendix C.2.
    """

    def __init__(self, in_features: int, hidden, latent_dim: int, *, rngs: nnx.Rngs):
        in_features = _check_positive_int('in_features', in_features)
        sizes = _hidden_sizes(hidden)
        self.latent_dim = _check_positive_int('latent_dim', latent_dim)
        self.trunk = _ReluTrunk(in_features, sizes, rngs=rngs)
        self.mean = nnx.Linear(sizes[-1], self.latent_dim, rngs=rngs)
        self.log_var = nnx.Linear(sizes[-1], self.latent_dim, rngs=rngs)

    def __call__(self, x_flat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x_flat [b, D] -> (μ [b, d], log σ² [b, d])."""
        h = self.trunk(x_flat)
        return self.mean(h), self.log_var(h)


class BernoulliDecoder(nnx.Module):
    """The generator q(x|z) = Π_i Bernoulli(x_i; sigmoid(ℓ_i(z))): an MLP returning the logits ℓ.

    Args:
        latent_dim: d.
        hidden: width of the ReLU hidden layer, or a sequence of widths.
        out_features: D.
        rngs: NNX RNG streams.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), appendix C.1.
    """

    def __init__(self, latent_dim: int, hidden, out_features: int, *, rngs: nnx.Rngs):
        latent_dim = _check_positive_int('latent_dim', latent_dim)
        sizes = _hidden_sizes(hidden)
        self.out_features = _check_positive_int('out_features', out_features)
        self.trunk = _ReluTrunk(latent_dim, sizes, rngs=rngs)
        self.logits = nnx.Linear(sizes[-1], self.out_features, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        """z [b, d] -> logits [b, D]."""
        return self.logits(self.trunk(z))


class GaussianDecoder(nnx.Module):
    """The generator q(x|z) = N(μ̃(z), diag σ̃²): an MLP mean and a learned or fixed scale.

    `scale` chooses σ̃: 'learned_scalar' (one learned log σ̃, initialised at 0), 'learned_pixel' (one
    learned log σ̃ per pixel) or a positive float, a fixed σ̃ (then −log q(x|z) = MSE/(2σ̃²) + const and
    σ̃² is the reconstruction-vs-KL weight of the article). σ̃ does not depend on z, as in the article's
    "σ̃ as a constant" simplification with the option of fitting it.

    Args:
        latent_dim: d.
        hidden: width of the ReLU hidden layer, or a sequence of widths.
        out_features: D.
        scale: 'learned_scalar' | 'learned_pixel' | float σ̃ > 0.
        rngs: NNX RNG streams.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), appendix C.2.
    """

    def __init__(self, latent_dim: int, hidden, out_features: int, *, scale='learned_scalar',
                 rngs: nnx.Rngs):
        latent_dim = _check_positive_int('latent_dim', latent_dim)
        sizes = _hidden_sizes(hidden)
        self.out_features = _check_positive_int('out_features', out_features)
        self.trunk = _ReluTrunk(latent_dim, sizes, rngs=rngs)
        self.mean = nnx.Linear(sizes[-1], self.out_features, rngs=rngs)
        if isinstance(scale, str):
            if scale not in DECODER_SCALES:
                raise ValueError(f"`scale` must be one of {DECODER_SCALES} or a positive float; got {scale!r}")
            shape = () if scale == 'learned_scalar' else (self.out_features,)
            self.log_scale = nnx.Param(jnp.zeros(shape, jnp.float32))
            self.fixed_log_scale = None
        elif isinstance(scale, (int, float, np.floating)) and not isinstance(scale, bool) and scale > 0:
            # A plain float, not an nnx.Param, so the trainer never updates a fixed σ̃.
            self.log_scale = None
            self.fixed_log_scale = float(math.log(scale))
        else:
            raise ValueError(f"`scale` must be one of {DECODER_SCALES} or a positive float; got {scale!r}")

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [b, d] -> (μ̃ [b, D], log σ̃ broadcast to [b, D])."""
        mean = self.mean(self.trunk(z))
        log_scale = self.fixed_log_scale if self.log_scale is None else self.log_scale[...]
        return mean, jnp.broadcast_to(jnp.asarray(log_scale, mean.dtype), mean.shape)


class VAE(nnx.Module):
    """Encoder p(z|x), prior q(z) = N(0, I) and generator q(x|z) of Su's VAE (II).

    Args:
        data_shape: shape of one example, e.g. (8, 8, 1); D = prod(data_shape).
        latent_dim: d.
        hidden: ReLU hidden width(s) of both MLPs (Su's MNIST code: 256).
        likelihood: 'bernoulli' (logits decoder, binary or [0,1] data) or 'gaussian'.
        decoder_scale: the `scale` of `GaussianDecoder` (ignored for 'bernoulli').
        rngs: NNX RNG streams.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013).
    """

    def __init__(self, *, data_shape, latent_dim: int, hidden, likelihood: str = 'bernoulli',
                 decoder_scale='learned_scalar', rngs: nnx.Rngs):
        if (not isinstance(data_shape, (tuple, list)) or len(data_shape) == 0
                or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in data_shape)):
            raise ValueError(f"`data_shape` must be a non-empty tuple of positive ints; got {data_shape!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_features = int(np.prod(self.data_shape))
        self.latent_dim = _check_positive_int('latent_dim', latent_dim)
        self.likelihood = likelihood
        self.encoder = GaussianEncoder(self.num_features, hidden, self.latent_dim, rngs=rngs)
        if likelihood == 'bernoulli':
            self.decoder = BernoulliDecoder(self.latent_dim, hidden, self.num_features, rngs=rngs)
        else:
            self.decoder = GaussianDecoder(self.latent_dim, hidden, self.num_features, scale=decoder_scale,
                                           rngs=rngs)

    def encode(self, x_flat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x_flat [b, D] -> (μ [b, d], log σ² [b, d]) of p(z|x)."""
        return self.encoder(x_flat)

    def decode(self, z: jax.Array):
        """z [b, d] -> logits [b, D] ('bernoulli') or (μ̃ [b, D], log σ̃ [b, D]) ('gaussian')."""
        return self.decoder(z)

    def log_likelihood(self, x_flat: jax.Array, z: jax.Array) -> jax.Array:
        """log q(x|z) per example: x_flat [b, D], z [b, d] -> [b]."""
        if self.likelihood == 'bernoulli':
            return bernoulli_log_likelihood(self.decode(z), x_flat)
        mean, log_scale = self.decode(z)
        return gaussian_log_likelihood(x_flat, mean, log_scale)

    def decoded_mean(self, z: jax.Array) -> jax.Array:
        """E[x|z] under q(x|z): sigmoid(ℓ) or μ̃, [b, D]."""
        if self.likelihood == 'bernoulli':
            return jax.nn.sigmoid(self.decode(z))
        return self.decode(z)[0]

    def sample(self, n: int, *, key: jax.Array) -> jax.Array:
        """Decoder means E[x|z] at z ~ q(z) = N(0, I): [n, *data_shape] (the usual way to show VAE samples)."""
        n = _check_positive_int('n', n)
        z = jax.random.normal(key, (n, self.latent_dim))
        return self.decoded_mean(z).reshape((n,) + self.data_shape)  # [n, D] -> [n, *data_shape]

    def reconstruct(self, x: jax.Array, *, key: jax.Array) -> jax.Array:
        """E[x|z] at one z ~ p(z|x): x [b, *data_shape] or [b, D] -> [b, *data_shape]."""
        b = x.shape[0]
        x_flat = jnp.reshape(x, (b, -1))  # [b, D]
        if x_flat.shape[1] != self.num_features:
            raise ValueError(f"`x` must hold {self.num_features} values per example; got shape {x.shape}")
        mean, log_var = self.encode(x_flat)
        z = reparameterize(mean, log_var, key=key)
        return self.decoded_mean(z).reshape((b,) + self.data_shape)


# ----------------------------------------------------------------------------------------------------
# ELBO and the trainer-facing losses.


def elbo_terms(model, x_flat: jax.Array, *, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One-sample reconstruction term and analytic KL of the ELBO.

    Returns (log q(x|z), KL(p(z|x) ‖ q(z))), each [b], with z = μ + σ ⊙ ε, ε ~ N(0, I) drawn from `key`.
    `model` needs `encode(x_flat) -> (μ, log σ²)` and `log_likelihood(x_flat, z) -> [b]`.
    """
    mean, log_var = model.encode(x_flat)
    z = reparameterize(mean, log_var, key=key)
    return model.log_likelihood(x_flat, z), gaussian_kl(mean, log_var)


def elbo(model, x_flat: jax.Array, *, key: jax.Array) -> jax.Array:
    """One-sample estimate of the evidence lower bound, per example.

    ELBO(x) = E_{z~p(z|x)}[log q(x|z)] − KL(p(z|x) ‖ q(z)) ≤ log q(x),

    estimated with one reparameterised z and the closed-form KL (its negative is Su's loss L for one x).

    Args:
        model: has `encode(x_flat) -> (μ, log σ²)` and `log_likelihood(x_flat, z) -> [b]`.
        x_flat: [b, D].
        key: PRNG key for ε.

    Returns:
        [b] ELBO in nats.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013), eq. (10).
    """
    if jnp.ndim(x_flat) != 2:
        raise ValueError(f"`x_flat` must be [b, D]; got shape {jnp.shape(x_flat)}")
    log_lik, kl = elbo_terms(model, x_flat, key=key)
    return log_lik - kl


def _flatten_images(image: jax.Array) -> jax.Array:
    return jnp.reshape(image, (image.shape[0], -1)).astype(jnp.float32)  # [b, H, W, C] -> [b, D]


def _batch_levels(batch, b: int, levels: int = 256) -> jax.Array:
    """Grey levels as a [b, 1] column: batch['levels'] (a scalar or one value per example) if present,
    else `levels` (set by the config's `loss_kwargs`, e.g. 17 for digits)."""
    if not isinstance(levels, jax.Array) and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer))
                                              or levels < 2):  # checked even when the batch carries its own
        raise ValueError(f"`levels` must be an int >= 2; got {levels!r}")
    levels = jnp.asarray(batch.get('levels', levels), jnp.float32)
    if levels.ndim == 0:
        return jnp.broadcast_to(levels, (b, 1))
    return jnp.reshape(levels, (b, 1))


def binarize(image: jax.Array, levels, *, key: jax.Array) -> jax.Array:
    """Dynamic binarisation x = 1[u < image/(levels−1)], u ~ U[0, 1): [b, ...] uint8 -> [b, D] float32.

    Pixel intensities are read as Bernoulli probabilities, the standard preprocessing for MNIST NLL in nats
    (Salakhutdinov & Murray 2008; Burda et al. 2015). `levels` is a scalar or a [b, 1] column.
    """
    image = _flatten_images(image)
    levels = jnp.asarray(levels, jnp.float32)
    u = jax.random.uniform(key, image.shape, jnp.float32)
    return (u < image / (levels - 1.0)).astype(jnp.float32)


def dequantize(image: jax.Array, levels, *, key: jax.Array) -> jax.Array:
    """Uniform dequantisation y = (image + u)/levels, u ~ U[0, 1): [b, ...] uint8 -> [b, D] float32 in [0, 1).

    A density on y lower-bounds the discrete probability of the grey levels, so
    bits/dim = (nats + D ln levels)/(D ln 2). `levels` is a scalar or a [b, 1] column.
    """
    image = _flatten_images(image)
    levels = jnp.asarray(levels, jnp.float32)
    u = jax.random.uniform(key, image.shape, jnp.float32)
    return (image + u) / levels


def _vae_loss(model, x_flat, key):
    log_lik, kl = elbo_terms(model, x_flat, key=key)
    recon, kl = -jnp.mean(log_lik), jnp.mean(kl)
    loss = recon + kl
    return loss, {'recon_nats': recon, 'kl_nats': kl, 'neg_elbo_nats': loss}


def bernoulli_binarized_loss(model, batch, *, key: jax.Array, levels: int = 256):
    """Negative ELBO (nats, batch mean) on a freshly binarised batch, for a 'bernoulli' VAE.

    loss = mean_b [ −log q(x|z) + KL(p(z|x) ‖ q(z)) ],  x = 1[u < image/(levels−1)], z = μ + σ ⊙ ε.

    Key layout (so a test can redraw the same x and ε): `key_u, key_z = jax.random.split(key)`;
    u = uniform(key_u, [b, D]); ε = normal(key_z, [b, d]).

    Args:
        model: a `VAE` with likelihood 'bernoulli'.
        batch: dict with 'image' (uint8 [b, H, W, C]) and optionally 'levels' (scalar or [b]).
        key: this step's PRNG key.
        levels: grey levels when the batch has no 'levels' (256 for MNIST, 17 for digits).

    Returns:
        (loss, {'recon_nats', 'kl_nats', 'neg_elbo_nats'}); loss = recon_nats + kl_nats.

    References:
        https://kexue.fm/archives/5343 ; Kingma & Welling (2013).
    """
    image = batch['image']
    key_u, key_z = jax.random.split(key)
    x_flat = binarize(image, _batch_levels(batch, image.shape[0], levels), key=key_u)
    return _vae_loss(model, x_flat, key_z)


def gaussian_dequantized_loss(model, batch, *, key: jax.Array, levels: int = 256):
    """Negative ELBO (nats, batch mean) on uniformly dequantised data y = (image + u)/levels.

    loss = mean_b [ −log q(y|z) + KL(p(z|y) ‖ q(z)) ]. Key layout: `key_u, key_z = jax.random.split(key)`.

    Args:
        model: a `VAE` (normally likelihood 'gaussian').
        batch: dict with 'image' (uint8 [b, H, W, C]) and optionally 'levels' (scalar or [b]).
        key: this step's PRNG key.
        levels: grey levels when the batch has no 'levels' (256 for MNIST, 17 for digits).

    Returns:
        (loss, {'recon_nats', 'kl_nats', 'neg_elbo_nats'}).

    References:
        https://kexue.fm/archives/5343 ; https://kexue.fm/archives/8791 ; Kingma & Welling (2013).
    """
    image = batch['image']
    key_u, key_z = jax.random.split(key)
    y_flat = dequantize(image, _batch_levels(batch, image.shape[0], levels), key=key_u)
    return _vae_loss(model, y_flat, key_z)


def preprocess(model, batch, *, key: jax.Array, levels: int = 256) -> jax.Array:
    """The model's training input from a batch: binarised for 'bernoulli', dequantised for 'gaussian'."""
    image = batch['image']
    return _preprocess_images(model.likelihood, image, _batch_levels(batch, image.shape[0], levels), key)


def _preprocess_images(likelihood: str, image, levels, key):
    if likelihood == 'bernoulli':
        return binarize(image, levels, key=key)
    return dequantize(image, levels, key=key)


# ----------------------------------------------------------------------------------------------------
# Evaluation.


def bits_per_dim(nats, num_features: int, levels: int):
    """bpd = (nats + D ln levels)/(D ln 2) for a density on y = (x + u)/levels."""
    return (nats + num_features * math.log(levels)) / (num_features * math.log(2.0))


def _save_grid(images: np.ndarray, ncol: int, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim == 3:
        images = images[..., None]  # [n, H, W] -> [n, H, W, 1]
    n, h, w, c = images.shape
    nrow = -(-n // ncol)
    grid = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = images[i]
    fig, ax = plt.subplots(figsize=(ncol * 0.6 + 0.4, nrow * 0.6 + 0.4))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap='gray' if c == 1 else None, vmin=0.0, vmax=1.0,
              interpolation='nearest')
    ax.axis('off')
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)


def check_config(config) -> None:
    """The keys only `evaluate` reads, checked by the shared trainer before training."""
    for name, default in (('eval_num_samples', 1000), ('eval_batch_size', 100), ('eval_sample_chunk_size', 100)):
        _check_positive_int(name, config.get(name, default))


def _baselines(model, test, config) -> dict[str, float]:
    """Closed-form references on the same split, computed in the same run (nothing hard-coded).

    'bernoulli': the independent-pixel Bernoulli model fitted on the training split; its NLL on
    soft targets pixel/(levels−1) equals its expected NLL under the dynamic binarisation used here.
    'gaussian': diagonal and full-covariance Gaussians on the dequantised data, in bits/dim.
    """
    if not config.get('dataset'):
        return {}
    from kexue_jax.data import baselines, load

    train = load(config['dataset'], 'train', data_dir=config.get('data_dir'))
    if model.likelihood == 'bernoulli':
        return {'test/baseline_independent_bernoulli_nats': baselines.bernoulli_independent_nats(train, test)}
    return {'test/baseline_diagonal_gaussian_bpd': baselines.gaussian_baseline_bpd(train, test, kind='diagonal'),
            'test/baseline_full_gaussian_bpd': baselines.gaussian_baseline_bpd(train, test, kind='full')}


def evaluate(model, dataset, *, key: jax.Array, config, workdir) -> dict[str, float]:
    """Test ELBO and importance-sampled log-likelihood on the whole test split, plus figures.

    The test images are preprocessed ONCE with the fixed key `jax.random.key(EVAL_PREPROCESS_SEED)`
    (binarised for 'bernoulli', dequantised for 'gaussian'), independent of `key`, so every evaluation
    scores the same test points. Per chunk of `eval_batch_size` examples (padded to a fixed shape so
    the jitted function compiles once) it computes a one-sample ELBO and the K-sample estimate
    log q(x) ≈ log (1/K) Σ_k q(x|z_k) q(z_k)/p(z_k|x) (K = config['eval_num_samples'], default 1000).

    Args:
        model: a `VAE`.
        dataset: has `.arrays['image']` (uint8 [N, *data_shape]) and `.levels` (int).
        key: PRNG key for z and the sample figures.
        config: mapping with optional 'eval_num_samples' (1000), 'eval_batch_size' (100) and
            'eval_sample_chunk_size' (100, importance samples per streaming step).
        workdir: directory for 'samples.png' (64 decoder means at z ~ q(z)) and 'reconstructions.png'
            (32 preprocessed test inputs, each followed by its reconstruction), or None. Figures are
            written only for image-shaped data ([H, W] or [H, W, C]).

    Returns:
        {'test/neg_elbo_nats', 'test/recon_nats', 'test/kl_nats', 'test/nll_iwae_nats'} and, for the
        'gaussian' model, the same NLLs in bits/dim ('test/neg_elbo_bpd', 'test/nll_iwae_bpd'); when
        config['dataset'] is set, the closed-form baselines of `_baselines` on the same split.

    References:
        https://kexue.fm/archives/8791 ; Burda, Grosse & Salakhutdinov, arXiv:1509.00519 (2015).
    """
    from kexue_jax.vae.importance import iwae_log_likelihood

    images = np.asarray(dataset.arrays['image'])
    levels = dataset.levels
    if images.ndim < 2 or tuple(images.shape[1:]) != model.data_shape:
        raise ValueError(f"`dataset.arrays['image']` must be [N, *{model.data_shape}]; got {images.shape}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"`dataset.levels` must be an int >= 2; got {levels!r}")
    num_samples = _check_positive_int('eval_num_samples', config.get('eval_num_samples', 1000))
    batch_size = _check_positive_int('eval_batch_size', config.get('eval_batch_size', 100))
    sample_chunk = _check_positive_int('eval_sample_chunk_size', config.get('eval_sample_chunk_size', 100))

    n = images.shape[0]
    prep_key = jax.random.key(EVAL_PREPROCESS_SEED)
    # One jitted call instead of op-by-op dispatch (each eager op compiles separately).
    preprocess_all = jax.jit(lambda im, k: _preprocess_images(model.likelihood, im, levels, k))
    x_all = np.asarray(preprocess_all(jnp.asarray(images), prep_key))
    num_chunks = -(-n // batch_size)
    x_padded = np.zeros((num_chunks * batch_size, model.num_features), np.float32)
    x_padded[:n] = x_all

    graphdef, state = nnx.split(model)
    key_elbo, key_iwae, key_sample, key_recon = jax.random.split(key, 4)

    @jax.jit
    def chunk_metrics(state, x_flat, chunk_index):
        m = nnx.merge(graphdef, state)
        log_lik, kl = elbo_terms(m, x_flat, key=jax.random.fold_in(key_elbo, chunk_index))
        log_px = iwae_log_likelihood(m, x_flat, key=jax.random.fold_in(key_iwae, chunk_index),
                                     num_samples=num_samples, chunk_size=min(sample_chunk, num_samples))
        return log_lik, kl, log_px

    outs = [chunk_metrics(state, x_padded[i * batch_size:(i + 1) * batch_size], i) for i in range(num_chunks)]
    log_lik, kl, log_px = (np.concatenate([np.asarray(o[j], np.float64) for o in outs])[:n] for j in range(3))
    results = {
        'test/neg_elbo_nats': float(np.mean(kl - log_lik)),
        'test/recon_nats': float(np.mean(-log_lik)),
        'test/kl_nats': float(np.mean(kl)),
        'test/nll_iwae_nats': float(np.mean(-log_px)),
    }
    if model.likelihood == 'gaussian':
        results['test/neg_elbo_bpd'] = float(bits_per_dim(results['test/neg_elbo_nats'], model.num_features, levels))
        results['test/nll_iwae_bpd'] = float(bits_per_dim(results['test/nll_iwae_nats'], model.num_features, levels))

    results.update(_baselines(model, dataset, config))

    if workdir is not None and len(model.data_shape) in (2, 3):
        os.makedirs(workdir, exist_ok=True)
        shown = x_all[:32].reshape((-1,) + model.data_shape)  # [32, D] -> [32, *data_shape]

        @jax.jit
        def pictures(state, shown):
            m = nnx.merge(graphdef, state)
            return m.sample(64, key=key_sample), m.reconstruct(shown, key=key_recon)

        samples, recon = (np.asarray(a) for a in pictures(state, jnp.asarray(shown)))
        _save_grid(samples, 8, os.path.join(workdir, 'samples.png'))
        pairs = np.stack([shown, recon], axis=1).reshape((-1,) + model.data_shape)  # input, reconstruction
        _save_grid(pairs, 8, os.path.join(workdir, 'reconstructions.png'))
    return results


evaluate.check_config = check_config
