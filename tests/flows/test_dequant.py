"""Variational dequantisation: q(u|x) is an exact conditional density, and the ELBO accounting is right.

- log q(u|x) from `sample_and_log_prob` (and from `log_prob` through the inverse) equals the change of
  variables log N(ε) − log|det ∂u/∂ε| with the Jacobian from `jax.jacfwd` (float64, 1e-10); the inverse
  recovers ε (1e-10);
- u lies strictly inside (0, 1) and x + u inside the bin of x in float32, even with saturating parameters;
- a 2-D toy whose discrete probabilities P(x) = ∫ p((x+u)/L)·L^{−D} du come from scipy's `dblquad`: the
  ELBO is below log P(x) (by more than its Monte-Carlo error: q is not the posterior), and the 20000-sample
  importance-weighted estimate is within 0.01 nats of log P(x);
- a 1-D toy where q is set to the exact conditional p(x+u)/P(x) (derived here by hand, independently of the
  module): every single-sample ELBO equals log P(x) (quadrature) to 1e-9 — wrong signs of log q or a
  missing D·ln L would both be off by O(1);
- the uniform dequantiser reproduces `flow_loss` draw for draw (same key) and `evaluate` reproduces
  `kexue_jax.flows.train.evaluate` on the same draws;
- sampling is a deterministic function of the key, depends on x, and compiles once;
- one step of the shared trainer moves the parameters of q; a table of bad inputs and their messages.
"""
import functools
import math
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import integrate

from kexue_jax import flows as F
from kexue_jax.core.train import TrainState, make_train_step
from kexue_jax.flows import dequant as DQ

_FAST = {"xla_backend_optimization_level": 0}


def _random_params(factory, *, seed, scale, dtype=np.float32):
    """(graphdef, state) of factory(rngs) with every Param drawn by NumPy (nothing compiles):
    kernels N(0, scale²/fan_in), biases N(0, (scale/4)²); other variables (masks) from the module."""
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(seed))), nnx.Param, ...)
    rng = np.random.default_rng(seed)

    def draw(a):
        if len(a.shape) >= 2:
            return jnp.asarray(scale * rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])), dtype)
        return jnp.asarray(scale / 4 * rng.standard_normal(a.shape), dtype)

    if jax.tree.leaves(rest):
        rest = jax.jit(lambda: nnx.split(factory(nnx.Rngs(seed)), nnx.Param, ...)[2], compiler_options=_FAST)()
    return graphdef, nnx.merge_state(jax.tree.map(draw, params), rest)


def _jit(fn):
    return jax.jit(fn, compiler_options=_FAST)


# ----------------------------------------------------------------------------------------------------
# q is an exact density: log q = log N(ε) − log|det jacfwd|, and the inverse recovers ε.

JAC_CASES = {
    "image_2x2x2_two_couplings_resblock": dict(event_shape=(2, 2, 2), levels=17, num_couplings=2, width=6,
                                               num_blocks=1),
    "vector_3_three_couplings": dict(event_shape=(3,), levels=5, num_couplings=3, hidden=(7,)),
}


