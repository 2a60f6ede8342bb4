"""Importance-sampled density estimation with a VAE, and the IWAE objective.

Su's VAE (VIII): the model density is a continuous mixture q(x) = ∫ q(x|z) q(z) dz = E_{z~q(z)}[q(x|z)],
and sampling z from the prior is hopeless in high dimension. With an importance distribution p(z|x)
(the encoder, "just an importance weight function", no posterior meaning needed)

    q(x) = E_{z~p(z|x)} [ q(x|z) q(z) / p(z|x) ]
    log q(x) ≈ log (1/K) Σ_{k=1}^K q(x|z_k) q(z_k)/p(z_k|x),   z_k ~ p(z|x).

The estimate is a stochastic lower bound on log q(x) whose expectation rises with K and reaches log q(x)
as K → ∞. Trained with one reparameterised sample it is the usual VAE loss (with a one-sample KL); with
K > 1 samples it is the importance weighted autoencoder (IWAE) bound of Burda et al.

Sample k of a batch uses ε_k = normal(fold_in(key, k), [b, d]), so the draws do not depend on how the
K samples are chunked; chunks are combined with a running log-sum-exp so K = 5000 fits in memory.

References:
    https://kexue.fm/archives/8791 (变分自编码器（八）：估计样本概率密度)
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", arXiv:1509.00519 (2015).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.vae.vae import (diagonal_gaussian_log_prob, gaussian_kl, preprocess, reparameterize,
                               standard_normal_log_prob)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}")
    return int(value)


def log_mean_exp(a: jax.Array, axis: int) -> jax.Array:
    """log (1/n) Σ_i exp(a_i) along `axis`, stable for |a| ~ 1000 (n = a.shape[axis]).

    Args:
        a: array with at least one axis.
        axis: the axis to average over.

    Returns:
        `a` with `axis` removed.

    References:
        https://kexue.fm/archives/8791 (the log of the importance-sampling average).
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"`axis` must be an int; got {axis!r}")
    if not -jnp.ndim(a) <= axis < jnp.ndim(a):
        raise ValueError(f"`axis` must be in [{-jnp.ndim(a)}, {jnp.ndim(a)}); got {axis}")
    n = jnp.shape(a)[axis]
    if n == 0:
        raise ValueError(f"`a` must have a non-empty axis {axis}; got shape {jnp.shape(a)}")
    return jax.scipy.special.logsumexp(a, axis=axis) - math.log(n)


def importance_log_weight(model, x_flat: jax.Array, z: jax.Array, mean: jax.Array,
                          log_var: jax.Array) -> jax.Array:
    """log w = log q(x|z) + log q(z) − log p(z|x) per example: [b, D], [b, d] -> [b].

    `mean`, `log_var` are p(z|x)'s parameters (passed in so the encoder runs once for all K samples).
    """
    return (model.log_likelihood(x_flat, z) + standard_normal_log_prob(z)
            - diagonal_gaussian_log_prob(z, mean, log_var))


