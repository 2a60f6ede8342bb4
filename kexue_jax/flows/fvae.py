"""f-VAE: a VAE whose posterior is a conditional flow (kexue.fm/archives/5977).

The model is q(x) = ∫ q(z) q(x|z) dz with q(z) = N(0, I). The posterior sample is a conditional flow of
u ~ q(u) = N(0, I), z = F_x(u), invertible in u for every x. Writing p(z|x) for the density of F_x(u) and
changing variables in KL(p̃(x)p(z|x) ‖ q(z)q(x|z)) gives the article's general loss, per example

    L(x, u) = log q(u) − log q(x|F_x(u)) − log q(F_x(u)) − log|det ∂F_x(u)/∂u|,      u ~ N(0, I),

which with every constant kept is −log [q(x|z) q(z) / p(z|x)] at z = F_x(u): a one-sample estimate of the
negative ELBO, E_u L(x, u) = −ELBO(x) ≥ −log q(x). (`general_loss` is this formula.)

Special cases: F_x(u) = σ(x) ⊗ u + μ(x) is the VAE (log q(u) − log q(z) − Σ log σ averages to the
closed-form KL); F_x(u) = F(σu + x) with q(x|z) = N(x; F⁻¹(z), σ²) is a flow F trained on x + σu.

The article's model (`FVAE`, posterior_scale='scalar'):

    F_x(u) = F(σ₁u + E(x)),     q(x|z) = N(x; G(F⁻¹(z)), σ₂² I),

with an encoder E, a decoder G, an unconditional flow F and learned scalars σ₁, σ₂. With h = σ₁u + E(x)
(so F⁻¹(z) = h exactly: the decoder reads h, no inverse is computed) the per-example loss is

    ‖G(h) − x‖²/(2σ₂²) + D ln σ₂ + ½‖F(h)‖² − log|det J_F(h)| − d ln σ₁ − ½‖u‖²   (+ (D/2) ln 2π).

`posterior_scale='diagonal'` replaces σ₁ by a per-dimension σ(x) = σ₁·exp(head(E(x))) (zero-initialised
head); with `num_couplings=0` (F = identity) this is exactly the Gaussian VAE with encoder (E(x), σ(x)) and
decoder G, the baseline "VAE with the same E/G" (spec generative.md §3.5).

Sampling: z ~ N(0, T² I) (temperature T; the article shows T = 0…1 and uses 0.8), h = F⁻¹(z), x = G(h).

Departures from Su's `f-VAEs.py` (CelebA-HQ, conv): E and G here are residual MLP stacks
x + W₂ ReLU(W₁ x) (W₂ zero-initialised, so E and G start as the identity, like his zero-init 1×1 convs;
no batch norm), and F is a chain of [ActNorm, fixed shuffle, additive coupling with an MLP conditioner] on
the flat latent -- his Glow-style F is multi-scale with split priors. σ₁, σ₂ start at 1 as his zero-init
scale-only actnorms do, unless `sigma1_init`/`sigma2_init` say otherwise.

Data and bits/dim (as the flows): integer images x ∈ {0…L−1}^D are dequantised y = (x + u')/L − ½,
u' ~ U[0, 1)^D. The bound is a bound on −log q(y) of the model's continuous density q on R^D, so

    bits/dim = (−ELBO_nats + D ln L)/(D ln 2) ≥ (−log q(y) + D ln L)/(D ln 2) ≥ −log₂ P(x)/D (in expectation),

directly comparable to the flows' `flow_loss` and the Gaussian baselines of `kexue_jax.data.baselines`.

References:
    https://kexue.fm/archives/5977 (f-VAEs：Glow与VAEs的联姻)
    Su & Wu, "f-VAEs: Improve VAEs with Conditional Flows", arXiv:1809.05861.
"""
from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.flows.bijector import (ActNorm, AdditiveCoupling, Chain, MLPConditioner, Permute, _check_int,
                                      interleaved_mask, standard_normal_log_prob)
from kexue_jax.flows.likelihood import bits_per_dim, check_levels, dequantize
from kexue_jax.flows.train import _pad_to_chunks

__all__ = ["FVAE", "ResidualMLP", "general_loss", "fvae_loss", "evaluate", "POSTERIOR_SCALES",
           "EVAL_DEQUANT_SEED", "SAMPLE_TEMPERATURES"]

