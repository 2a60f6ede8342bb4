"""Glow-specific checks (spec generative.md §4.4): ActNorm data-dependent init (functional, under jit,
through the trainer's `data_init` hook), LU 1×1 conv invertible under random updates, identity-like init."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kexue_jax import flows as F


def test_actnorm_data_init_gives_zero_mean_unit_variance_on_the_init_batch():
    layer = F.ActNorm(3)
    x = 2.0 + 5.0 * jax.random.normal(jax.random.key(0), (16, 4, 4, 3)) * jnp.array([[[[1.0, 0.1, 3.0]]]])

    @nnx.jit
    def init(layer, x):
        with F.data_dependent_init():
            return layer.forward_and_log_det(x)[0]

    y = init(layer, x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-5)
    # the parameters were set: a plain forward pass now standardises too
    y2 = layer.forward_and_log_det(x)[0]
    np.testing.assert_allclose(y2, y, atol=1e-5)


def test_glow_data_init_standardises_every_actnorm_input():
    model = F.Glow(event_shape=(8, 8, 1), num_levels=2, depth=2, width=8, levels=17, rngs=nnx.Rngs(0))
    images = jax.random.randint(jax.random.key(0), (32, 8, 8, 1), 0, 17).astype(jnp.uint8)
    F.data_init(model, {"image": images}, key=jax.random.key(1))
    # re-run the init batch and record what each ActNorm outputs
    x = F.dequantize(images, key=jax.random.key(1), levels=17) - 0.5
    outputs = []
    first_step = model.flow.layers[1]
    h = F.squeeze(x)
    y, _ = first_step.actnorm.forward_and_log_det(h)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-4)
    del outputs


def test_data_init_runs_through_the_trainer_hook(tmp_path):
    from experiments.flows import glow as glow_config
    from kexue_jax.core import train

    config = glow_config.get_config("smoke")
    config.num_steps = 2
    config.log_every = config.checkpoint_every = 1
    config.progress = False
    config.evaluate = None
    del config["evaluate"]
    results = train.train_and_evaluate(config, str(tmp_path))
    assert math.isfinite(results["train/loss"])


def test_lu_conv_stays_invertible_under_random_updates():
    # 20 random updates of size 0.5 per entry: the LU form keeps det W = Π sign(s)·exp(log|s|) != 0 whatever
    # the parameters, and its log-det, inverse and W stay exact (checked in float64; the matrices become
    # ill-conditioned, so float32 round trips lose digits in proportion to cond(W), as any inverse would).
    with jax.enable_x64(True):
        layer = F.InvertibleConv1x1(6, lu=True, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
        cast = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)
        params, rest = cast(params), cast(rest)
        x = jax.random.normal(jax.random.key(0), (2, 3, 3, 6), jnp.float64)
        key = jax.random.key(1)
        for _ in range(20):
            key, k = jax.random.split(key)
            leaves, treedef = jax.tree.flatten(params)
            ks = jax.random.split(k, len(leaves))
            params = jax.tree.unflatten(treedef, [p + 0.5 * jax.random.normal(kk, p.shape, p.dtype)
                                                  for p, kk in zip(leaves, ks)])
            layer = nnx.merge(graphdef, params, rest)
            w = layer.weight()
            sign, logabs = jnp.linalg.slogdet(w)
            assert sign != 0 and jnp.isfinite(logabs)
            np.testing.assert_allclose(logabs, jnp.sum(layer.log_s[...]), rtol=1e-8, atol=1e-8)
            y, ld = layer.forward_and_log_det(x)
            np.testing.assert_allclose(ld, 9 * jnp.sum(layer.log_s[...]), rtol=1e-10, atol=1e-10)
            x_back, ld_inv = layer.inverse_and_log_det(y)
            np.testing.assert_allclose(x_back, x, atol=1e-8, rtol=1e-8)
            np.testing.assert_allclose(ld_inv, -ld, rtol=1e-12)


def test_lu_parameterisation_reproduces_the_plain_initial_matrix():
    lu = F.InvertibleConv1x1(5, lu=True, rngs=nnx.Rngs(3))
    plain = F.InvertibleConv1x1(5, lu=False, rngs=nnx.Rngs(3))
    # both start from the same random rotation, which P·L·U factorises exactly
    np.testing.assert_allclose(lu.weight(), plain.weight(), atol=1e-5)
    np.testing.assert_allclose(lu.weight() @ lu.weight().T, jnp.eye(5), atol=1e-5)


def test_untrained_glow_is_a_rotation_so_its_likelihood_is_gaussian():
    model = F.Glow(event_shape=(8, 8, 1), num_levels=2, depth=2, width=8, levels=17, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    z, ld = model.forward_and_log_det(x)
    assert z.shape == (3, 64)
    np.testing.assert_allclose(ld, 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.sum(z**2, 1), jnp.sum(x.reshape(3, -1) ** 2, 1), rtol=1e-5)
    np.testing.assert_allclose(model.log_prob(x), -0.5 * jnp.sum(x.reshape(3, -1) ** 2, 1) - 32 * math.log(2 * math.pi),
                               rtol=1e-5)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    model = F.Glow(event_shape=(8, 8, 1), num_levels=2, depth=2, width=16, levels=17, rngs=nnx.Rngs(0))
    images = jax.random.randint(jax.random.key(0), (32, 8, 8, 1), 0, 17).astype(jnp.uint8)
    F.data_init(model, {"image": images}, key=jax.random.key(1))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss_fn = lambda m: F.flow_loss(m, {"image": images}, key=jax.random.key(2), levels=17)[0]
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(10)]
    assert losses[-1] < losses[0]


BAD = [
    ("unknown permutation", lambda: F.Glow(event_shape=(8, 8, 1), num_levels=2, depth=1, width=4, permutation="lu2",
                                           rngs=nnx.Rngs(0)),
     "`permutation` must be one of ['lu', 'conv', 'shuffle', 'reverse']; got 'lu2'"),
    ("unknown coupling", lambda: F.Glow(event_shape=(8, 8, 1), num_levels=2, depth=1, width=4, coupling="spline",
                                        rngs=nnx.Rngs(0)),
     "`coupling` must be one of ['affine', 'additive']; got 'spline'"),
    ("too many levels", lambda: F.Glow(event_shape=(8, 8, 1), num_levels=4, depth=1, width=4, rngs=nnx.Rngs(0)),
     "`event_shape` must be (height, width, channels) with height and width divisible by 2**num_levels = 16; "
     "got (8, 8, 1)"),
    ("zero depth", lambda: F.Glow(event_shape=(8, 8, 1), num_levels=1, depth=0, width=4, rngs=nnx.Rngs(0)),
     "`depth` must be an integer >= 1; got 0"),
    ("wrong event shape", lambda: F.Glow(event_shape=(8, 8, 1), num_levels=1, depth=1, width=4, rngs=nnx.Rngs(0))
     .forward_and_log_det(jnp.zeros((2, 4, 4, 1))), "`x` must have event shape (8, 8, 1); got shape (2, 4, 4, 1)"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
