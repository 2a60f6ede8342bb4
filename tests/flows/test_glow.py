"""Glow-specific checks (spec generative.md §4.4): ActNorm data-dependent init (functional, under jit,
through the trainer's `data_init` hook), LU 1×1 conv invertible under random updates, identity-like init.

Models are built with `_initialised` (tests/flows/test_bijector.py: the initialisers' values, LeCun-normal
kernels drawn from that distribution with NumPy) and each check runs in one compiled program: built
eagerly, every op would compile a program of its own."""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kexue_jax import flows as F
from tests.flows.test_bijector import _FAST_COMPILE, _fast_jit, _initialised


def _glow(width=8):
    return _initialised(lambda rngs: F.Glow(event_shape=(8, 8, 1), num_levels=2, depth=2, width=width, levels=17,
                                            rngs=rngs))


def _images(n):
    return np.random.default_rng(0).integers(0, 17, (n, 8, 8, 1)).astype(np.uint8)


def test_actnorm_data_init_gives_zero_mean_unit_variance_on_the_init_batch():
    layer = F.ActNorm(3)
    x = (2.0 + 5.0 * np.random.default_rng(0).standard_normal((16, 4, 4, 3)) * np.array([[[[1.0, 0.1, 3.0]]]]))
    x = x.astype(np.float32)

    @nnx.jit
    def init(layer, x):
        with F.data_dependent_init():
            return layer.forward_and_log_det(x)[0]

    y = np.asarray(init(layer, x))
    np.testing.assert_allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.std(y, axis=(0, 1, 2)), 1.0, atol=1e-5)
    # the parameters were set: a plain forward pass now standardises too
    y2 = nnx.jit(lambda layer, x: layer.forward_and_log_det(x)[0])(layer, x)
    np.testing.assert_allclose(y2, y, atol=1e-5)


def test_actnorm_parameters_are_the_init_batch_statistics_and_stay_fixed_after_the_context():
    # Closed form (NumPy float64): bias = −mean and log_scale = −log(std + 1e-6) per channel over (b, h, w) of
    # the init batch; once `data_dependent_init()` has exited, a forward pass on ANOTHER batch must use those
    # parameters, y = (x' − mean)/std, and leave them unchanged (a context that does not switch off would
    # re-standardise every batch it sees).
    rng = np.random.default_rng(1)
    x = (1.0 + rng.standard_normal((8, 3, 3, 3)) * np.array([0.5, 2.0, 4.0]) + np.array([0.0, -3.0, 1.0]))
    x2 = 3.0 * rng.standard_normal((5, 3, 3, 3))
    with jax.enable_x64(True):
        layer = F.ActNorm(3)

        @nnx.jit
        def init_then_apply(layer, x, x2):
            with F.data_dependent_init():
                layer.forward_and_log_det(x)
            return layer.forward_and_log_det(x2)

        y2, ld2 = map(np.asarray, init_then_apply(layer, x, x2))
        bias, log_scale = np.asarray(layer.bias[...]), np.asarray(layer.log_scale[...])
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    np.testing.assert_allclose(bias, -mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_scale, -np.log(std + 1e-6), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y2, (x2 - mean) / (std + 1e-6), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ld2, np.full(5, -9 * np.sum(np.log(std + 1e-6))), rtol=1e-12)
    assert np.max(np.abs(y2.std(axis=(0, 1, 2)) - 1.0)) > 0.2  # x2 is not standardised by its own statistics


def test_glow_data_init_standardises_every_actnorm_input():
    model = _glow()
    images = _images(32)

    def init_and_rerun(model, images):
        F.data_init(model, {"image": images}, key=jax.random.key(1))
        # re-run the init batch and record what the first ActNorm outputs, with its new parameters
        x = F.dequantize(images, key=jax.random.key(1), levels=17) - 0.5
        first_step = model.flow.layers[1]
        return first_step.actnorm.forward_and_log_det(F.squeeze(x))[0], nnx.state(model)

    y, state = _fast_jit(init_and_rerun, model, images)
    nnx.update(model, state)
    y = np.asarray(y)
    np.testing.assert_allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.std(y, axis=(0, 1, 2)), 1.0, atol=1e-4)
    # the parameters were written into the model (not only used inside the traced call)
    assert np.any(np.asarray(model.flow.layers[1].actnorm.log_scale[...]) != 0)


def test_data_init_runs_through_the_trainer_hook(tmp_path, monkeypatch):
    from experiments.flows import glow as glow_config
    from kexue_jax.core import train

    # the hook must call `data_init` once, with the model and a full first batch (the real function then
    # runs; its maths is checked by the two tests above)
    calls = []
    real_data_init = F.data_init

    def recording_data_init(model, batch, *, key):
        calls.append((type(model).__name__, tuple(batch["image"].shape)))
        real_data_init(model, batch, key=key)

    monkeypatch.setattr(F, "data_init", recording_data_init)

    config = glow_config.get_config("smoke")
    # a smaller Glow than the smoke run's (depth 1, width 4): the hook and the trainer are what is tested
    config.model_kwargs.depth = 1
    config.model_kwargs.width = 4
    config.num_steps = 2
    config.log_every = 1
    config.checkpoint_every = 2
    config.progress = False
    config.evaluate = None
    del config["evaluate"]
    results = train.train_and_evaluate(config, str(tmp_path))
    assert calls == [("Glow", (config.batch_size, 8, 8, 1))], calls
    assert math.isfinite(results["train/loss"])