POSTERIOR_SCALES = ("scalar", "diagonal")
EVAL_DEQUANT_SEED = 0
SAMPLE_TEMPERATURES = (0.0, 0.5, 0.7, 0.8, 1.0)  # the flows' 0.5/0.7/1.0 and the article's 0 and 0.8
_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------------
# The maths: pure functions of arrays, per example.


def general_loss(u: jax.Array, z: jax.Array, log_det_u: jax.Array, log_likelihood: jax.Array) -> jax.Array:
    """The f-VAE general loss L = log q(u) − log q(x|z) − log q(z) − log|det ∂F_x(u)/∂u|, per example.

    Args:
      u: the flow's input noise [b, d] (u ~ N(0, I)).
      z: F_x(u) [b, d].
      log_det_u: log|det ∂F_x(u)/∂u| [b].
      log_likelihood: log q(x|z) [b] in nats.
    Returns:
      [b] in nats; −log of the importance weight q(x|z)q(z)/p(z|x), so its mean over u is −ELBO(x).

    References:
      https://kexue.fm/archives/5977 (the loss after the change of variables z = F_x(u)).
    """
    if jnp.shape(u) != jnp.shape(z) or jnp.ndim(u) != 2:
        raise ValueError(f"`z` must have the shape of `u` [b, d] {jnp.shape(u)}; got {jnp.shape(z)}")
    for name, a in (("log_det_u", log_det_u), ("log_likelihood", log_likelihood)):
        if jnp.shape(a) != jnp.shape(u)[:1]:
            raise ValueError(f"`{name}` must have shape [b] = {jnp.shape(u)[:1]}; got {jnp.shape(a)}")
    return standard_normal_log_prob(u) - log_likelihood - standard_normal_log_prob(z) - log_det_u


def _gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """log N(x; mean, σ² I) with a scalar log σ: [b, D] -> [b]."""
    d = x.shape[1]
    return (-0.5 * jnp.sum(jnp.square(x - mean), axis=1) * jnp.exp(-2.0 * log_sigma)
            - d * log_sigma - 0.5 * d * _LOG_2PI)


# ----------------------------------------------------------------------------------------------------
# Modules.


class ResidualMLP(nnx.Module):
    """h ← h + W₂ ReLU(W₁ h + b₁) + b₂, `num_blocks` times, on [b, features]; W₂, b₂ zero-initialised, so
    the stack starts as the identity (Su's residual steps end in a zero-initialised 1×1 conv)."""

    def __init__(self, features: int, *, hidden: int, num_blocks: int, rngs: nnx.Rngs):
        self.features = _check_int(features, "features", 1)
        _check_int(hidden, "hidden", 1)
        _check_int(num_blocks, "num_blocks", 0)
        self.inner = nnx.List([nnx.Linear(self.features, hidden, rngs=rngs) for _ in range(num_blocks)])
        self.outer = nnx.List([nnx.Linear(hidden, self.features, kernel_init=nnx.initializers.zeros,
                                          bias_init=nnx.initializers.zeros, rngs=rngs) for _ in range(num_blocks)])

    def __call__(self, h: jax.Array) -> jax.Array:
        for w1, w2 in zip(self.inner, self.outer):
            h = h + w2(jax.nn.relu(w1(h)))
        return h


def _check_positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0; got {value!r}")
    return float(value)


