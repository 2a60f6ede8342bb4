"""DDPM as the blog derives it ("DDPM = 自回归式VAE"): the training loss, the ELBO in bits/dim, ancestral sampling.

Notation of kexue.fm/archives/9152 (p is the forward/encoder process, q the generator — the reverse of Ho
et al.; α, β are standard deviations, see `kexue_jax.diffusion.schedules` for the map to Ho/Karras):
  p(x_t|x_{t−1}) = N(α_t x_{t−1}, β_t² I),   p(x_t|x₀) = N(ᾱ_t x₀, β̄_t² I),
  q(x_{t−1}|x_t) = N(μ(x_t), σ_t² I),          μ(x_t) = (x_t − (β_t²/β̄_t) ε_θ(x_t, t))/α_t.
Per step the KL between the joint forward and reverse chains contributes
  β_t⁴/(2 β̄_t² α_t² σ_t²) · E‖ε − ε_θ(ᾱ_t x₀ + β̄_t ε, t)‖²  (+ a constant in θ),
and the blog (like Ho et al.) drops the weight: loss = E_{t, x₀, ε} ‖ε − ε_θ(ᾱ_t x₀ + β̄_t ε, t)‖², summed over
dimensions (the blog's experience: the mean makes the losses tiny and training diverged). σ_t has two
derivable choices: σ_t = β_t (data ~ N(0, I)) and σ_t = β̄_{t−1}β_t/β̄_t (data = one point); they are
'beta' and 'posterior' here.

Data: images (uint8, `levels` grey levels) are dequantised and scaled to [−1, 1], x₀ = 2(x + u)/levels − 1,
u ~ U[0, 1)^D, so that the continuous ELBO bounds the discrete likelihood and converts to bits/dim with
bin width 2/levels: bpd = (−ELBO + D ln(levels/2))/(D ln 2). 2-D data ('x') are used as they are. The
decoder p(x₀|x₁) is the continuous Gaussian of the last reverse step, not Ho et al.'s discretised decoder,
so these bits/dim bound the same likelihood differently and are not directly comparable to Ho's.

The network convention is `model(x_t, t)` with the article's integer step t ∈ {1..T} (an NNX module with a
learned time embedding of T + 1 rows, as in the author's code; row 0 is unused).

References:
  https://kexue.fm/archives/9152 ; Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models",
  arXiv:2006.11239 (2020); the author's code bojone/Keras-DDPM (ddpm.py).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.diffusion.schedules import DDPMSchedule, make_schedule

__all__ = ["SIGMAS", "WEIGHTINGS", "prepare_batch", "sigma_choice", "step_weight", "ddpm_loss_terms", "ddpm_loss",
           "elbo_terms", "prior_kl", "negative_elbo", "elbo_bits_per_dim", "ddpm_sample", "TimeMLP", "evaluate",
           "to_images"]

SIGMAS = ("beta", "posterior")
WEIGHTINGS = ("simple", "elbo")


# ----------------------------------------------------------------------------------------------- data


def prepare_batch(batch: dict, *, key: jax.Array, levels: int | None = None, data_key: str | None = None
                  ) -> jax.Array:
    """The model-space data x₀ of a batch: dequantised images in [−1, 1], or the 2-D points as they are.

    Args:
      batch: {'image': uint8 [b, h, w, c], ...} or {'x': float [b, d], ...}.
      key: key of the dequantisation noise u ~ U[0, 1) (images only).
      levels: number of grey levels (17 for digits, 256 for 8-bit images); required for images.
      data_key: which entry to use; default 'image' if present, else 'x'.
    Returns:
      float32 [b, ...]: 2(image + u)/levels − 1, or batch['x'].
    """
    if data_key is None:
        data_key = "image" if "image" in batch else "x"
    if data_key not in batch:
        raise ValueError(f"`data_key` must name an entry of the batch {sorted(batch)}; got {data_key!r}")
    data = jnp.asarray(batch[data_key])
    if data_key != "image":
        return data.astype(jnp.float32)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"`levels` must be an int >= 2 for image data; got {levels!r}")
    u = jax.random.uniform(key, data.shape, jnp.float32)
    return 2.0 * (data.astype(jnp.float32) + u) / levels - 1.0


def to_images(x: jax.Array, levels: int) -> jax.Array:
    """Model space [−1, 1] back to integer grey levels 0..levels−1 (the bin that x falls in), float32."""
    return jnp.clip(jnp.floor((x + 1.0) * levels / 2.0), 0, levels - 1)


def _schedule(schedule, num_timesteps: int) -> DDPMSchedule:
    if isinstance(schedule, DDPMSchedule):
        return schedule
    return make_schedule(schedule, num_timesteps)


# ----------------------------------------------------------------------------------------------- σ_t and weights


def sigma_choice(schedule: DDPMSchedule, sigma: str = "beta") -> np.ndarray:
    """σ_t of the generator q(x_{t−1}|x_t), float64 [T + 1] (σ_0 = 0).

    'beta': σ_t = β_t (optimal when the data are N(0, I)); 'posterior': σ_t = β̄_{t−1}β_t/β̄_t (optimal when the
    data are one point; σ_1 = 0).

    References:
      https://kexue.fm/archives/9152 (section 方差选择).
    """
    if sigma not in SIGMAS:
        raise ValueError(f"`sigma` must be one of {list(SIGMAS)}; got {sigma!r}")
    if sigma == "beta":
        return schedule.beta.copy()
    out = np.zeros_like(schedule.beta)
    out[1:] = schedule.bar_beta[:-1] * schedule.beta[1:] / schedule.bar_beta[1:]
    return out


def _elbo_sigma(schedule: DDPMSchedule, sigma: str) -> np.ndarray:
    # The 'posterior' choice has σ_1 = 0 (a point mass decoder): the ELBO uses σ_1 = β_1 for both.
    s = sigma_choice(schedule, sigma)
    s[1] = schedule.beta[1]
    return s


def step_weight(schedule: DDPMSchedule, sigma: str = "beta") -> np.ndarray:
    """w_t = β_t⁴/(2 β̄_t² α_t² σ_t²) [T + 1] (w_0 = 0): the ELBO's weight on ‖ε − ε_θ‖² at step t.

    (σ_1 = β_1 for both choices, see `_elbo_sigma`.)
    """
    s = _elbo_sigma(schedule, sigma)
    w = np.zeros_like(s)
    a, b, bb = schedule.alpha[1:], schedule.beta[1:], schedule.bar_beta[1:]
    w[1:] = b ** 4 / (2.0 * bb ** 2 * a ** 2 * s[1:] ** 2)
    return w


def _elbo_constants(schedule: DDPMSchedule, sigma: str) -> np.ndarray:
    """Per-dimension constants c_t [T + 1] of the step-t ELBO term (float64).

    t >= 2: KL of two Gaussians with variances σ̃_t², σ_t² (σ̃_t = β̄_{t−1}β_t/β̄_t): ½(r − 1 − ln r), r = σ̃_t²/σ_t².
    t = 1: the decoder −log N(x₀; μ(x₁), σ_1²) contributes ½ ln(2πσ_1²).
    """
    s = _elbo_sigma(schedule, sigma)
    c = np.zeros_like(s)
    tilde = schedule.bar_beta[1:-1] * schedule.beta[2:] / schedule.bar_beta[2:]  # σ̃_t, t = 2..T
    r = tilde ** 2 / s[2:] ** 2
    c[2:] = 0.5 * (r - 1.0 - np.log(r))
    c[1] = 0.5 * math.log(2 * math.pi * s[1] ** 2)
    return c


# ----------------------------------------------------------------------------------------------- loss


def ddpm_loss_terms(eps_fn: Callable, x0: jax.Array, t: jax.Array, eps: jax.Array, schedule: DDPMSchedule,
                    weighting: str = "simple", sigma: str = "beta") -> jax.Array:
    """Per-example w_t Σ_dims (ε − ε_θ(ᾱ_t x₀ + β̄_t ε, t))² for given steps and noises (deterministic).

    Args:
      eps_fn: ε_θ(x_t [b, ...], t int32 [b]) -> [b, ...].
      x0: data [b, ...]; t: int [b] in 1..T; eps: noise [b, ...].
      schedule: the DDPMSchedule.
      weighting: 'simple' (w_t = 1, the blog's and Ho's loss) or 'elbo' (w_t = `step_weight`).
      sigma: σ_t choice used by the 'elbo' weight.
    Returns:
      float [b].
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {list(WEIGHTINGS)}; got {weighting!r}")
    e = lambda c: c.reshape(c.shape + (1,) * (x0.ndim - 1))
    bar_alpha = jnp.asarray(schedule.bar_alpha, x0.dtype)[t]
    bar_beta = jnp.asarray(schedule.bar_beta, x0.dtype)[t]
    x_t = e(bar_alpha) * x0 + e(bar_beta) * eps
    err = eps - eps_fn(x_t, t)
    sq = jnp.sum((err ** 2).reshape(x0.shape[0], -1), axis=-1)  # [b]
    if weighting == "simple":
        return sq
    return jnp.asarray(step_weight(schedule, sigma), x0.dtype)[t] * sq


