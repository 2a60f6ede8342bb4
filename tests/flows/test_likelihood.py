"""Likelihood accounting: dequantisation, bits/dim with the log(levels) term, temperature sampling, loss.

A uniform density on [0, 1]^D has log p = 0 for every dequantised point, so its bits/dim is exactly
log2(levels): 8 for 8-bit data, log2(17) = 4.087 for the 17-level digits (spec generative.md §0.1).
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax import flows as F
from tests.flows.test_bijector import _initialised


class UniformModel(nnx.Module):
    """log p(y) = 0 on [0, 1]^D: the uniform density on the unit cube (in the model's centred space)."""

    def __init__(self, event_shape, levels):
        self.event_shape = tuple(event_shape)
        self.levels = levels

    def log_prob(self, x):
        inside = jnp.all(jnp.abs(x) <= 0.5, axis=tuple(range(1, x.ndim)))
        return jnp.where(inside, 0.0, -jnp.inf)


class GaussianModel(UniformModel):
    """log p(y) = log N(y; 0, I) summed over the event (in the model's centred space)."""

    def log_prob(self, x):
        return jnp.sum(-0.5 * jnp.square(x) - 0.5 * math.log(2 * math.pi), axis=tuple(range(1, x.ndim)))


@pytest.mark.parametrize("levels,expected", [(256, 8.0), (17, math.log2(17)), (2, 1.0)])
def test_uniform_model_gives_log2_levels_bits_per_dim(levels, expected):
    images = np.random.default_rng(0).integers(0, levels, (16, 4, 4, 1)).astype(np.uint8)
    model = UniformModel((4, 4, 1), levels)
    loss, aux = jax.jit(lambda b: F.flow_loss(model, b, key=jax.random.key(1), levels=levels))({"image": images})
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(aux["bpd"], expected, rtol=1e-6)
    np.testing.assert_allclose(F.bits_per_dim(np.zeros(3), 16, levels), np.full(3, expected), rtol=1e-6)


def test_bits_per_dim_formula():
    # (−log p + D ln levels)/(D ln 2) with D = 64, levels = 17: the spec's conversion
    log_p = jnp.array([-50.0, 10.0])
    expected = (-np.asarray(log_p) + 64 * math.log(17)) / (64 * math.log(2))
    np.testing.assert_allclose(F.bits_per_dim(log_p, 64, 17), expected, rtol=1e-6)


def test_dequantise_lands_in_the_right_bin():
    images = jnp.arange(17, dtype=jnp.uint8).reshape(1, 17)
    y = F.dequantize(images, key=jax.random.key(0), levels=17)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(jnp.floor(y * 17), images)
    assert float(y.min()) >= 0.0 and float(y.max()) < 1.0


def test_flow_loss_matches_log_prob_of_the_centred_dequantised_batch():
    model = _initialised(lambda rngs: F.NICE(event_shape=(2, 2, 1), num_couplings=2, hidden=(8,), levels=17,
                                             rngs=rngs))
    images = np.random.default_rng(0).integers(0, 17, (5, 2, 2, 1)).astype(np.uint8)
    key = jax.random.key(3)

    @nnx.jit
    def both(model, images):
        loss, aux = F.flow_loss(model, {"image": images}, key=key, levels=17)
        x = F.dequantize(images, key=key, levels=17) - 0.5
        return loss, jnp.mean(F.bits_per_dim(model.log_prob(x), 4, 17))

    loss, expected = both(model, images)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_dequantisation_noise_is_uniform_over_the_whole_bin():
    # u = y·L − x must be U[0, 1): a Kolmogorov-Smirnov distance to the uniform CDF (scipy) below the
    # α = 0.001 critical value 1.95/√n, n = 20000 (the draw is fixed by the key; this one measures 0.005).
    # Noise narrower than the bin (e.g. U[0, 1/L)) or the bin centre would still land in the right bin.
    from scipy import stats

    images = np.random.default_rng(0).integers(0, 17, (200, 100)).astype(np.uint8)
    y = np.asarray(jax.jit(lambda im: F.dequantize(im, key=jax.random.key(5), levels=17))(images), np.float64)
    u = (y * 17 - images).reshape(-1)
    assert stats.kstest(u, "uniform").statistic < 1.95 / math.sqrt(u.size)


def test_flow_loss_and_its_nats_against_the_closed_form_gaussian():
    # A standard-normal model: log p(y − ½) = Σ log N(y − ½; 0, 1) in closed form (NumPy float64), with
    # y = (x + u)/L and u the documented draw jax.random.uniform(key, x.shape): the loss is the mean of
    # (−log p + D ln L)/(D ln 2) and aux['nll_nats'] is −mean log p (positive here: D = 4 dimensions of [−½, ½)).
    model = GaussianModel((2, 2, 1), 17)
    images = np.random.default_rng(2).integers(0, 17, (6, 2, 2, 1)).astype(np.uint8)
    key = jax.random.key(4)
    loss, aux = jax.jit(lambda b: F.flow_loss(model, b, key=key, levels=17))({"image": images})
    u = np.asarray(jax.random.uniform(key, images.shape, jnp.float32), np.float64)
    v = ((images + u) / 17 - 0.5).reshape(6, 4)
    log_p = np.sum(-0.5 * v ** 2 - 0.5 * math.log(2 * math.pi), axis=1)
    np.testing.assert_allclose(loss, np.mean((-log_p + 4 * math.log(17)) / (4 * math.log(2))), rtol=1e-6)
    np.testing.assert_allclose(aux["bpd"], loss, rtol=1e-7)
    np.testing.assert_allclose(aux["nll_nats"], -np.mean(log_p), rtol=1e-6)
    assert -np.mean(log_p) > 3.0


def test_temperature_scales_the_latent():
    model = _initialised(lambda rngs: F.NICE(event_shape=(4,), num_couplings=2, hidden=(8,), levels=17, rngs=rngs))
    key = jax.random.key(0)
    sample = nnx.jit(lambda m, t: m.sample(20000, key=key, temperature=t), static_argnums=1)
    # an untrained NICE is the identity, so samples are the latents: their std is the temperature
    for t in (0.5, 1.0):
        s = np.asarray(sample(model, t))
        assert s.shape == (20000, 4)
        np.testing.assert_allclose(np.std(s), t, rtol=0.02)


BAD = [
    ("zero levels in bits_per_dim", lambda: F.bits_per_dim(jnp.zeros(2), 4, 0),
     "`levels` must be an integer >= 2; got 0"),
    ("negative levels in dequantize",
     lambda: F.dequantize(jnp.zeros((1, 2), jnp.uint8), key=jax.random.key(0), levels=-3),
     "`levels` must be an integer >= 2; got -3"),
    ("float levels in flow_loss",
     lambda: F.flow_loss(UniformModel((2,), 17), {"image": jnp.zeros((1, 2), jnp.uint8)}, key=jax.random.key(0),
                         levels=16.5),
     "`levels` must be an integer >= 2; got 16.5"),
    ("non-positive temperature",
     lambda: F.NICE(event_shape=(4,), num_couplings=1, hidden=(4,), rngs=nnx.Rngs(0)).sample(2, key=jax.random.key(0),
                                                                                           temperature=0.0),
     "`temperature` must be a number > 0; got 0.0"),
    ("bad dims", lambda: F.bits_per_dim(jnp.zeros(2), 0, 17), "`num_dims` must be an integer >= 1; got 0"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