class FVAE(nnx.Module):
    """The f-VAE of kexue.fm/archives/5977 on [b, *event_shape] data (flattened to D features).

    Args:
      event_shape: shape of one example, e.g. (8, 8, 1).
      latent_dim: d, the size of z (default D: the article's "no dimension reduction"). When d ≠ D, E ends
        and G starts with a linear map between D and d.
      num_encoder_blocks, num_decoder_blocks: residual blocks of E and G (0: the identity, when d = D).
      hidden: hidden width of each residual block.
      num_couplings: additive couplings of F (0: F is the identity).
      flow_hidden: hidden widths of each coupling's MLP conditioner.
      posterior_scale: 'scalar' (the article: one σ₁) or 'diagonal' (σ(x) per dimension; with
        num_couplings=0 the Gaussian VAE).
      sigma1_init, sigma2_init: initial σ₁ and σ₂ (Su: 1).
      levels: grey levels of the data (17 for digits); checked by `fvae_loss`.
      rngs: parameter initialisation.
    """

    def __init__(self, *, event_shape: Sequence[int], latent_dim: int | None = None, num_encoder_blocks: int = 2,
                 num_decoder_blocks: int = 2, hidden: int = 256, num_couplings: int = 6,
                 flow_hidden: Sequence[int] = (128, 128), posterior_scale: str = "scalar",
                 sigma1_init: float = 1.0, sigma2_init: float = 1.0, levels: int = 256, rngs: nnx.Rngs):
        if (not isinstance(event_shape, (tuple, list)) or not event_shape
                or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in event_shape)):
            raise ValueError(f"`event_shape` must be a non-empty sequence of positive integers; got {event_shape!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_dims = int(np.prod(self.event_shape))
        self.latent_dim = self.num_dims if latent_dim is None else _check_int(latent_dim, "latent_dim", 1)
        self.levels = check_levels(levels)
        if posterior_scale not in POSTERIOR_SCALES:
            raise ValueError(f"`posterior_scale` must be one of {list(POSTERIOR_SCALES)}; got {posterior_scale!r}")
        self.posterior_scale = posterior_scale
        num_couplings = _check_int(num_couplings, "num_couplings", 0)
        _check_int(num_encoder_blocks, "num_encoder_blocks", 0)  # 0: E is the identity (d = D)
        _check_int(num_decoder_blocks, "num_decoder_blocks", 0)
        flow_hidden = tuple(_check_int(h, "flow_hidden", 1) for h in flow_hidden)
        if num_couplings and self.latent_dim < 2:
            raise ValueError(f"`latent_dim` must be >= 2 for couplings to split it; got {self.latent_dim}")
        d, big_d = self.latent_dim, self.num_dims
        self.encoder_in = None if d == big_d else nnx.Linear(big_d, d, rngs=rngs)
        self.encoder = ResidualMLP(d, hidden=hidden, num_blocks=num_encoder_blocks, rngs=rngs)
        self.decoder = ResidualMLP(d, hidden=hidden, num_blocks=num_decoder_blocks, rngs=rngs)
        self.decoder_out = None if d == big_d else nnx.Linear(d, big_d, rngs=rngs)
        # zero-initialised: σ(x) starts at σ₁ in every dimension
        self.log_scale_head = nnx.Linear(d, d, kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros,
                                         rngs=rngs) if posterior_scale == "diagonal" else None
        self.log_sigma1 = nnx.Param(jnp.asarray(math.log(_check_positive_number(sigma1_init, "sigma1_init"))))
        self.log_sigma2 = nnx.Param(jnp.asarray(math.log(_check_positive_number(sigma2_init, "sigma2_init"))))
        steps = []
        for i in range(num_couplings):
            # ActNorm and the coupling's zero-initialised conditioner start as the identity
            steps += [ActNorm(d), Permute.shuffle(d, seed=i),
                      AdditiveCoupling(MLPConditioner(d, d, hidden=flow_hidden, rngs=rngs),
                                       mask=interleaved_mask(d, parity=i % 2))]
        self.flow = Chain(steps) if steps else None

    # -- checks ------------------------------------------------------------------------------------

    def _flat_data(self, x: jax.Array, name: str = "x") -> jax.Array:
        """[b, *event_shape] or [b, D] -> [b, D]."""
        shape = tuple(jnp.shape(x))
        if len(shape) < 2 or (shape[1:] != self.event_shape and shape[1:] != (self.num_dims,)):
            raise ValueError(f"`{name}` must have event shape {self.event_shape} (or ({self.num_dims},)); got shape "
                             f"{shape}")
        return jnp.reshape(x, (shape[0], self.num_dims))  # [b, *event] -> [b, D]

    def _check_latent(self, z: jax.Array, name: str, batch: int | None = None) -> None:
        want = (jnp.shape(z)[0] if batch is None else batch, self.latent_dim)
        if jnp.ndim(z) != 2 or tuple(jnp.shape(z)) != want:
            raise ValueError(f"`{name}` must have shape [b, latent_dim] = {want}; got {tuple(jnp.shape(z))}")

    # -- the pieces ---------------------------------------------------------------------------------

    def encode(self, x_flat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """E(x) [b, d] and the posterior log-scale log σ₁ (broadcast, 'scalar') or log σ(x) ('diagonal')."""
        h = x_flat if self.encoder_in is None else self.encoder_in(x_flat)
        mean = self.encoder(h)
        log_sigma = jnp.broadcast_to(self.log_sigma1[...].astype(mean.dtype), mean.shape)
        if self.log_scale_head is not None:
            log_sigma = log_sigma + self.log_scale_head(mean)
        return mean, log_sigma

    def decode(self, h: jax.Array) -> jax.Array:
        """G(h): the mean of q(x|z) at h = F⁻¹(z), [b, d] -> [b, D]."""
        self._check_latent(h, "h")
        x = self.decoder(h)
        return x if self.decoder_out is None else self.decoder_out(x)

    def flow_forward(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z = F(h) and log|det J_F(h)| [b]."""
        if self.flow is None:
            return h, jnp.zeros(h.shape[:1], h.dtype)
        return self.flow.forward_and_log_det(h)

    def flow_inverse(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """h = F⁻¹(z) and log|det J_{F⁻¹}(z)| [b]."""
        self._check_latent(z, "z")
        if self.flow is None:
            return z, jnp.zeros(z.shape[:1], z.dtype)
        return self.flow.inverse_and_log_det(z)

    def conditional_flow(self, x_flat: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """z = F_x(u) = F(σ₁u + E(x)), log|det ∂z/∂u| = Σ log σ + log|det J_F(h)|, and h = σ₁u + E(x)."""
        x_flat = self._flat_data(x_flat)
        self._check_latent(u, "u", batch=x_flat.shape[0])
        mean, log_sigma = self.encode(x_flat)
        h = jnp.exp(log_sigma) * u + mean
        z, log_det_f = self.flow_forward(h)
        return z, jnp.sum(log_sigma, axis=1) + log_det_f, h

    def loss_terms(self, x: jax.Array, u: jax.Array) -> dict[str, jax.Array]:
        """The general loss at x (data [b, *event_shape] or [b, D]) and u [b, d], with its parts, each [b]:
        'loss' = L(x, u); 'recon' = −log q(x|z); 'kl' = log q(u) − log q(z) − log|det ∂z/∂u| (a one-sample
        estimate of KL(p(z|x) ‖ q(z)))."""
        x_flat = self._flat_data(x)
        z, log_det_u, h = self.conditional_flow(x_flat, u)
        log_lik = _gaussian_log_likelihood(x_flat, self.decode(h), self.log_sigma2[...].astype(x_flat.dtype))
        loss = general_loss(u, z, log_det_u, log_lik)
        return {"loss": loss, "recon": -log_lik, "kl": loss + log_lik}

    def sample(self, n: int, *, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """x = G(F⁻¹(T·ε)), ε ~ N(0, I): n decoder means [n, *event_shape] (T = 0 gives G(F⁻¹(0)))."""
        n = _check_int(n, "n", 1)
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or temperature < 0:
            raise ValueError(f"`temperature` must be a number >= 0; got {temperature!r}")
        z = temperature * jax.random.normal(key, (n, self.latent_dim))
        h, _ = self.flow_inverse(z)
        return self.decode(h).reshape((n,) + self.event_shape)  # [n, D] -> [n, *event_shape]

    def reconstruct(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """G(σ₁u + E(x)) with u ~ N(0, I) from `key`, or u = 0 (G(E(x))) without one: [b, *event_shape]."""
        x_flat = self._flat_data(x)
        mean, log_sigma = self.encode(x_flat)
        h = mean if key is None else mean + jnp.exp(log_sigma) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(h).reshape((x_flat.shape[0],) + self.event_shape)


# ----------------------------------------------------------------------------------------------------
# Trainer-facing loss and evaluation.


def _check_images(model: FVAE, images: jax.Array, name: str = "batch['image']") -> None:
    if tuple(jnp.shape(images)[1:]) != model.event_shape or jnp.ndim(images) != len(model.event_shape) + 1:
        raise ValueError(f"`{name}` must have event shape {model.event_shape}; got shape {tuple(jnp.shape(images))}")


def _centred_flat(model: FVAE, images: jax.Array, *, key: jax.Array, levels: int) -> jax.Array:
    """Dequantised images shifted to [−½, ½), flattened: [b, *event_shape] -> [b, D]."""
    _check_images(model, images)
    y = dequantize(images, key=key, levels=levels) - 0.5
    return y.reshape(y.shape[0], model.num_dims)  # [b, *event] -> [b, D]


def fvae_loss(model: FVAE, batch: dict, *, key: jax.Array, levels: int = 17) -> tuple[jax.Array, dict]:
    """Mean one-sample negative ELBO of uniformly dequantised integer images, in bits/dim.

    loss = mean_b [(L(y_b, u_b) + D·ln L)/(D·ln 2)],  y = (x + u')/L − ½,  u' ~ U[0, 1)^D,  u ~ N(0, I),

    where L(y, u) is `general_loss` (all constants kept): an unbiased estimate of −ELBO(y) ≥ −log q(y) for
    the f-VAE's continuous density q(y) = ∫ N(z; 0, I) N(y; G(F⁻¹(z)), σ₂² I) dz on R^D, so the bits/dim is
    comparable to `kexue_jax.flows.flow_loss` and the Gaussian baselines.

    Args:
      model: an `FVAE`.
      batch: {'image': integer array [b, *event_shape]}.
      key: the step's key: `key_y, key_u = jax.random.split(key)` (dequantisation, posterior noise).
      levels: grey levels of the data; must equal `model.levels`.
    Returns:
      (loss, {'bpd', 'neg_elbo_nats', 'recon_nats', 'kl_nats', 'sigma1', 'sigma2'}); nats are per image.
    """
    levels = check_levels(levels)
    if model.levels != levels:
        raise ValueError(f"`levels` must equal the model's levels ({model.levels}); got {levels}")
    _check_images(model, batch["image"])
    key_y, key_u = jax.random.split(key)
    y = _centred_flat(model, batch["image"], key=key_y, levels=levels)
    u = jax.random.normal(key_u, (y.shape[0], model.latent_dim), y.dtype)
    terms = model.loss_terms(y, u)
    bpd = jnp.mean(bits_per_dim(-terms["loss"], model.num_dims, levels))
    return bpd, {"bpd": bpd, "neg_elbo_nats": jnp.mean(terms["loss"]), "recon_nats": jnp.mean(terms["recon"]),
                 "kl_nats": jnp.mean(terms["kl"]), "sigma1": jnp.exp(model.log_sigma1[...]),
                 "sigma2": jnp.exp(model.log_sigma2[...])}


def _config_int(config: Any, name: str, default: int) -> int:
    value = config.get(name, default) if config is not None else default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
    return int(value)


def evaluate(model: FVAE, dataset: Any, *, key: jax.Array, config: Any, workdir: str | None) -> dict[str, float]:
    """Test −ELBO and the K-sample importance-sampled NLL in bits/dim, baselines, sample grids.

    The test split is dequantised once with `jax.random.key(EVAL_DEQUANT_SEED)` (independent of `key`).
    Per image: −ELBO is averaged over `eval_elbo_samples` (default 8) draws of u, and

        log q(y) ≈ log (1/K) Σ_k exp(−L(y, u_k)),   u_k ~ N(0, I),   K = `eval_num_samples` (default 1000),

    the importance-sampled estimate with the conditional-flow posterior as proposal (kexue.fm/archives/8791;
    exp(−L) is exactly q(y|z)q(z)/p(z|y) at z = F_y(u)), a stochastic lower bound on log q(y) that tightens
    with K. When `config.dataset` is set, the uniform / diagonal / full Gaussian baselines of
    `kexue_jax.data.baselines` are computed on the same split. Figures (when `workdir` is given):
    `samples_T{T}.png` for T in SAMPLE_TEMPERATURES and `reconstructions.png` (input, G(E(x)) pairs).

    Returns:
      {'test/neg_elbo_bpd', 'test/neg_elbo_nats', 'test/recon_nats', 'test/kl_nats', 'test/nll_iwae_bpd',
       'test/nll_iwae_nats', 'test/sigma1', 'test/sigma2'} plus 'test/baseline_*_bpd'.
    """
    from kexue_jax.vae.importance import importance_log_likelihood

    images = np.asarray(dataset.arrays["image"])
    levels = check_levels(dataset.levels)
    if tuple(images.shape[1:]) != model.event_shape:
        raise ValueError(f"`dataset.arrays['image']` must be [N, *{model.event_shape}]; got {images.shape}")
    num_samples = _config_int(config, "eval_num_samples", 1000)
    elbo_samples = _config_int(config, "eval_elbo_samples", 8)
    batch_size = _config_int(config, "eval_batch_size", 100)
    sample_chunk = min(_config_int(config, "eval_sample_chunk_size", 100), num_samples)
    n = images.shape[0]
    padded, num_chunks = _pad_to_chunks(images, batch_size)
    graphdef, state = nnx.split(model)
    key_elbo, key_iwae, key_sample, key_recon = jax.random.split(key, 4)
    dequant_key = jax.random.key(EVAL_DEQUANT_SEED)

    @jax.jit
    def chunk_metrics(state, chunk, i):
        m = nnx.merge(graphdef, state)
        y = _centred_flat(m, chunk, key=jax.random.fold_in(dequant_key, i), levels=levels)

        def terms(k):
            return m.loss_terms(y, jax.random.normal(k, (y.shape[0], m.latent_dim), y.dtype))

        t = jax.vmap(terms)(jax.random.split(jax.random.fold_in(key_elbo, i), elbo_samples))  # each [S, b]
        log_px = importance_log_likelihood(lambda k: -terms(k)["loss"], num_samples,
                                           key=jax.random.fold_in(key_iwae, i), chunk_size=sample_chunk)
        return jnp.mean(t["loss"], 0), jnp.mean(t["recon"], 0), jnp.mean(t["kl"], 0), log_px

    outs = [chunk_metrics(state, padded[i * batch_size:(i + 1) * batch_size], i) for i in range(num_chunks)]
    neg_elbo, recon, kl, log_px = (np.concatenate([np.asarray(o[j], np.float64) for o in outs])[:n]
                                   for j in range(4))
    d = model.num_dims
    results = {
        "test/neg_elbo_nats": float(np.mean(neg_elbo)),
        "test/neg_elbo_bpd": float(np.mean(bits_per_dim(-neg_elbo, d, levels))),
        "test/recon_nats": float(np.mean(recon)),
        "test/kl_nats": float(np.mean(kl)),
        "test/nll_iwae_nats": float(-np.mean(log_px)),
        "test/nll_iwae_bpd": float(np.mean(bits_per_dim(log_px, d, levels))),
        "test/sigma1": float(np.exp(np.asarray(model.log_sigma1[...]))),
        "test/sigma2": float(np.exp(np.asarray(model.log_sigma2[...]))),
    }
    dataset_name = config.get("dataset") if config is not None else None
    if dataset_name:
        from kexue_jax.data import baselines, load

        train = load(dataset_name, "train", data_dir=config.get("data_dir"))
        for kind in ("uniform", "diagonal", "full"):
            label = {"uniform": "uniform", "diagonal": "diagonal_gaussian", "full": "full_gaussian"}[kind]
            results[f"test/baseline_{label}_bpd"] = baselines.gaussian_baseline_bpd(train, dataset, kind=kind)

    if workdir is not None and len(model.event_shape) in (2, 3):
        from kexue_jax.core.metrics import save_image_grid

        os.makedirs(workdir, exist_ok=True)

        @functools.partial(jax.jit, static_argnums=2)
        def draw(state, k, t):
            return nnx.merge(graphdef, state).sample(64, key=k, temperature=t)

        name = "VAE (no F)" if model.flow is None and model.posterior_scale == "diagonal" else "f-VAE"
        for i, t in enumerate(SAMPLE_TEMPERATURES):
            samples = np.clip(np.asarray(draw(state, jax.random.fold_in(key_sample, i), t)) + 0.5, 0.0, 1.0)
            save_image_grid(samples, os.path.join(workdir, f"samples_T{t}.png"), ncol=8,
                            title=f"{name} samples, temperature {t}")
        shown = (images[:32].astype(np.float32) + 0.5) / levels - 0.5
        recon = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s).reconstruct(x))(state, shown))
        pairs = np.stack([shown, recon], axis=1).reshape((64,) + model.event_shape)  # input, G(E(x))
        save_image_grid(np.clip(pairs + 0.5, 0.0, 1.0), os.path.join(workdir, "reconstructions.png"), ncol=8,
                        title=f"{name}: input | G(E(x))")
    return results


def check_config(config: Any) -> None:
    """The keys only `evaluate` reads (same defaults), checked by the shared trainer before training."""
    from kexue_jax.core.config import check_int

    for key, default in (("eval_num_samples", 1000), ("eval_elbo_samples", 8), ("eval_batch_size", 100),
                         ("eval_sample_chunk_size", 100)):
        check_int(config.get(key, default), key)


evaluate.check_config = check_config