def ddpm_loss(model, batch: dict, *, key: jax.Array, schedule: str | DDPMSchedule = "article",
              num_timesteps: int = 1000, weighting: str = "simple", sigma: str = "beta",
              levels: int | None = None, data_key: str | None = None):
    """The blog's DDPM loss E_{t, x₀, ε} w_t ‖ε − ε_θ(ᾱ_t x₀ + β̄_t ε, t)‖² (sum over dimensions, mean over batch).

    t ~ U{1..T}, ε ~ N(0, I). With weighting='simple' (default) this is the blog's final loss; 'elbo' keeps the
    per-step weight β_t⁴/(2β̄_t²α_t²σ_t²) so that T·loss is the θ-dependent part of the negative ELBO.

    Args:
      model: ε_θ, called as model(x_t [b, ...], t int32 [b]).
      batch: {'image': uint8} or {'x': float}; see `prepare_batch`.
      key: this step's key, split as (dequantisation, t, ε) = jax.random.split(key, 3).
      schedule: 'article' | 'linear' | 'cosine' or a DDPMSchedule; num_timesteps: T.
      weighting: 'simple' or 'elbo'; sigma: 'beta' or 'posterior' (only used by 'elbo').
      levels, data_key: see `prepare_batch`.
    Returns:
      (loss, {'mse_per_dim': unweighted mean of (ε − ε_θ)² per dimension}).

    References:
      https://kexue.fm/archives/9152 (eq. of 降低方差 and 遗留问题 sections); Ho et al. 2020, eq. 14.
    """
    sched = _schedule(schedule, num_timesteps)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {list(WEIGHTINGS)}; got {weighting!r}")
    if sigma not in SIGMAS:
        raise ValueError(f"`sigma` must be one of {list(SIGMAS)}; got {sigma!r}")
    key_data, key_t, key_eps = jax.random.split(key, 3)
    x0 = prepare_batch(batch, key=key_data, levels=levels, data_key=data_key)
    b = x0.shape[0]
    t = jax.random.randint(key_t, (b,), 1, sched.num_steps + 1)
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    terms = ddpm_loss_terms(model, x0, t, eps, sched, weighting, sigma)
    plain = terms if weighting == "simple" else ddpm_loss_terms(model, x0, t, eps, sched, "simple")
    return jnp.mean(terms), {"mse_per_dim": jnp.mean(plain) / np.prod(x0.shape[1:])}


