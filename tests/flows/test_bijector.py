"""The shared bijector contract, proved on every bijector and every model of kexue_jax.flows.

One dict of named cases (`CASES`) drives every check. Each case builds a bijector and the event shape of
one example; `_randomised` then moves every parameter off its (identity) initialisation, so a check that
passes cannot be passing because a layer is the identity. For every case:

- round trip: inverse(forward(x)) == x to 1e-5 in float32 and to 1e-10 in float64 (and forward(inverse(y)));
- `log_det` has shape [batch] and equals log|det J| of `jax.jacfwd` of the flattened map, in float64 on a
  tiny input, in the forward AND the inverse direction (spec generative.md §4.4 check 1);
- the inverse log-det at y = f(x) is exactly minus the forward log-det at x;
- each example of a batch is transformed independently of the others (per-example log_det).
A bad-input table at the end checks the error messages of the layers.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax import flows as F

# ----------------------------------------------------------------------------------------------------
# The registry: name -> (factory(rngs) -> bijector, event shape of one example).


def _conv(cin, cout):
    return lambda rngs: F.ConvConditioner(cin, cout, width=8, rngs=rngs)


def _glow_tiny(**kw):
    return lambda rngs: F.Glow(event_shape=(4, 4, 2), num_levels=2, depth=2, width=8, levels=256, rngs=rngs, **kw)


CASES = {
    "squeeze": (lambda rngs: F.Squeeze(), (4, 4, 2)),
    "unsqueeze": (lambda rngs: F.Unsqueeze(), (2, 2, 8)),
    "flatten": (lambda rngs: F.Flatten((2, 3, 2)), (2, 3, 2)),
    "reverse": (lambda rngs: F.Permute.reverse(5), (3, 5)),
    "shuffle": (lambda rngs: F.Permute.shuffle(6, seed=3), (6,)),
    "additive_coupling_checkerboard": (
        lambda rngs: F.AdditiveCoupling(F.ConvConditioner(3, 3, width=8, rngs=rngs),
                                        mask=F.checkerboard_mask(4, 4, 3, parity=0)), (4, 4, 3)),
    "additive_coupling_channel": (
        lambda rngs: F.AdditiveCoupling(F.ConvConditioner(2, 2, width=8, rngs=rngs), num_channels=4,
                                        parity=1), (2, 2, 4)),
    "additive_coupling_interleaved_mlp": (
        lambda rngs: F.AdditiveCoupling(F.MLPConditioner(6, 6, hidden=(16, 16), rngs=rngs),
                                        mask=F.interleaved_mask(6, parity=1)), (6,)),
    "affine_coupling_channel_tanh": (
        lambda rngs: F.AffineCoupling(_conv(2, 4)(rngs), num_channels=4, scale_fn="tanh"), (3, 3, 4)),
    "affine_coupling_channel_sigmoid": (
        lambda rngs: F.AffineCoupling(_conv(2, 4)(rngs), num_channels=4, parity=1, scale_fn="sigmoid"),
        (2, 2, 4)),
    "affine_coupling_checkerboard_exp": (
        lambda rngs: F.AffineCoupling(F.ConvConditioner(1, 2, width=8, num_blocks=1, rngs=rngs),
                                      mask=F.checkerboard_mask(4, 4, 1, parity=1), scale_fn="exp"), (4, 4, 1)),
    "affine_coupling_channel_mask": (
        lambda rngs: F.AffineCoupling(_conv(4, 8)(rngs), mask=F.channel_mask(2, 2, 4, parity=0)), (2, 2, 4)),
    "nice_scaling": (lambda rngs: F.NICEScaling((5,)), (5,)),
    "actnorm": (lambda rngs: F.ActNorm(3), (2, 2, 3)),
    "conv1x1": (lambda rngs: F.InvertibleConv1x1(3, lu=False, rngs=rngs), (2, 2, 3)),
    "conv1x1_lu": (lambda rngs: F.InvertibleConv1x1(4, lu=True, rngs=rngs), (2, 2, 4)),
    "learned_prior": (lambda rngs: F.LearnedPrior(2), (2, 2, 2)),
    "factor_out_conditional": (
        lambda rngs: F.FactorOut((2, 2, 4), F.Chain([F.ActNorm(2), F.Flatten((2, 2, 2))]), conditional=True,
                                 rngs=rngs), (2, 2, 4)),
    "factor_out_plain": (
        lambda rngs: F.FactorOut((2, 2, 2), F.Flatten((2, 2, 1)), conditional=False, rngs=rngs), (2, 2, 2)),
    "chain": (lambda rngs: F.Chain([F.ActNorm(2), F.InvertibleConv1x1(2, rngs=rngs), F.Squeeze(),
                                    F.AffineCoupling(_conv(4, 8)(rngs), num_channels=8)]), (4, 2, 2)),
    "inverse_of_chain": (lambda rngs: F.Inverse(F.Chain([F.ActNorm(32), F.Unsqueeze()])), (2, 2, 8)),
    "glow_step": (lambda rngs: F.GlowStep(4, width=8, rngs=rngs), (2, 2, 4)),
    "nice": (lambda rngs: F.NICE(event_shape=(3, 2, 1), num_couplings=4, hidden=(16, 16), levels=17, rngs=rngs),
             (3, 2, 1)),
    "realnvp": (lambda rngs: F.RealNVP(event_shape=(4, 4, 1), num_levels=2, num_couplings=2, width=8,
                                       num_blocks=1, levels=17, rngs=rngs), (4, 4, 1)),
    "glow_affine_lu": (_glow_tiny(), (4, 4, 2)),
    "glow_additive_shuffle_plain_prior": (
        _glow_tiny(coupling="additive", permutation="shuffle", conditional_prior=False, learn_top=False),
        (4, 4, 2)),
    "glow_affine_conv_reverse": (_glow_tiny(permutation="reverse", scale_fn="sigmoid"), (4, 4, 2)),
}


_CACHE = {}


def _randomised(factory, seed=0, scale=0.1):
    """The bijector with every floating parameter moved off its initial value by `scale`·N(0, 1).

    Built once per (factory, seed, scale) and handed out as a fresh copy (nnx.merge), so tests cannot
    affect each other."""
    cache_key = (factory, seed, scale)
    if cache_key not in _CACHE:
        _CACHE[cache_key] = nnx.split(_build_randomised(factory, seed, scale))
    return nnx.merge(*_CACHE[cache_key], copy=True)


def _build_randomised(factory, seed, scale):
    model = factory(nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 100), max(len(leaves), 1))
    leaves = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)


def _to_float64(model):
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return nnx.merge(graphdef, state)


def _inputs(shape, batch, dtype, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch,) + tuple(shape), dtype)


NAMES = sorted(CASES)


@nnx.jit
def _fwd(bij, x):
    return bij.forward_and_log_det(x)


@nnx.jit
def _inv(bij, y):
    return bij.inverse_and_log_det(y)


@nnx.jit(static_argnames=("shape", "out_shape"))
def _jacobian_log_dets(bij, x, y, shape, out_shape):
    """log|det| of jacfwd of the flattened forward map at each x[i] and of the inverse map at each y[i]."""

    def fwd_flat(v):
        return bij.forward_and_log_det(v.reshape((1,) + shape))[0].reshape(-1)

    def inv_flat(v):
        return bij.inverse_and_log_det(v.reshape((1,) + out_shape))[0].reshape(-1)

    sf, lf = jax.vmap(lambda v: jnp.linalg.slogdet(jax.jacfwd(fwd_flat)(v)))(x.reshape(x.shape[0], -1))
    si, li = jax.vmap(lambda v: jnp.linalg.slogdet(jax.jacfwd(inv_flat)(v)))(y.reshape(y.shape[0], -1))
    return sf, lf, si, li


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_float32(name):
    factory, shape = CASES[name]
    bij = _randomised(factory)
    x = _inputs(shape, 3, jnp.float32)
    y, ld = _fwd(bij, x)
    assert ld.shape == (3,) and ld.dtype == jnp.float32
    x_back, ld_inv = _inv(bij, y)
    np.testing.assert_allclose(x_back, x, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ld_inv, -ld, atol=1e-4, rtol=1e-5)
    # the other way round: forward(inverse(y')) == y' for a fresh latent
    y2 = _inputs(y.shape[1:], 3, jnp.float32, seed=2)
    x2, _ = _inv(bij, y2)
    np.testing.assert_allclose(_fwd(bij, x2)[0], y2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_jacobian_both_ways_float64(name):
    factory, shape = CASES[name]
    with jax.enable_x64(True):
        bij = _to_float64(_randomised(factory))
        x = _inputs(shape, 2, jnp.float64)
        y, ld = _fwd(bij, x)
        assert y.dtype == jnp.float64 and ld.shape == (2,)
        x_back, ld_inv = _inv(bij, y)
        np.testing.assert_allclose(x_back, x, atol=1e-10, rtol=1e-10)
        np.testing.assert_allclose(ld_inv, -ld, atol=1e-10, rtol=1e-10)
        sign_f, logabs_f, sign_i, logabs_i = _jacobian_log_dets(bij, x, y, tuple(shape), tuple(y.shape[1:]))
        assert np.all(np.asarray(sign_f) != 0) and np.all(np.asarray(sign_i) != 0)
        np.testing.assert_allclose(ld, logabs_f, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(ld_inv, logabs_i, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_examples_are_transformed_independently(name):
    factory, shape = CASES[name]
    bij = _randomised(factory)
    x = _inputs(shape, 4, jnp.float32)
    y, ld = _fwd(bij, x)
    y1, ld1 = _fwd(bij, x[2:3])
    np.testing.assert_allclose(y1[0], y[2], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ld1[0], ld[2], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["actnorm", "conv1x1_lu", "affine_coupling_channel_tanh", "nice", "realnvp",
                                  "glow_affine_lu"])
def test_jits_without_recompiling(name):
    factory, shape = CASES[name]
    bij = _randomised(factory)
    traces = []

    @nnx.jit
    def fwd(b, x):
        traces.append(1)
        return b.forward_and_log_det(x)

    for seed in range(3):
        fwd(bij, _inputs(shape, 2, jnp.float32, seed=seed))
    assert len(traces) == 1


def test_zero_initialised_conditioners_make_couplings_start_as_the_identity():
    # Conditioners end zero-initialised (STYLE.md §3): an untouched coupling is the identity, log-det 0.
    x = _inputs((3, 3, 4), 2, jnp.float32)
    for kind in (F.AdditiveCoupling, F.AffineCoupling):
        layer = kind(F.ConvConditioner(2, 4 if kind is F.AffineCoupling else 2, width=8, rngs=nnx.Rngs(0)),
                     num_channels=4)
        y, ld = layer.forward_and_log_det(x)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(ld, jnp.zeros(2))


def test_squeeze_moves_each_2x2_block_into_channels():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y = F.squeeze(x)
    assert y.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(y[0, 0, 1], jnp.concatenate([x[0, 0, 2], x[0, 0, 3], x[0, 1, 2], x[0, 1, 3]]))
    np.testing.assert_array_equal(F.unsqueeze(y), x)


def test_masks():
    m = F.checkerboard_mask(2, 4, 1, parity=0)
    np.testing.assert_array_equal(m[..., 0], [[1, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(F.checkerboard_mask(2, 4, 1, parity=1), 1 - m)
    np.testing.assert_array_equal(F.channel_mask(1, 1, 4, parity=0)[0, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(F.interleaved_mask(5, parity=0), [1, 0, 1, 0, 1])


# ----------------------------------------------------------------------------------------------------
# Bad inputs: each raises ValueError with a message that names the argument and what was given.

BAD = [
    ("squeeze odd height", lambda: F.squeeze(jnp.zeros((1, 3, 4, 1))),
     "`x` must have even height and width to squeeze; got shape (1, 3, 4, 1)"),
    ("unsqueeze channels not divisible by 4", lambda: F.unsqueeze(jnp.zeros((1, 2, 2, 6))),
     "`y` must have a channel count divisible by 4 to unsqueeze; got shape (1, 2, 2, 6)"),
    ("odd channel count for a channel split",
     lambda: F.AffineCoupling(F.ConvConditioner(1, 2, width=4, rngs=nnx.Rngs(0)), num_channels=3),
     "`num_channels` must be an even integer >= 2 for a channel split; got 3"),
    ("coupling without mask or channels",
     lambda: F.AdditiveCoupling(F.MLPConditioner(2, 2, hidden=(4,), rngs=nnx.Rngs(0))),
     "exactly one of `mask` and `num_channels` must be given; got mask=None, num_channels=None"),
    ("non-binary mask",
     lambda: F.AdditiveCoupling(F.MLPConditioner(2, 2, hidden=(4,), rngs=nnx.Rngs(0)), mask=np.array([0.5, 1.0])),
     "`mask` must contain only 0 and 1 with at least one of each; got [0.5 1. ]"),
    ("unknown scale function",
     lambda: F.AffineCoupling(F.ConvConditioner(1, 2, width=4, rngs=nnx.Rngs(0)), num_channels=2, scale_fn="relu"),
     "`scale_fn` must be one of ['tanh', 'sigmoid', 'exp']; got 'relu'"),
    ("bad parity", lambda: F.checkerboard_mask(2, 2, 1, parity=2), "`parity` must be 0 or 1; got 2"),
    ("wrong channel count for actnorm", lambda: F.ActNorm(3).forward_and_log_det(jnp.zeros((2, 2, 2, 4))),
     "`x` must have 3 channels (last axis); got shape (2, 2, 2, 4)"),
    ("wrong channel count for 1x1 conv",
     lambda: F.InvertibleConv1x1(3, rngs=nnx.Rngs(0)).inverse_and_log_det(jnp.zeros((2, 2, 2, 4))),
     "`y` must have 3 channels (last axis); got shape (2, 2, 2, 4)"),
    ("non-permutation", lambda: F.Permute([0, 0, 1]), "`permutation` must be a permutation of range(3); got [0, 0, 1]"),
    ("wrong event shape for flatten", lambda: F.Flatten((2, 2)).forward_and_log_det(jnp.zeros((1, 2, 3))),
     "`x` must have event shape (2, 2); got shape (1, 2, 3)"),
    ("empty chain", lambda: F.Chain([]), "`layers` must be a non-empty sequence of bijectors; got []"),
    ("factor-out of one channel", lambda: F.FactorOut((2, 2, 1), F.Flatten((2, 2, 1)), rngs=nnx.Rngs(0)),
     "`event_shape` must be (height, width, channels) with channels >= 2 to factor out half; got (2, 2, 1)"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
