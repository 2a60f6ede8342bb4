"""NICE-specific checks (spec generative.md §5.4): additive couplings are volume-preserving, the scaling
layer's log-det is Σ k and equals a learned-variance prior on h, the untrained model is the identity.

Each check runs in one compiled program on a model from `_initialised`/`_randomised`
(tests/flows/test_bijector.py)."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax import flows as F
from tests.flows.test_bijector import _fast_jit, _initialised, _randomised


def _gauss_logpdf(z, scale=None):
    z = np.asarray(z, np.float64).reshape(z.shape[0], -1)
    scale = np.ones((1, z.shape[1])) if scale is None else np.asarray(scale, np.float64)
    return np.sum(-0.5 * (z / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi), axis=1)


def test_untrained_nice_is_the_identity_with_a_gaussian_likelihood():
    model = _initialised(lambda rngs: F.NICE(event_shape=(8, 8, 1), num_couplings=4, hidden=(32, 32), levels=17,
                                             rngs=rngs))
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    z, ld, log_prob = map(np.asarray, _fast_jit(lambda m, x: m.forward_and_log_det(x) + (m.log_prob(x),),
                                                model, x))
    np.testing.assert_allclose(z, x.reshape(3, 64), atol=1e-6)
    np.testing.assert_allclose(ld, 0.0, atol=1e-6)
    np.testing.assert_allclose(log_prob, _gauss_logpdf(x), rtol=1e-6)


def test_couplings_are_volume_preserving_and_scaling_carries_the_log_det():
    model = _randomised(lambda rngs: F.NICE(event_shape=(6,), num_couplings=3, hidden=(8,), rngs=rngs))
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)

    @nnx.jit
    def run(model, x):
        h, ld_couplings = model.couplings.forward_and_log_det(x)
        z, ld = model.forward_and_log_det(x)
        return dict(h=h, ld_couplings=ld_couplings, z=z, ld=ld, log_prob=model.log_prob(x))

    r = jax.tree.map(np.asarray, run(model, x))
    h = r["h"]
    np.testing.assert_allclose(r["ld_couplings"], 0.0, atol=1e-6)
    k = np.asarray(model.scaling.log_scale[...])[None, :]  # [1, 6]
    assert np.any(k != 0)
    np.testing.assert_allclose(r["ld"], np.full(4, np.sum(k)), rtol=1e-5)
    np.testing.assert_allclose(r["z"], h * np.exp(k), rtol=1e-5, atol=1e-6)
    # scale layer <=> learned-variance prior on h: N(0, diag e^{-2k})
    np.testing.assert_allclose(r["log_prob"], _gauss_logpdf(h, np.exp(-k)), rtol=1e-5)


def test_couplings_alternate_which_half_is_updated():
    model = _initialised(lambda rngs: F.NICE(event_shape=(6,), num_couplings=2, hidden=(4,), rngs=rngs))
    masks = [np.asarray(c.mask) for c in model.couplings.layers]
    np.testing.assert_array_equal(masks[0], 1 - masks[1])


BAD = [
    ("zero couplings", lambda: F.NICE(event_shape=(4,), num_couplings=0, hidden=(4,), rngs=nnx.Rngs(0)),
     "`num_couplings` must be an integer >= 1; got 0"),
    ("one feature", lambda: F.NICE(event_shape=(1,), num_couplings=2, hidden=(4,), rngs=nnx.Rngs(0)),
     "`event_shape` must have at least 2 elements to split; got (1,)"),
    ("wrong event shape", lambda: F.NICE(event_shape=(8, 8, 1), num_couplings=1, hidden=(4,), rngs=nnx.Rngs(0))
     .log_prob(jnp.zeros((2, 8, 8, 3))), "`x` must have event shape (8, 8, 1); got shape (2, 8, 8, 3)"),
    ("bad levels", lambda: F.NICE(event_shape=(4,), num_couplings=1, hidden=(4,), levels=1, rngs=nnx.Rngs(0)),
     "`levels` must be an integer >= 2; got 1"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    # abstractly (nnx.eval_shape): the checks are on shapes and Python values, and run exactly as eagerly
    with pytest.raises(ValueError, match=re.escape(message)):
        nnx.eval_shape(fn)