def test_lu_conv_stays_invertible_under_random_updates():
    # 20 random updates of size 0.5 per entry: the LU form keeps det W = Π sign(s)·exp(log|s|) != 0 whatever
    # the parameters, and its log-det, inverse and W stay exact (checked in float64; the matrices become
    # ill-conditioned, so float32 round trips lose digits in proportion to cond(W), as any inverse would).
    with jax.enable_x64(True):
        graphdef, params, rest = nnx.split(nnx.jit(lambda: F.InvertibleConv1x1(6, lu=True, rngs=nnx.Rngs(0)))(),
                                           nnx.Param, ...)
        cast = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), t)
        params, rest = cast(params), cast(rest)
        x = np.random.default_rng(0).standard_normal((2, 3, 3, 6))

        @jax.jit
        def update_and_check(params, key):
            # one random update (as before: a fresh key per leaf), then every quantity checked below
            key, k = jax.random.split(key)
            leaves, treedef = jax.tree.flatten(params)
            ks = jax.random.split(k, len(leaves))
            params = jax.tree.unflatten(treedef, [p + 0.5 * jax.random.normal(kk, p.shape, p.dtype)
                                                  for p, kk in zip(leaves, ks)])
            layer = nnx.merge(graphdef, params, rest)
            sign, logabs = jnp.linalg.slogdet(layer.weight())
            y, ld = layer.forward_and_log_det(x)
            x_back, ld_inv = layer.inverse_and_log_det(jax.lax.optimization_barrier(y))
            return params, key, dict(sign=sign, logabs=logabs, sum_log_s=jnp.sum(layer.log_s[...]), ld=ld,
                                     x_back=x_back, ld_inv=ld_inv)

        key = jax.random.key(1)
        for _ in range(20):
            params, key, r = update_and_check(params, key)
            r = jax.tree.map(np.asarray, r)
            assert r["sign"].dtype == np.float64
            assert r["sign"] != 0 and np.isfinite(r["logabs"])
            np.testing.assert_allclose(r["logabs"], r["sum_log_s"], rtol=1e-8, atol=1e-8)
            np.testing.assert_allclose(r["ld"], 9 * r["sum_log_s"], rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(r["x_back"], x, atol=1e-8, rtol=1e-8)
            np.testing.assert_allclose(r["ld_inv"], -r["ld"], rtol=1e-12)


def test_lu_parameterisation_reproduces_the_plain_initial_matrix():
    @jax.jit
    def weights():
        lu = F.InvertibleConv1x1(5, lu=True, rngs=nnx.Rngs(3))
        plain = F.InvertibleConv1x1(5, lu=False, rngs=nnx.Rngs(3))
        return lu.weight(), plain.weight()

    w_lu, w_plain = map(np.asarray, weights())
    # both start from the same random rotation, which P·L·U factorises exactly
    np.testing.assert_allclose(w_lu, w_plain, atol=1e-5)
    np.testing.assert_allclose(w_lu @ w_lu.T, np.eye(5), atol=1e-5)


def test_untrained_glow_is_a_rotation_so_its_likelihood_is_gaussian():
    model = _glow()
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    z, ld, log_prob = map(np.asarray, _fast_jit(lambda m, x: m.forward_and_log_det(x) + (m.log_prob(x),),
                                                model, x))
    assert z.shape == (3, 64)
    np.testing.assert_allclose(ld, 0.0, atol=1e-4)
    np.testing.assert_allclose(np.sum(z**2, 1), np.sum(x.reshape(3, -1) ** 2, 1), rtol=1e-5)
    np.testing.assert_allclose(log_prob, -0.5 * np.sum(x.reshape(3, -1) ** 2, 1) - 32 * math.log(2 * math.pi),
                               rtol=1e-5)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    model = _glow(width=16)
    images = _images(32)
    nnx.update(model, _fast_jit(lambda m, b: (F.data_init(m, b, key=jax.random.key(1)), nnx.state(m))[1], model,
                                {"image": images}))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def step(state):
        model, opt = nnx.merge(graphdef, state)
        loss_fn = lambda m: F.flow_loss(m, {"image": images}, key=jax.random.key(2), levels=17)[0]
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, nnx.state((model, opt))

    losses = []
    for _ in range(10):
        loss, state = step(state)
        losses.append(float(loss))
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
    # abstractly (nnx.eval_shape): the checks are on shapes and Python values, and run exactly as eagerly,
    # without initialising parameters op by op first
    with pytest.raises(ValueError, match=re.escape(message)):
        nnx.eval_shape(fn)