# ----------------------------------------------------------------------------------------------- ELBO


def prior_kl(x0: jax.Array, schedule: DDPMSchedule) -> jax.Array:
    """KL(p(x_T|x₀) ‖ N(0, I)) = ½ Σ (ᾱ_T² x₀² + β̄_T² − 1 − ln β̄_T²) per example [b] (nats)."""
    a, b = float(schedule.bar_alpha[-1]), float(schedule.bar_beta[-1])
    d = np.prod(x0.shape[1:])
    sq = jnp.sum((x0 ** 2).reshape(x0.shape[0], -1), axis=-1)
    return 0.5 * (a ** 2 * sq + d * (b ** 2 - 1.0 - 2.0 * math.log(b)))


def elbo_terms(eps_fn: Callable, x0: jax.Array, t: jax.Array, eps: jax.Array, schedule: DDPMSchedule,
               sigma: str = "beta") -> jax.Array:
    """The step-t term L_t of the negative ELBO per example [b] (nats), at given t [b] and ε.

    t >= 2: KL(p(x_{t−1}|x_t, x₀) ‖ q(x_{t−1}|x_t)) = D c_t + w_t ‖ε − ε_θ(x_t, t)‖²;
    t = 1:  −log q(x₀|x₁) = D ½ ln(2πσ_1²) + w_1 ‖ε − ε_θ(x_1, 1)‖²   (σ_1 = β_1 for both σ choices),
    with w_t = β_t⁴/(2β̄_t²α_t²σ_t²) and c_t = ½(σ̃_t²/σ_t² − 1 − ln(σ̃_t²/σ_t²)), σ̃_t = β̄_{t−1}β_t/β̄_t. Averaged
    over ε ~ N(0, I) this is the exact step term (p(x_{t−1}|x_t, x₀) has mean (x_t − (β_t²/β̄_t)ε)/α_t).

    References:
      https://kexue.fm/archives/9152 ; Ho et al. 2020, eq. 5 and 12.
    """
    d = np.prod(x0.shape[1:])
    w = ddpm_loss_terms(eps_fn, x0, t, eps, schedule, "elbo", sigma)
    return d * jnp.asarray(_elbo_constants(schedule, sigma), x0.dtype)[t] + w