def importance_log_likelihood(log_weight_fn, num_samples: int, *, key: jax.Array, chunk_size=None) -> jax.Array:
    """log (1/K) Σ_k exp(log_weight_fn(key_k)) with key_k = fold_in(key, k), streamed over chunks.

    The pure core of `iwae_log_likelihood`: `log_weight_fn(key_k) -> [b]` draws one importance sample
    from its key and returns its log weight. K = `num_samples` weights are computed `chunk_size` at a
    time (vmapped inside a chunk, `lax.scan` over chunks) and folded into a running log-sum-exp, so
    memory is O(chunk_size · b) whatever K. A `chunk_size` that does not divide K is handled: the last
    chunk's surplus indices get weight 0 (log weight −∞), so any chunking gives the same draws and,
    up to float rounding, the same result.

    Args:
        log_weight_fn: key -> [b] log weights.
        num_samples: K >= 1 (configs set it in `loss_kwargs`).
        key: PRNG key.
        chunk_size: samples per chunk; None means all K at once (values above K are clipped to K).

    Returns:
        [b] log-mean-exp of the K log weights.

    References:
        https://kexue.fm/archives/8791 ; Burda et al., arXiv:1509.00519.
    """
    num_samples = _check_positive_int('num_samples', num_samples)
    chunk = num_samples if chunk_size is None else min(_check_positive_int('chunk_size', chunk_size), num_samples)
    num_chunks = -(-num_samples // chunk)

    def chunk_log_sum(c):
        indices = c * chunk + jnp.arange(chunk)  # [chunk]
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
        log_w = jax.vmap(log_weight_fn)(keys)  # [chunk, b]
        log_w = jnp.where((indices < num_samples)[:, None], log_w, -jnp.inf)
        return jax.scipy.special.logsumexp(log_w, axis=0)  # [b]

    if num_chunks == 1:
        total = chunk_log_sum(0)
    else:
        def body(acc, c):
            # logaddexp keeps −∞ (the empty sum and the padding) exact and never overflows.
            return jnp.logaddexp(acc, chunk_log_sum(c)), None

        out = jax.eval_shape(chunk_log_sum, 0)
        init = jnp.full(out.shape, -jnp.inf, out.dtype)
        total, _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
    return total - math.log(num_samples)


def iwae_log_likelihood(model, x_flat: jax.Array, *, key: jax.Array, num_samples: int,
                        chunk_size=None) -> jax.Array:
    """Importance-sampled estimate of log q(x) with the encoder as proposal, per example.

    log q(x) ≈ log (1/K) Σ_k q(x|z_k) q(z_k)/p(z_k|x),  z_k = μ(x) + σ(x) ⊙ ε_k,  ε_k ~ N(0, I),

    a lower bound in expectation that tightens as K grows (exact for every K if p(z|x) is the true
    posterior). Works under `jax.jit` and is differentiable (the IWAE training objective).

    Args:
        model: has `encode(x_flat) -> (μ, log σ²)` and `log_likelihood(x_flat, z) -> [b]`.
        x_flat: [b, D].
        key: PRNG key; ε_k = normal(fold_in(key, k), [b, d]).
        num_samples: K >= 1 (configs set it in `loss_kwargs`).
        chunk_size: samples evaluated together (None: all K); need not divide K.

    Returns:
        [b] estimates of log q(x) in nats.

    References:
        https://kexue.fm/archives/8791 ; Burda et al., arXiv:1509.00519, eq. (8).
    """
    num_samples = _check_positive_int('num_samples', num_samples)
    if chunk_size is not None:
        _check_positive_int('chunk_size', chunk_size)
    if jnp.ndim(x_flat) != 2:
        raise ValueError(f"`x_flat` must be [b, D]; got shape {jnp.shape(x_flat)}")
    mean, log_var = model.encode(x_flat)

    def log_weight_fn(sample_key):
        z = reparameterize(mean, log_var, key=sample_key)
        return importance_log_weight(model, x_flat, z, mean, log_var)

    return importance_log_likelihood(log_weight_fn, num_samples, key=key, chunk_size=chunk_size)


def iwae_loss(model, batch, *, key: jax.Array, num_samples: int, levels: int = 256):
    """The K-sample IWAE loss: −mean_b log (1/K) Σ_k q(x|z_k) q(z_k)/p(z_k|x), in nats.

    The batch is preprocessed as the model's likelihood needs (dynamic binarisation for 'bernoulli',
    uniform dequantisation for 'gaussian'; see `kexue_jax.vae.vae.preprocess`). Key layout:
    `key_u, key_z = jax.random.split(key)`; the samples use `fold_in(key_z, k)`. K = 1 is the VAE loss
    with a one-sample (instead of analytic) KL; it equals `bernoulli_binarized_loss` in expectation.

    Args:
        model: a `VAE`.
        batch: dict with 'image' (uint8 [b, H, W, C]) and optionally 'levels'.
        key: this step's PRNG key.
        num_samples: K >= 1 (configs set it in `loss_kwargs`).
        levels: grey levels when the batch has no 'levels' (256 for MNIST, 17 for digits).

    Returns:
        (loss, aux): aux 'recon_nats' (mean −log q(x|z_k) over b and k), 'kl_nats' (analytic
        KL(p(z|x) ‖ q(z))), 'neg_elbo_nats' (their sum, the K = 1 bound's expectation) and
        'neg_iwae_nats' (= loss).

    References:
        https://kexue.fm/archives/8791 ; Burda et al., arXiv:1509.00519.
    """
    num_samples = _check_positive_int('num_samples', num_samples)
    key_u, key_z = jax.random.split(key)
    x_flat = preprocess(model, batch, key=key_u, levels=levels)
    mean, log_var = model.encode(x_flat)

    def sample_terms(sample_key):
        z = reparameterize(mean, log_var, key=sample_key)
        log_lik = model.log_likelihood(x_flat, z)
        log_w = log_lik + standard_normal_log_prob(z) - diagonal_gaussian_log_prob(z, mean, log_var)
        return log_w, log_lik

    keys = jax.vmap(lambda i: jax.random.fold_in(key_z, i))(jnp.arange(num_samples))
    log_w, log_lik = jax.vmap(sample_terms)(keys)  # [K, b] each
    loss = -jnp.mean(log_mean_exp(log_w, axis=0))
    recon = -jnp.mean(log_lik)
    kl = jnp.mean(gaussian_kl(mean, log_var))
    return loss, {'recon_nats': recon, 'kl_nats': kl, 'neg_elbo_nats': recon + kl, 'neg_iwae_nats': loss}