@pytest.mark.parametrize("name", sorted(JAC_CASES))
def test_log_q_is_the_change_of_variables_density(name):
    kwargs = JAC_CASES[name]
    shape = kwargs["event_shape"]
    with jax.enable_x64(True):
        graphdef, state = _random_params(lambda rngs: DQ.VariationalDequantizer(**kwargs, rngs=rngs), seed=1,
                                         scale=1.5, dtype=np.float64)
        images = np.random.default_rng(2).integers(0, kwargs["levels"], (3,) + shape)
        key = jax.random.key(4)

        @_jit
        def run(state, images):
            dq = nnx.merge(graphdef, state)
            u, log_q = dq.sample_and_log_prob(images, key=key)
            eps = jax.random.normal(key, images.shape)  # the draw of sample_and_log_prob

            def one(e, x):  # ε [D] -> u [D] for one example
                return dq.forward_and_log_det(e.reshape((1,) + shape), x[None])[0].reshape(-1)

            jac = jax.vmap(jax.jacfwd(one))(eps.reshape(3, -1), images)  # [b, D, D]
            log_q_ref = F.standard_normal_log_prob(eps) - jnp.linalg.slogdet(jac)[1]
            eps_back, _ = dq.inverse_and_log_det(u, images)
            return u, log_q, log_q_ref, dq.log_prob(u, images), eps, eps_back

        u, log_q, log_q_ref, log_q_inv, eps, eps_back = run(state, images)
        assert u.dtype == jnp.float64 and log_q.shape == (3,)
        np.testing.assert_allclose(log_q, log_q_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(log_q_inv, log_q_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(eps_back, eps, rtol=0, atol=1e-10)
        # the parameters are far from the identity, so the check is not passing trivially
        assert np.max(np.abs(np.asarray(log_q) - np.asarray(F.standard_normal_log_prob(eps)))) > 1.0


def test_sampling_is_deterministic_in_the_key_and_jits_once():
    graphdef, state = _random_params(lambda rngs: DQ.VariationalDequantizer(event_shape=(4,), levels=17,
                                                                            num_couplings=1, hidden=(4,),
                                                                            rngs=rngs), seed=0, scale=1.0)
    images = np.arange(8).reshape(2, 4)
    traces = []

    @_jit
    def draw(state, images, k):
        traces.append(1)
        return nnx.merge(graphdef, state).sample_and_log_prob(images, key=k)

    (u1, q1), (u2, q2) = draw(state, images, jax.random.key(0)), draw(state, images, jax.random.key(0))
    u3, _ = draw(state, images, jax.random.key(1))
    u4, q4 = draw(state, images[::-1], jax.random.key(0))  # other images, same key: same ε, other q
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(q1, q2)
    assert np.all(np.asarray(u1) != np.asarray(u3))
    assert np.all(np.asarray(q1) != np.asarray(q4))  # q depends on x
    assert len(traces) == 1  # new keys and new images reuse the compiled program


@pytest.mark.parametrize("event_shape", [(4, 4, 1), (5,)])
def test_couplings_of_q_alternate_the_half_they_update(event_shape):
    # The first layer is purely conditional (mask all zeros: every entry is updated); the couplings after it use
    # the checkerboard (images) or interleaved (vectors) mask of parity 0, 1, 0, ...: consecutive couplings update
    # complementary halves, so no entry of v is left with a single elementwise affine layer.
    dq = nnx.eval_shape(lambda: DQ.VariationalDequantizer(event_shape=event_shape, levels=17, num_couplings=3,
                                                          width=4, hidden=(4,), rngs=nnx.Rngs(0)))
    masks = [np.asarray(m, np.float32).reshape(event_shape) for m in dq.masks]
    assert len(masks) == 4
    np.testing.assert_array_equal(masks[0], np.zeros(event_shape))
    for k in range(1, 4):
        parity = (k - 1) % 2
        expected = (F.checkerboard_mask(*event_shape, parity=parity) if len(event_shape) == 3
                    else F.interleaved_mask(event_shape[0], parity=parity))
        np.testing.assert_array_equal(masks[k], expected)
    np.testing.assert_array_equal(masks[1] + masks[2], np.ones(event_shape))


# ----------------------------------------------------------------------------------------------------
# u ∈ (0, 1) strictly, and x + u stays in the bin of x.


@pytest.mark.parametrize("levels,scale", [(17, 1.0), (256, 60.0)])
def test_u_strictly_inside_the_bin(levels, scale):
    # scale 60: conditioners with huge weights push v to ±hundreds; the tanh bound keeps u ≤ σ(10) < 1 in float32
    graphdef, state = _random_params(lambda rngs: DQ.VariationalDequantizer(event_shape=(4, 4, 1), levels=levels,
                                                                            num_couplings=2, width=4, rngs=rngs),
                                     seed=3, scale=scale)
    images = np.random.default_rng(0).integers(0, levels, (512, 4, 4, 1)).astype(np.uint8)
    images[:, 0, 0, 0] = levels - 1  # the top bin, where x + u rounds up first
    images[:, 0, 1, 0] = 0

    @_jit
    def run(state):
        u, log_q = nnx.merge(graphdef, state).sample_and_log_prob(images, key=jax.random.key(5))
        y = F.dequantize(images, key=jax.random.key(0), levels=levels)  # only for the dtype
        return u, log_q, (images.astype(y.dtype) + u) / levels

    u, log_q, y = map(np.asarray, run(state))
    assert u.dtype == np.float32
    assert u.min() > 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(np.floor(y * levels), images)
    assert np.all(np.isfinite(log_q))
    if scale > 10:  # the saturating case really saturates
        assert u.max() > 0.9999 and u.min() < 1e-4


# ----------------------------------------------------------------------------------------------------
# The bound against quadrature.


class GaussianMixture2D(nnx.Module):
    """A fixed 2-component correlated Gaussian mixture on the flow's centred space (no parameters)."""

    event_shape = (2,)
    MEANS = ((-0.2, 0.1), (0.25, -0.15))
    COVS = (((0.04, 0.015), (0.015, 0.03)), ((0.02, -0.01), (-0.01, 0.05)))
    WEIGHTS = (0.6, 0.4)

    def __init__(self, levels):
        self.levels = levels

    @staticmethod
    def numpy_log_prob(yc):
        yc = np.asarray(yc, np.float64)
        out = 0.0
        for w, m, c in zip(GaussianMixture2D.WEIGHTS, np.array(GaussianMixture2D.MEANS),
                           np.array(GaussianMixture2D.COVS)):
            d = yc - m
            quad = np.einsum("...i,ij,...j->...", d, np.linalg.inv(c), d)
            out = out + w * np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(np.linalg.det(c)))
        return np.log(out)

    def log_prob(self, yc):
        comps = []
        for i in range(2):
            cov = jnp.asarray(self.COVS[i], yc.dtype)
            d = yc - jnp.asarray(self.MEANS[i], yc.dtype)[None, :]  # [b, 2]
            quad = jnp.einsum("bi,ij,bj->b", d, jnp.linalg.inv(cov), d)
            comps.append(math.log(self.WEIGHTS[i]) - 0.5 * quad - math.log(2 * math.pi)
                         - 0.5 * jnp.log(jnp.linalg.det(cov)))
        return jax.nn.logsumexp(jnp.stack(comps), axis=0)


def _log_P(log_p_y, x, levels):
    """log P(x) = log ∫_[0,1)^2 p((x + u)/L − ½)·L^{−2} du by scipy's dblquad."""
    f = lambda u2, u1: np.exp(log_p_y(np.array([(x[0] + u1) / levels - 0.5, (x[1] + u2) / levels - 0.5])))
    value, err = integrate.dblquad(f, 0.0, 1.0, 0.0, 1.0, epsabs=1e-13, epsrel=1e-11)
    return math.log(value / levels ** 2)


def test_elbo_below_and_importance_weighted_estimate_reaches_log_P():
    # q: random conditioners (scale 0.3) whose first layer is widened to log s = 2·tanh(0.3) = 0.58. A q
    # narrower than the bin (e.g. the logit-normal(0, 1) at initialisation) leaves the bin's edges with
    # heavy-tailed weights p/q, and the importance-weighted estimate then converges far more slowly in K.
    levels, n, k_small = 4, 20000, 10
    with jax.enable_x64(True):
        dq_graph, dq_state = _random_params(lambda rngs: DQ.VariationalDequantizer(
            event_shape=(2,), levels=levels, num_couplings=2, hidden=(8,), rngs=rngs), seed=7, scale=0.3,
            dtype=np.float64)
        bias = np.asarray(dq_state["conditioners"][0]["out"]["bias"][...]).copy()  # [shift (2), raw (2)]
        bias[2:] += 0.6
        dq_state["conditioners"][0]["out"]["bias"][...] = jnp.asarray(bias)

        class Model(nnx.Module):
            def __init__(self, dequantizer):
                self.flow, self.dequantizer, self.levels = GaussianMixture2D(levels), dequantizer, levels

        @_jit
        def terms(state, images):
            return DQ.dequantized_terms(Model(nnx.merge(dq_graph, state)), images, key=jax.random.key(11))

        # the toy's JAX density is the numpy one that the quadrature integrates
        pts = np.random.default_rng(0).uniform(-0.5, 0.5, (5, 2))
        np.testing.assert_allclose(GaussianMixture2D(levels).log_prob(jnp.asarray(pts)),
                                   GaussianMixture2D.numpy_log_prob(pts), rtol=1e-12)
        to_nats = -2 * math.log(2)  # bits/dim -> nats for D = 2
        for x in np.array([[1, 2], [2, 1]]):
            log_P = _log_P(GaussianMixture2D.numpy_log_prob, x, levels)
            log_p, log_q = map(np.asarray, terms(dq_state, np.repeat(x[None], n, axis=0)))
            elbo = np.asarray(DQ.variational_bits_per_dim(log_p, log_q, 2, levels)) * to_nats  # per sample
            np.testing.assert_allclose(elbo, log_p - log_q - 2 * math.log(levels), rtol=0, atol=1e-10)
            se = elbo.std() / math.sqrt(n)
            # below log P(x), and clearly (q is not the posterior: the gap is KL(q || posterior) > 0)
            assert log_P - elbo.mean() > 5 * se, (log_P, elbo.mean(), se)
            iw = float(DQ.importance_weighted_bits_per_dim(log_p[:, None], log_q[:, None], 2, levels)[0]) * to_nats
            iw_small = np.mean(DQ.importance_weighted_bits_per_dim(
                log_p.reshape(-1, k_small).T, log_q.reshape(-1, k_small).T, 2, levels)) * to_nats
            # K = 1 (ELBO) < K = 10 < K = 20000 ≈ log P(x): within 0.01 nats (measured gaps 0.002 and 0.006)
            assert elbo.mean() < iw_small < iw, (elbo.mean(), iw_small, iw)
            assert abs(iw - log_P) < 0.01, (iw, log_P)


def _logit_normal_log_density(u, m, s, bound):
    """Density of u = σ(B·tanh(z/B)), z ~ N(m, s²), derived by hand: z(u) = B·atanh(logit(u)/B),
    dz/du = 1/((1 − (logit(u)/B)²)·u·(1 − u))."""
    w = np.log(u) - np.log1p(-u)
    inside = np.abs(w) < bound  # q has no mass outside (σ(−B), σ(B))
    w = np.where(inside, w, 0.0)
    z = bound * np.arctanh(w / bound)
    log_dz_du = np.where(inside, -np.log1p(-(w / bound) ** 2) - np.log(u) - np.log1p(-u), -np.inf)
    return -0.5 * ((z - m) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi) + log_dz_du


def test_the_elbo_is_exact_when_q_is_the_posterior():
    # 1-D, L = 2: p puts mass P_x on bin x, shaped inside the bin exactly like q_x(u) (module-independent
    # formula above), so q(u|x) = p((x+u)/L)·L^{−1}/P(x) is the posterior and log p − log q − ln L = log P(x)
    # for every sample. P(x) itself comes from quadrature of p over the bin.
    levels, bound = 2, 10.0
    target = {0: (0.7, -0.8, 0.6, 0.3), 1: (-1.2, 0.4, 1.3, 0.7)}  # x: (m_x, log s_x, _, P_x)

    def p_y(yc):  # density of y − ½ on [−½, ½)
        y = yc + 0.5
        x = np.minimum(np.floor(y * levels), levels - 1)
        out = np.zeros_like(y)
        for b, (m, log_s, _, mass) in target.items():
            u = y * levels - b
            inside = (x == b) & (u > 0) & (u < 1)
            out = np.where(inside, mass * levels * np.exp(_logit_normal_log_density(
                np.clip(u, 1e-300, 1 - 1e-16), m, math.exp(log_s), bound)), out)
        return out

    class Density(nnx.Module):
        event_shape = (1,)

        def log_prob(self, yc):
            return jnp.asarray(np.log(p_y(np.asarray(yc)))[:, 0])

    with jax.enable_x64(True):
        # one linear conditioner [v·0, xc] -> [shift, raw]: shift = m_x, 2·tanh(raw/2) = log s_x at xc = ∓¼
        graphdef, state = _random_params(lambda rngs: DQ.VariationalDequantizer(
            event_shape=(1,), levels=levels, num_couplings=0, hidden=(), logit_bound=bound, rngs=rngs),
            seed=0, scale=1.0, dtype=np.float64)
        xc = np.array([-0.25, 0.25])
        m = np.array([target[0][0], target[1][0]])
        raw = 2 * np.arctanh(np.array([target[0][1], target[1][1]]) / 2)
        kernel = np.asarray(state["conditioners"][0]["out"]["kernel"][...]).copy()  # [in 2, out 2]
        kernel[1] = [(m[1] - m[0]) / (xc[1] - xc[0]), (raw[1] - raw[0]) / (xc[1] - xc[0])]
        state["conditioners"][0]["out"]["kernel"][...] = jnp.asarray(kernel)
        state["conditioners"][0]["out"]["bias"][...] = jnp.asarray([m[0] - kernel[1, 0] * xc[0],
                                                                    raw[0] - kernel[1, 1] * xc[0]])
        images = np.repeat(np.array([[0], [1]]), 500, axis=0)  # [1000, 1]
        u, log_q = map(np.asarray, _jit(lambda s: nnx.merge(graphdef, s).sample_and_log_prob(
            images, key=jax.random.key(3)))(state))
        log_p = np.asarray(Density().log_prob(jnp.asarray((images + u) / levels - 0.5)))
        elbo = -np.asarray(DQ.variational_bits_per_dim(log_p, log_q, 1, levels)) * math.log(2)
        for b in (0, 1):
            P, _ = integrate.quad(lambda yc: p_y(np.array([yc]))[0], b / levels - 0.5, (b + 1) / levels - 0.5,
                                  epsabs=1e-13, epsrel=1e-12, limit=200, points=[(b + 0.5) / levels - 0.5])
            np.testing.assert_allclose(P, target[b][3], rtol=1e-8)  # p really puts mass P_x on the bin
            np.testing.assert_allclose(elbo[images[:, 0] == b], math.log(P), rtol=0, atol=1e-9)
        # and a q that is not the posterior is strictly worse on average (Jensen: gap = KL(q || posterior))
        state["conditioners"][0]["out"]["bias"][...] = state["conditioners"][0]["out"]["bias"][...] + 0.5
        u2, log_q2 = map(np.asarray, _jit(lambda s: nnx.merge(graphdef, s).sample_and_log_prob(
            images, key=jax.random.key(3)))(state))
        log_p2 = np.asarray(Density().log_prob(jnp.asarray((images + u2) / levels - 0.5)))
        elbo2 = log_p2 - log_q2 - math.log(levels)
        assert np.mean(elbo2[images[:, 0] == 0]) < math.log(target[0][3]) - 0.05


# ----------------------------------------------------------------------------------------------------
# The uniform special case is flow_loss / flows.evaluate exactly.


def _nice_flow(dequantizer):
    return lambda rngs: DQ.DequantizedFlow(flow=F.NICE, flow_kwargs=dict(event_shape=(4,), num_couplings=2,
                                                                         hidden=(8,), levels=17),
                                           dequantizer=dequantizer,
                                           dequantizer_kwargs=None if dequantizer == "uniform" else dict(
                                               num_couplings=1, hidden=(4,)), rngs=rngs)


def test_uniform_dequantizer_is_flow_loss_draw_for_draw():
    graphdef, state = _random_params(_nice_flow("uniform"), seed=2, scale=1.0)
    images = np.random.default_rng(0).integers(0, 17, (6, 4)).astype(np.uint8)
    key = jax.random.key(9)

    @_jit
    def run(state):
        model = nnx.merge(graphdef, state)
        log_p, log_q = DQ.dequantized_terms(model, images, key=key)
        ours = DQ.variational_bits_per_dim(log_p, log_q, 4, 17)
        ref = F.bits_per_dim(model.flow.log_prob(F.dequantize(images, key=key, levels=17) - 0.5), 4, 17)
        loss, aux = DQ.variational_flow_loss(model, {"image": images}, key=key, levels=17)
        ref_loss, _ = F.flow_loss(model.flow, {"image": images}, key=key, levels=17)
        return ours, ref, loss, ref_loss, aux

    ours, ref, loss, ref_loss, aux = run(state)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert float(aux["log_q_nats"]) == 0.0
    # the flow is not the identity: bits/dim differ between images (so the match is not between constants)
    assert np.ptp(np.asarray(ref)) > 0.05


def test_variational_flow_loss_reports_the_elbo_terms_of_its_draw():
    # With the same key, `dequantized_terms` gives the draw's log p(y) and log q(u|x) (log q checked against
    # jacfwd above): the loss is mean (log q − log p + D ln L)/(D ln 2) (NumPy float64, D = 4), and the aux
    # terms are −E log p and E log q (nonzero for a random q, so a sign error shows).
    graphdef, state = _random_params(_nice_flow("variational"), seed=4, scale=1.0)
    images = np.random.default_rng(3).integers(0, 17, (6, 4)).astype(np.uint8)
    key = jax.random.key(2)

    @_jit
    def run(state):
        model = nnx.merge(graphdef, state)
        return DQ.variational_flow_loss(model, {"image": images}, key=key, levels=17), DQ.dequantized_terms(
            model, images, key=key)

    (loss, aux), (log_p, log_q) = jax.tree.map(lambda a: np.asarray(a, np.float64), run(state))
    assert abs(np.mean(log_q)) > 0.1
    np.testing.assert_allclose(loss, np.mean((log_q - log_p + 4 * math.log(17)) / (4 * math.log(2))), rtol=1e-6)
    np.testing.assert_allclose(aux["nll_nats"], -np.mean(log_p), rtol=1e-6)
    np.testing.assert_allclose(aux["log_q_nats"], np.mean(log_q), rtol=1e-6)


def test_evaluate_matches_flows_evaluate_for_uniform_and_bounds_are_ordered():
    images = np.random.default_rng(1).integers(0, 17, (7, 4)).astype(np.uint8)
    dataset = types.SimpleNamespace(arrays={"image": images}, levels=17)
    config = ml_collections.ConfigDict(dict(eval_dequant_samples=3, eval_importance_samples=3, eval_batch_size=4))
    for kind in ("uniform", "variational"):
        graphdef, state = _random_params(_nice_flow(kind), seed=2, scale=1.0)
        model = nnx.merge(graphdef, state)
        out = DQ.evaluate(model, dataset, key=jax.random.key(0), config=config, workdir=None)
        assert out["test/iw_bpd"] <= out["test/bpd"] + 1e-9
        if kind == "uniform":  # the same draws as flows.evaluate: the same number
            np.testing.assert_allclose(out["test/bpd"], out["test/flow_uniform_bpd"], rtol=1e-6)
            assert out["test/log_q_nats"] == 0.0
            # nats and bits/dim of the same draws: bpd = (nll_nats + D ln L)/(D ln 2) (log q = 0), D = 4
            np.testing.assert_allclose(out["test/bpd"], (out["test/nll_nats"] + 4 * math.log(17)) / (4 * math.log(2)),
                                       rtol=1e-6)
        else:
            assert out["test/iw_bpd"] < out["test/bpd"] - 1e-4


# ----------------------------------------------------------------------------------------------------
# One step of the shared trainer.


def test_one_shared_trainer_step_trains_the_dequantizer():
    graphdef, state = _random_params(_nice_flow("variational"), seed=0, scale=1.0)
    _, params, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)
    tx = optax.adam(1e-2)
    train_state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), rest, None)
    step = _jit(make_train_step(functools.partial(DQ.variational_flow_loss, levels=17), tx, graphdef))
    batch = {"image": np.random.default_rng(0).integers(0, 17, (8, 4)).astype(np.uint8)}
    new, metrics = step(train_state, batch, key=jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    before = params["dequantizer"]["conditioners"][0]["out"]["kernel"][...]
    after = new.params["dequantizer"]["conditioners"][0]["out"]["kernel"][...]
    assert float(jnp.max(jnp.abs(after - before))) > 1e-3  # q received a gradient


# ----------------------------------------------------------------------------------------------------
# Bad inputs.


def _vd(**kw):
    args = dict(event_shape=(4,), levels=17, rngs=nnx.Rngs(0))
    args.update(kw)
    return lambda: DQ.VariationalDequantizer(**args)


BAD = [
    ("event shape rank 2", _vd(event_shape=(4, 4)),
     "`event_shape` must be (features,) or (height, width, channels) of positive integers; got (4, 4)"),
    ("event shape zero", _vd(event_shape=(0,)),
     "`event_shape` must be (features,) or (height, width, channels) of positive integers; got (0,)"),
    ("levels one", _vd(levels=1), "`levels` must be an integer >= 2; got 1"),
    ("negative couplings", _vd(num_couplings=-1), "`num_couplings` must be an integer >= 0; got -1"),
    ("logit bound", _vd(logit_bound=0.0), "`logit_bound` must be a finite number > 0; got 0.0"),
    ("scale bound", _vd(scale_bound=-1), "`scale_bound` must be a finite number > 0; got -1"),
    ("images shape", lambda: DQ.UniformDequantizer(event_shape=(4,), levels=17).sample_and_log_prob(
        jnp.zeros((2, 5), jnp.uint8), key=jax.random.key(0)),
     "`images` must have shape [batch, *(4,)]; got shape (2, 5)"),
    ("eps shape", lambda: _vd()().forward_and_log_det(jnp.zeros((2, 3)), jnp.zeros((2, 4), jnp.uint8)),
     "`eps` must have shape [batch, *(4,)]; got shape (2, 3)"),
    ("unknown dequantizer", lambda: DQ.DequantizedFlow(flow=F.NICE, flow_kwargs=dict(event_shape=(4,)),
                                                       dequantizer="gaussian", rngs=nnx.Rngs(0)),
     "`dequantizer` must be one of ['uniform', 'variational']; got 'gaussian'"),
    ("levels in dequantizer kwargs", lambda: DQ.DequantizedFlow(
        flow=F.NICE, flow_kwargs=dict(event_shape=(4,)), dequantizer_kwargs=dict(levels=3), rngs=nnx.Rngs(0)),
     "`dequantizer_kwargs` must not set 'levels' (it comes from the flow); got levels=3"),
    ("bad flow path", lambda: DQ.DequantizedFlow(flow="kexue_jax.flows.NoSuchFlow", rngs=nnx.Rngs(0)),
     "`flow` must be an importable path"),
    ("levels mismatch in loss", lambda: DQ.variational_flow_loss(
        types.SimpleNamespace(levels=17), {"image": jnp.zeros((1, 4), jnp.uint8)}, key=jax.random.key(0), levels=256),
     "`levels` must equal the model's levels (17); got 256"),
    ("log_q shape", lambda: DQ.variational_bits_per_dim(jnp.zeros(3), jnp.zeros(2), 4, 17),
     "`log_q` must have the shape of `log_p` (3,); got (2,)"),
    ("iw needs [k, b]", lambda: DQ.importance_weighted_bits_per_dim(jnp.zeros(3), jnp.zeros(3), 4, 17),
     "`log_p` and `log_q` must both be [k, b]; got (3,) and (3,)"),
    ("K zero", lambda: DQ.evaluate(types.SimpleNamespace(levels=17, event_shape=(4,), num_dims=4),
                                   types.SimpleNamespace(arrays={"image": np.zeros((2, 4), np.uint8)}, levels=17),
                                   key=jax.random.key(0),
                                   config=ml_collections.ConfigDict(dict(eval_importance_samples=0)), workdir=None),
     "`eval_importance_samples` must be an integer >= 1; got 0"),
    ("compare", lambda: DQ.run_comparison(ml_collections.ConfigDict(dict(compare=("uniform", "flow++"))), "/tmp"),
     "`compare` must be a non-empty sequence of distinct names from ['uniform', 'variational']; got "
     "('uniform', 'flow++')"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