def negative_elbo(eps_fn: Callable, x0: jax.Array, *, key: jax.Array, schedule: DDPMSchedule,
                  sigma: str = "beta", num_t: int | None = None, exact_first_step: bool = True) -> jax.Array:
    """Unbiased estimate of −ELBO = KL_prior + Σ_{t=1}^T L_t per example [b] (nats).

    The T steps are split into `num_t` equal strata of width w = T/num_t; one t per stratum is drawn
    uniformly (stratified sampling) and Σ_t L_t ≈ w Σ_k L_{t_k}, with one ε per draw. num_t = T evaluates
    every step. With `exact_first_step` (default) the decoder term L_1 is always evaluated, weight 1, and
    the first stratum draws from {2, …, w} with weight w − 1: L_1 (−½D ln(2πσ₁²) plus a reconstruction
    term) differs from every other L_t by orders of magnitude, and drawing it with probability 1/w and
    weight w dominates the estimator's variance (about ±1.2 bits/dim on 297 digits at w = 10).

    Args:
      eps_fn: ε_θ(x_t, t); x0: [b, ...] model-space data; key: randomness for t and ε.
      schedule: DDPMSchedule; sigma: 'beta' | 'posterior'; num_t: strata, a divisor of T (default T).
      exact_first_step: evaluate L_1 exactly (no effect when num_t = T).
    Returns:
      float32 [b].
    """
    big_t = schedule.num_steps
    num_t = big_t if num_t is None else num_t
    if isinstance(num_t, bool) or not isinstance(num_t, (int, np.integer)) or num_t < 1 or big_t % num_t:
        raise ValueError(f"`num_t` must be a positive divisor of T = {big_t}; got {num_t!r}")
    if sigma not in SIGMAS:
        raise ValueError(f"`sigma` must be one of {list(SIGMAS)}; got {sigma!r}")
    if not isinstance(exact_first_step, bool):
        raise ValueError(f"`exact_first_step` must be a bool; got {exact_first_step!r}")
    width = big_t // num_t
    b = x0.shape[0]
    split_first = exact_first_step and width > 1

    def body(total, k):
        key_k = jax.random.fold_in(key, k)
        key_t, key_eps = jax.random.split(key_k)
        # Stratum k covers t = 1 + k·w … (k + 1)·w; with `split_first` stratum 0 starts at t = 2 instead.
        skip = jnp.where(k == 0, 1, 0) if split_first else 0
        t = 1 + k * width + skip + jax.random.randint(key_t, (b,), 0, width - skip)
        eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
        weight = (width - skip).astype(x0.dtype) if split_first else width
        return total + weight * elbo_terms(eps_fn, x0, t, eps, schedule, sigma), None

    total, _ = jax.lax.scan(body, jnp.zeros((b,), x0.dtype), jnp.arange(num_t))
    if split_first:
        eps_1 = jax.random.normal(jax.random.fold_in(key, num_t), x0.shape, x0.dtype)
        total = total + elbo_terms(eps_fn, x0, jnp.ones((b,), jnp.int32), eps_1, schedule, sigma)
    return prior_kl(x0, schedule) + total


