"""RealNVP-specific checks (spec generative.md §4.4): checkerboard masks before each squeeze and channel
masks after, multi-scale bookkeeping (output dimension = input dimension), identity at initialisation.

Models come from `_initialised` (tests/flows/test_bijector.py); each check runs in one compiled program."""
import math
import re

import numpy as np
import pytest
from flax import nnx

from kexue_jax import flows as F
from tests.flows.test_bijector import _fast_jit, _initialised


def test_untrained_realnvp_is_the_identity_up_to_a_permutation():
    model = _initialised(lambda rngs: F.RealNVP(event_shape=(8, 8, 1), num_levels=2, num_couplings=2, width=8,
                                                num_blocks=1, levels=17, rngs=rngs))
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    z, ld, log_prob = map(np.asarray, _fast_jit(lambda m, x: m.forward_and_log_det(x) + (m.log_prob(x),),
                                                model, x))
    assert z.shape == (3, 64)
    np.testing.assert_allclose(ld, 0.0, atol=1e-6)
    # squeezes and splits only move pixels around
    np.testing.assert_allclose(np.sort(z, axis=1), np.sort(x.reshape(3, 64), axis=1), atol=1e-6)
    np.testing.assert_allclose(log_prob, -0.5 * np.sum(x.reshape(3, -1) ** 2, 1) - 32 * math.log(2 * math.pi),
                               rtol=1e-6)


def test_checkerboard_then_channel_masks():
    model = _initialised(lambda rngs: F.RealNVP(event_shape=(4, 4, 1), num_levels=1, num_couplings=3, width=4,
                                                rngs=rngs))
    kinds = [type(layer).__name__ for layer in model.flow.layers]
    assert kinds[:3] == ["AffineCoupling"] * 3 and kinds[3] == "Squeeze"
    masks = [np.asarray(layer.mask) for layer in model.flow.layers[:3]]
    np.testing.assert_array_equal(masks[0], 1 - masks[1])
    np.testing.assert_array_equal(masks[0][..., 0], F.checkerboard_mask(4, 4, 1, parity=0)[..., 0])


def test_multiscale_layout_alternates_channel_halves_and_ends_with_checkerboards():
    # RealNVP §3.6 (module docstring): per level, n checkerboard couplings (parity 0, 1, 0, ...), squeeze, n channel
    # couplings alternating which half conditions (parity 0, 1, 0, ...), factor out; then n + 1 checkerboard
    # couplings on what is left. Without the alternation one half of the channels is never transformed.
    n = 3
    model = _initialised(lambda rngs: F.RealNVP(event_shape=(8, 8, 1), num_levels=2, num_couplings=n, width=4,
                                                num_blocks=0, rngs=rngs))
    chain, shapes = model.flow, [(8, 8, 1), (4, 4, 2)]
    for h, w, c in shapes:
        layers = list(chain.layers)
        assert [type(l).__name__ for l in layers] == ["AffineCoupling"] * n + ["Squeeze"] + ["AffineCoupling"] * n + [
            "FactorOut"]
        for i in range(n):
            np.testing.assert_array_equal(np.asarray(layers[i].mask), F.checkerboard_mask(h, w, c, parity=i % 2))
            channel = layers[n + 1 + i]
            assert channel.mask is None and channel.num_channels == 4 * c and channel.parity == i % 2
        chain = layers[-1].inner
    last = list(chain.layers)
    assert [type(l).__name__ for l in last] == ["AffineCoupling"] * (n + 1) + ["Flatten"]
    for i in range(n + 1):
        np.testing.assert_array_equal(np.asarray(last[i].mask), F.checkerboard_mask(2, 2, 4, parity=i % 2))


BAD = [
    ("odd image size", lambda: F.RealNVP(event_shape=(5, 5, 1), num_levels=1, num_couplings=2, width=4,
                                         rngs=nnx.Rngs(0)),
     "`event_shape` must be (height, width, channels) with height and width divisible by 2**num_levels = 2; "
     "got (5, 5, 1)"),
    ("zero levels", lambda: F.RealNVP(event_shape=(4, 4, 1), num_levels=0, num_couplings=2, width=4, rngs=nnx.Rngs(0)),
     "`num_levels` must be an integer >= 1; got 0"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