def elbo_bits_per_dim(neg_elbo_nats, num_dims: int, levels: int):
    """Bits/dim of integer data from the −ELBO of x₀ = 2(x + u)/levels − 1 ∈ [−1, 1]^D: bin width 2/levels.

    bpd = (−ELBO + D ln(levels/2))/(D ln 2) (e.g. D ln 128 for 8-bit images; spec generative.md §0.1).
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, (int, np.integer)) or num_dims < 1:
        raise ValueError(f"`num_dims` must be a positive int; got {num_dims!r}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"`levels` must be an int >= 2; got {levels!r}")
    return (neg_elbo_nats + num_dims * math.log(levels / 2)) / (num_dims * math.log(2.0))


# ----------------------------------------------------------------------------------------------- sampling


def ddpm_sample(eps_fn: Callable, x_T: jax.Array, *, key: jax.Array, schedule: DDPMSchedule,
                sigma: str = "beta", t_start: int | None = None) -> jax.Array:
    """The blog's ancestral sampler: x_{t−1} = (x_t − (β_t²/β̄_t) ε_θ(x_t, t))/α_t + σ_t z, t = t_start..1.

    Noise is added at every step, t = 1 included, as in the author's code (σ_1 = β_1 = 4.5e-3 for the
    article's schedule; σ_1 = 0 for 'posterior'). z at step t is drawn from fold_in(key, t).

    Args:
      eps_fn: ε_θ(x_t [b, ...], t int32 [b]).
      x_T: [b, ...] starting point (N(0, I) for t_start = T, or a noised image for the blog's interpolation).
      key: randomness of z; schedule: DDPMSchedule; sigma: 'beta' | 'posterior'.
      t_start: first step (default T).
    Returns:
      x_0 [b, ...].

    References:
      https://kexue.fm/archives/9152 ; Ho et al. 2020, Algorithm 2; bojone/Keras-DDPM `sample`.
    """
    big_t = schedule.num_steps
    t_start = big_t if t_start is None else t_start
    if isinstance(t_start, bool) or not isinstance(t_start, (int, np.integer)) or not 1 <= t_start <= big_t:
        raise ValueError(f"`t_start` must be an int in [1, {big_t}]; got {t_start!r}")
    sig = jnp.asarray(sigma_choice(schedule, sigma), x_T.dtype)
    alpha = jnp.asarray(schedule.alpha, x_T.dtype)
    coef = jnp.asarray(np.concatenate([[0.0], schedule.beta[1:] ** 2 / schedule.bar_beta[1:]]), x_T.dtype)
    b = x_T.shape[0]

    def body(x, t):
        eps = eps_fn(x, jnp.full((b,), t, jnp.int32))
        z = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
        return (x - coef[t] * eps) / alpha[t] + sig[t] * z, None

    x, _ = jax.lax.scan(body, x_T, jnp.arange(t_start, 0, -1))
    return x


# ----------------------------------------------------------------------------------------------- 2-D model


class TimeMLP(nnx.Module):
    """ε_θ(x, t) for 2-D data: MLP on [x, embedding(t)], swish, as in spec §11.5 (learned t table of T + 1 rows)."""

    def __init__(self, *, data_dim: int = 2, num_embeddings: int = 1001, embedding_size: int = 128,
                 hidden=(128, 128, 128), rngs: nnx.Rngs):
        for name, v in (("data_dim", data_dim), ("num_embeddings", num_embeddings),
                        ("embedding_size", embedding_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive int; got {v!r}")
        hidden = tuple(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"`hidden` must be a non-empty sequence of positive ints; got {hidden!r}")
        self.embedding = nnx.Embed(num_embeddings, embedding_size, rngs=rngs)
        sizes = [data_dim + embedding_size, *hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(hidden[-1], data_dim, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        h = jnp.concatenate([x, self.embedding(t)], axis=-1)  # [b, d + e]
        for layer in self.layers:
            h = jax.nn.swish(layer(h))
        return self.out(h)


# ----------------------------------------------------------------------------------------------- evaluate


def _loss_kwargs(config) -> dict:
    return dict(config.get("loss_kwargs") or {})


def evaluate(model, dataset, *, key: jax.Array, config, workdir: str | None) -> dict[str, float]:
    """Samples and scores a trained ε_θ on the test split.

    2-D data ('x'): `eval_num_samples` samples with each σ_t choice; energy distance to the test points
    (`test/energy_distance_beta`, `test/energy_distance_posterior`) next to the same statistic between as many
    training points and the test points (`test/energy_distance_data`, the value a perfect model would get up
    to sampling noise); scatter plot 'samples.png'.

    Images: the −ELBO in bits/dim on the whole test split (`test/neg_elbo_bpd`, stratified over
    `elbo_num_t` steps, with its standard error `test/neg_elbo_bpd_stderr`), the full- and diagonal-Gaussian
    baselines in bits/dim on the same split; `eval_num_samples` samples (σ_t = `eval_sigma`), saved as
    'samples.png'; FD-digits of the samples and of the test split against the training split
    (`test/fd`, `test/fd_data`), and the classifier-predicted class coverage and histogram entropy
    (`test/class_coverage`, `test/class_entropy`; max ln 10 = 2.303).

    Config keys: loss_kwargs (schedule, num_timesteps, levels), eval_num_samples, eval_batch_size (500),
    elbo_num_t (100), eval_sigma ('beta'), classifier_steps (see `metrics.train_classifier`).

    References:
      https://kexue.fm/archives/9152 ; spec generative.md §11.5.
    """
    from kexue_jax import data as data_lib
    from kexue_jax.core.metrics import save_image_grid
    from kexue_jax.diffusion import metrics

    kw = _loss_kwargs(config)
    sched = _schedule(kw.get("schedule", "article"), kw.get("num_timesteps", 1000))
    graphdef, state = nnx.split(model)
    key_sample, key_elbo, key_ref = jax.random.split(key, 3)
    train = data_lib.load(config.dataset, "train", data_dir=config.get("data_dir"))
    batch_size = int(config.get("eval_batch_size", 500))

    def sample(n: int, sigma: str, k: jax.Array) -> np.ndarray:
        shape = dataset.example_shape["image" if "image" in dataset.arrays else "x"]

        @jax.jit
        def run(state, k):
            m = nnx.merge(graphdef, state)
            x_T = jax.random.normal(jax.random.fold_in(k, 0), (batch_size, *shape), jnp.float32)
            return ddpm_sample(m, x_T, key=jax.random.fold_in(k, 1), schedule=sched, sigma=sigma)

        chunks = [np.asarray(run(state, jax.random.fold_in(k, i))) for i in range(-(-n // batch_size))]
        return np.concatenate(chunks)[:n]

    results: dict[str, float] = {}
    if "x" in dataset.arrays:
        test_x = np.asarray(dataset.arrays["x"], np.float64)
        n = min(int(config.get("eval_num_samples", len(test_x))), len(test_x))
        test_x = test_x[:n]
        ref = np.asarray(train.arrays["x"], np.float64)
        ref = ref[np.random.default_rng(config.seed).choice(len(ref), n, replace=False)]
        results["test/energy_distance_data"] = metrics.energy_distance(ref, test_x)
        drawn = {}
        for i, sigma in enumerate(SIGMAS):
            drawn[sigma] = sample(n, sigma, jax.random.fold_in(key_sample, i))
            results[f"test/energy_distance_{sigma}"] = metrics.energy_distance(drawn[sigma], test_x)
        if workdir is not None:
            _scatter(os.path.join(workdir, "samples.png"), test_x, drawn)
        return results

    levels = kw.get("levels", dataset.levels)
    images = np.asarray(dataset.arrays["image"])
    d = int(np.prod(images.shape[1:]))
    elbo_num_t = int(config.get("elbo_num_t", 100))
    prep_key = jax.random.key(12345)  # fixed dequantisation of the test split, independent of `key`

    @jax.jit
    def neg_elbo_chunk(state, im, k):
        m = nnx.merge(graphdef, state)
        x0 = prepare_batch({"image": im}, key=k, levels=levels)
        return negative_elbo(m, x0, key=jax.random.fold_in(k, 1), schedule=sched,
                             sigma=config.get("eval_sigma", "beta"), num_t=elbo_num_t)

    n_test = len(images)
    pad = (-n_test) % batch_size
    padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    nelbo = np.concatenate([np.asarray(neg_elbo_chunk(state, padded[i:i + batch_size],
                                                      jax.random.fold_in(prep_key, i)))
                            for i in range(0, len(padded), batch_size)])[:n_test].astype(np.float64)
    bpd = elbo_bits_per_dim(nelbo, d, levels)
    results["test/neg_elbo_bpd"] = float(np.mean(bpd))
    results["test/neg_elbo_bpd_stderr"] = float(np.std(bpd) / math.sqrt(n_test))
    results["test/baseline_full_gaussian_bpd"] = data_lib.baselines.gaussian_baseline_bpd(train, dataset, kind="full")
    results["test/baseline_diagonal_gaussian_bpd"] = data_lib.baselines.gaussian_baseline_bpd(
        train, dataset, kind="diagonal")

    n = int(config.get("eval_num_samples", n_test))
    x = sample(n, config.get("eval_sigma", "beta"), key_sample)
    samples = np.asarray(to_images(jnp.asarray(x), levels))
    classifier = metrics.train_classifier(train, steps=int(config.get("classifier_steps", 2000)), seed=config.seed)
    results.update(metrics.image_metrics(classifier, samples, train, dataset))
    if workdir is not None:
        save_image_grid(samples[:64] / (levels - 1), os.path.join(workdir, "samples.png"),
                        title=f"DDPM samples (T={sched.num_steps}, sigma={config.get('eval_sigma', 'beta')})")
    return results


def check_config(config) -> None:
    """The keys only `evaluate` reads, checked by the shared trainer before training."""
    from kexue_jax.core.config import check_int, require

    for key in ("eval_num_samples", "eval_batch_size", "elbo_num_t", "classifier_steps"):
        if config.get(key) is not None:
            check_int(config.get(key), key)
    sigma = config.get("eval_sigma", "beta")
    require(sigma in SIGMAS, "eval_sigma", f"one of {SIGMAS}", sigma)


evaluate.check_config = check_config


def _scatter(path: str, test_x: np.ndarray, drawn: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(drawn), figsize=(4 * (1 + len(drawn)), 4), sharex=True, sharey=True)
    axes[0].scatter(test_x[:, 0], test_x[:, 1], s=1)
    axes[0].set_title("test data")
    for ax, (name, pts) in zip(axes[1:], drawn.items()):
        ax.scatter(pts[:, 0], pts[:, 1], s=1)
        ax.set_title(f"DDPM, sigma_t = {name}")
    fig.savefig(path, dpi=80)
    plt.close(fig)
