"""i-ResNet: spectral normalisation, fixed-point inverse and the log-det estimators, proved against closed forms.

The spec's setup (generative.md §2.4): d = 16, g(x) = W2·tanh(W1·x), W1 [64×16], W2 [16×64], each kernel
normalised to spectral norm √c so that Lip(g) ≤ c, here built as an `IResNetBlock` (tanh, one hidden layer
of 64, zero biases, `lipschitz` = √c) whose kernels start at 3× their LeCun scale, so the normalisation
has to act. Its Jacobian has the closed form J = W2ᵀ·diag(1 − tanh²(W1ᵀx))·W1ᵀ (row-vector kernels), computed
in NumPy and used as the reference for:
- the truncated power series with exact traces (to 1e-10) and its distance to the exact ln det, which must
  lie within d·Σ_{k>n} cᵏ/k ≤ d·c^{n+1}/((n+1)(1−c)) (and shrink with n);
- Hutchinson's estimator: the mean over 10⁴ probes within 3 standard errors of the exact truncated series;
- the Russian roulette: the mean over many truncations N within 4 standard errors of the exact series it
  is unbiased for, while the same truncations without the 1/P(N ≥ k) weights are far outside (negative
  control);
- the fixed-point inverse: each step shrinks the error by at least Lip(g) ≤ c, and the Banach bound holds.
Model-level checks: round trip to 1e-5 (float32) / 1e-10 (float64), the exact log-det equals
log|det jacfwd| of the whole flow both ways (2-D and 3-D), forward and inverse log-dets are negatives,
the power-iteration state is updated by a step of the shared trainer; a table of bad inputs.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kexue_jax.core.train import TrainState, make_train_step
from kexue_jax.flows import iresnet as IR
from tests.flows.test_bijector import _FAST_COMPILE, _to_float64

D, HIDDEN = 16, 64


def _jit(fn):
    return jax.jit(fn, compiler_options=_FAST_COMPILE)


def _perturbed_params(model, scale, seed):
    """`model` with every Param moved by scale·N(0, 1) (NumPy draws, so nothing compiles)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape).astype(a.dtype)),
                          params)
    return nnx.merge(graphdef, params, rest)


_SPEC = {}


def _spec_setup(c):
    """(kernels [(K1 [16, 64], b1), (K2 [64, 16], b2)] as float64 numpy, x [1, 16]) for Lip(g) ≤ c."""
    if c not in _SPEC:
        block = nnx.eval_shape(lambda: IR.IResNetBlock(D, hidden=(HIDDEN,), lipschitz=math.sqrt(c), activation="tanh",
                                                       n_power_iterations=3000, rngs=nnx.Rngs(0)))
        rng = np.random.default_rng(int(c * 10))
        k1 = 3 * rng.standard_normal((D, HIDDEN)) / np.sqrt(D)
        k2 = 3 * rng.standard_normal((HIDDEN, D)) / np.sqrt(HIDDEN)
        graphdef, state = nnx.split(block)
        state = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), state,
                             is_leaf=lambda a: isinstance(a, jax.ShapeDtypeStruct))
        state["layers"][0]["kernel"] = nnx.Param(jnp.asarray(k1, jnp.float32))
        state["layers"][1]["kernel"] = nnx.Param(jnp.asarray(k2, jnp.float32))
        for i, (m, n) in enumerate([(D, HIDDEN), (HIDDEN, D)]):
            state["layers"][i]["u"] = IR.PowerIterationState(jnp.asarray(rng.standard_normal(n), jnp.float32))
            state["layers"][i]["v"] = IR.PowerIterationState(jnp.asarray(rng.standard_normal(m), jnp.float32))
        state["rngs"]["probe"]["key"] = nnx.RngKey(jax.random.key(0))
        state["rngs"]["probe"]["count"] = nnx.RngCount(jnp.zeros((), jnp.uint32))
        with jax.enable_x64(True):
            state64 = _to_float64(state)
            # 3000 power iterations, stored back: the normalised kernels of this block
            weights = _jit(lambda s: nnx.merge(graphdef, s).weights(update=True))(state64)
        x = np.random.default_rng(1).standard_normal((1, D))
        _SPEC[c] = ([(np.asarray(w), np.asarray(b)) for w, b in weights], x, (k1, k2))
    return _SPEC[c]


def _g_np(weights, x):
    (k1, b1), (k2, b2) = weights
    return np.tanh(x @ k1 + b1) @ k2 + b2


def _jacobian_np(weights, x):
    """Closed-form Jacobian of g at x [1, d]: [d, d], J[i, j] = ∂g_i/∂x_j."""
    (k1, b1), (k2, _) = weights
    a = np.tanh(x @ k1 + b1)[0]
    return k2.T @ np.diag(1 - a ** 2) @ k1.T


def _series_np(jac, n):
    return sum((-1) ** (k + 1) * np.trace(np.linalg.matrix_power(jac, k)) / k for k in range(1, n + 1))


def _g_jax(weights):
    ws = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]
    return IR._mlp(ws, "tanh")


# ----------------------------------------------------------------------------------------------------
# Spectral normalisation.


@pytest.mark.parametrize("c", [0.5, 0.9])
def test_power_iteration_normalises_each_kernel_to_lipschitz_c(c):
    weights, _, (k1, k2) = _spec_setup(c)
    for (w, _), k in zip(weights, (k1, k2)):
        assert np.linalg.norm(k, 2) > 2 * math.sqrt(c)  # the raw kernel is far above the bound
        # soft normalisation W/max(1, σ̂/√c) with σ̂ = ‖W‖₂ after 3000 iterations: the norm is √c
        np.testing.assert_allclose(np.linalg.norm(w, 2), math.sqrt(c), rtol=1e-8)
        np.testing.assert_allclose(w, k * math.sqrt(c) / np.linalg.norm(k, 2), rtol=1e-7, atol=1e-9)
    jac = _jacobian_np(weights, _spec_setup(c)[1])
    assert np.linalg.norm(jac, 2) <= c + 1e-9


def test_soft_normalisation_leaves_a_small_kernel_unchanged_and_sigma_matches_numpy():
    rng = np.random.default_rng(3)
    k = rng.standard_normal((5, 7))
    with jax.enable_x64(True):
        u0, v0 = rng.standard_normal(7), rng.standard_normal(5)
        u, v, sigma = _jit(lambda k, u, v: IR.power_iteration(k, u, v, 60))(k, u0, v0)
        np.testing.assert_allclose(sigma, np.linalg.norm(k, 2), rtol=1e-10)
        np.testing.assert_allclose(np.abs(u), np.abs(np.linalg.svd(k)[2][0]), atol=1e-8)  # top right vector
        small = k / np.linalg.norm(k, 2) * 0.3
        np.testing.assert_array_equal(IR.spectral_normalise(jnp.asarray(small), sigma * 0.3 / sigma, 0.5), small)


def test_conv_power_iteration_bounds_the_explicit_conv_operator_norm():
    # The conv operator on a 4×4 image as an explicit matrix (jacfwd of the linear map): after the power
    # iterations its spectral norm is c, though the raw kernel's is ~3c; a 1×1 conv equals its matrix.
    c = 0.8
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        for k in (3, 1):
            kernel = 3 * rng.standard_normal((k, k, 2, 3)) / np.sqrt(k * k * 2)
            u0, v0 = rng.standard_normal((4, 4, 2)), rng.standard_normal((4, 4, 3))

            def run(kernel, u, v):
                u, v, sigma = IR.conv_power_iteration(kernel, u, v, 500)
                w = IR.spectral_normalise(kernel, sigma, c)
                as_matrix = lambda kk: jax.jacfwd(lambda a: IR._conv(a.reshape(1, 4, 4, 2), kk).reshape(-1))(
                    jnp.zeros(32))  # [48, 32]
                return sigma, as_matrix(kernel), as_matrix(w)

            sigma, raw, normalised = map(np.asarray, _jit(run)(kernel, u0, v0))
            np.testing.assert_allclose(sigma, np.linalg.norm(raw, 2), rtol=1e-8)
            assert np.linalg.norm(raw, 2) > 2 * c
            np.testing.assert_allclose(np.linalg.norm(normalised, 2), c, rtol=1e-8)
            if k == 1:
                np.testing.assert_allclose(sigma, np.linalg.norm(kernel[0, 0], 2), rtol=1e-8)


# ----------------------------------------------------------------------------------------------------
# Log-det estimators against the closed-form Jacobian.


@pytest.mark.parametrize("c", [0.5, 0.9])
def test_series_converges_to_exact_log_det_within_the_truncation_bound(c):
    weights, x, _ = _spec_setup(c)
    jac = _jacobian_np(weights, x)
    exact_np = np.linalg.slogdet(np.eye(D) + jac)[1]
    basis = np.sqrt(D) * np.eye(D)[:, None, :]  # [d, 1, d]: probes √d·e_i give exact traces
    terms = (1, 2, 5, 10)
    with jax.enable_x64(True):
        g = _g_jax(weights)
        out = _jit(lambda x, p: ([IR.series_log_det(g, x, p, n_terms=n) for n in terms], IR.exact_log_det(g, x)))(
            x, basis)
    series, exact = [float(s[0]) for s in out[0]], float(out[1][0])
    np.testing.assert_allclose(exact, exact_np, rtol=1e-12)  # jacfwd + slogdet = closed form
    errors = []
    for n, s in zip(terms, series):
        np.testing.assert_allclose(s, _series_np(jac, n), rtol=1e-10, atol=1e-14)
        bound = IR.series_truncation_bound(c, n, D)
        assert abs(s - exact) <= bound, (n, s, exact, bound)
        assert bound <= D * c ** (n + 1) / ((n + 1) * (1 - c))
        errors.append(abs(s - exact))
    assert errors[-1] < errors[1] < errors[0] and errors[-1] < 1e-5


def test_hutchinson_mean_is_within_three_standard_errors_of_the_exact_series():
    weights, x, _ = _spec_setup(0.5)
    target = _series_np(_jacobian_np(weights, x), 10)
    with jax.enable_x64(True):
        g = _g_jax(weights)

        def per_probe(x, key, kind):
            probes = IR.hutchinson_probes(key, (10_000, 1, D), kind, jnp.float64)
            return jax.vmap(lambda v: IR.series_log_det(g, x, v[None], n_terms=10))(probes)[:, 0]  # [10000]

        values = {kind: np.asarray(_jit(lambda x, k: per_probe(x, k, kind))(x, jax.random.key(i)))
                  for i, kind in enumerate(IR.PROBES)}
    for kind, v in values.items():
        se = v.std(ddof=1) / np.sqrt(v.size)
        assert abs(v.mean() - target) <= 3 * se, (kind, v.mean(), target, se)
        assert se < 0.01  # the interval is informative: |ln det| ≈ 0.03


def test_russian_roulette_is_unbiased_for_the_series_it_truncates():
    weights, x, _ = _spec_setup(0.9)
    jac = _jacobian_np(weights, x)
    n_exact, p, max_terms, draws = 1, 0.5, 16, 4000
    target = _series_np(jac, max_terms)
    basis = np.sqrt(D) * np.eye(D)[:, None, :]  # exact traces: the only randomness is N
    with jax.enable_x64(True):
        g = _g_jax(weights)
        keys = jax.random.split(jax.random.key(7), draws)
        values = np.asarray(_jit(jax.vmap(lambda k: IR.roulette_log_det(
            g, x, basis, key=k, n_exact_terms=n_exact, p=p, max_terms=max_terms)[0], in_axes=0))(keys))
    se = values.std(ddof=1) / np.sqrt(draws)
    assert abs(values.mean() - target) <= 4 * se, (values.mean(), target, se)
    # the series of 16 terms is the exact ln det up to the weak bound for ‖J‖₂
    lip = np.linalg.norm(jac, 2)
    assert abs(target - np.linalg.slogdet(np.eye(D) + jac)[1]) <= IR.series_truncation_bound(lip, max_terms, D)
    # negative control: without the 1/P(N ≥ k) weights the expectation is Σ_k t_k P(N ≥ k), far outside
    t = np.array([(-1) ** (k + 1) * np.trace(np.linalg.matrix_power(jac, k)) / k for k in range(1, max_terms + 1)])
    unweighted = np.sum(t / IR._roulette_weights(n_exact, p, max_terms))
    assert abs(unweighted - target) > 10 * se
    # N really is random: the draws differ
    assert np.unique(np.round(values, 12)).size > 5


def test_lipswish_is_one_lipschitz_and_tight():
    # Closed form x·sigmoid(x)/1.1 (Residual Flows, β = 1), and sup |d/dx| over a fine grid from jax.grad: the
    # unscaled x·sigmoid(x) has sup 1.0998 (> 1: the block would lose its Lipschitz guarantee), /1.1 gives
    # 0.99982 ≤ 1 (float64, grid step 1e-4 around the maximiser x ≈ 2.4).
    with jax.enable_x64(True):
        x = np.concatenate([np.linspace(-30.0, 30.0, 6001), np.linspace(2.0, 3.0, 10001)])
        values, slopes = map(np.asarray, _jit(lambda v: (IR.lipswish(v), jax.vmap(jax.grad(IR.lipswish))(v)))(x))
    np.testing.assert_allclose(values, x / (1.0 + np.exp(-x)) / 1.1, rtol=1e-12, atol=1e-300)
    assert 0.9995 < np.max(np.abs(slopes)) <= 1.0, np.max(np.abs(slopes))


# ----------------------------------------------------------------------------------------------------
# Fixed-point inverse.


@pytest.mark.parametrize("c", [0.5, 0.9])
def test_fixed_point_error_shrinks_geometrically_at_rate_at_most_lipschitz(c):
    weights, x, _ = _spec_setup(c)
    x_true = np.concatenate([x, 2.0 * np.random.default_rng(2).standard_normal((3, D))])  # [4, d]
    y = x_true + _g_np(weights, x_true)
    steps = np.arange(0, 41)
    with jax.enable_x64(True):
        g = _g_jax(weights)
        iterates = _jit(lambda y: jnp.stack([IR.fixed_point_inverse(g, y, max_iterations=n, atol=0.0)
                                             for n in steps]))(y)
        converged = _jit(lambda y: IR.fixed_point_inverse(g, y, max_iterations=1000, atol=1e-14))(y)
    errors = np.linalg.norm(np.asarray(iterates) - x_true[None], axis=-1)  # [steps, b]
    first_step = np.linalg.norm(np.asarray(iterates[1]) - y, axis=-1)  # ‖x_1 − x_0‖
    for n in steps:
        # Banach: ‖x_n − x*‖ ≤ cⁿ/(1 − c)·‖x_1 − x_0‖
        assert np.all(errors[n] <= c ** n / (1 - c) * first_step * (1 + 1e-9) + 1e-14), n
    big = errors[:-1] > 1e-12
    ratios = errors[1:][big] / errors[:-1][big]
    assert ratios.size > 20 and np.all(ratios <= c + 1e-9), ratios.max()
    np.testing.assert_allclose(np.asarray(converged), x_true, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# The model: round trips, exact log-det against jacfwd, log-dets negatives.

_MODELS = {
    "2d_elu_actnorm": dict(event_shape=(2,), num_blocks=2, hidden=(8, 8), activation="elu", actnorm=True),
    "conv_lipswish": dict(event_shape=(3, 3, 2), num_blocks=1, block="conv", hidden=4, activation="lipswish",
                          actnorm=True, lipschitz=0.7),
}


def _model(name, **overrides):
    kw = dict(_MODELS[name], logdet="exact", n_power_iterations=3, **overrides)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: IR.IResNet(rngs=nnx.Rngs(0), **kw)))
    state = _jit(lambda: nnx.state(IR.IResNet(rngs=nnx.Rngs(0), **kw)))()
    # move the zero biases (and actnorm) and the kernels off their initial values
    return _perturbed_params(nnx.merge(graphdef, state), 0.1, seed=5)


def _flat(m, direction):
    """The flow's map of one flattened example, without log-dets (layer by layer)."""
    layers = list(m.flow.layers)

    def fn(v):
        h = v[None]  # one example, [1, ...]
        for layer in (layers if direction == "forward" else layers[::-1]):
            h = getattr(layer, direction)(h)
        return h[0]

    return fn


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_model_round_trip_and_exact_log_det_match_jacfwd(name):
    model = _model(name)
    d = model.num_dims
    x32 = np.random.default_rng(0).standard_normal((4,) + model.event_shape).astype(np.float32)
    graphdef, state = nnx.split(model)

    def round_trips(m, x):
        y, ld = m.forward_and_log_det(x)  # updates the power iteration (stored), then
        x_back, ld_inv = m.inverse_and_log_det(jax.lax.optimization_barrier(y))  # uses those same weights
        m.set_attributes(update_power_iteration=False)
        # and the other way: forward(inverse(z)) for a fresh latent, with the stored vectors
        z = jax.lax.optimization_barrier(2.0 * x.reshape(x.shape[0], -1)[::-1])  # [b, D]
        z_back = m.forward(jax.lax.optimization_barrier(m.inverse(z)))
        return dict(y=y, ld=ld, x_back=x_back, ld_inv=ld_inv, z=z, z_back=z_back)

    def run64(state, x):
        m = nnx.merge(graphdef, state)
        out = round_trips(m, x)
        out["jac_f"] = jax.vmap(lambda v: jnp.linalg.slogdet(jax.jacfwd(_flat(m, "forward"))(v).reshape(d, d))[1])(x)
        out["jac_i"] = jax.vmap(lambda v: jnp.linalg.slogdet(jax.jacfwd(_flat(m, "inverse"))(v).reshape(d, d))[1])(
            out["y"])
        return out

    r32 = jax.tree.map(np.asarray, _jit(lambda s, x: round_trips(nnx.merge(graphdef, s), x))(state, x32))
    np.testing.assert_allclose(r32["x_back"], x32, atol=1e-5)
    np.testing.assert_allclose(r32["z_back"], r32["z"], atol=1e-5)
    with jax.enable_x64(True):
        model64 = nnx.merge(graphdef, _to_float64(state))
        model64.set_attributes(atol=1e-14, max_iterations=500, raise_if_not_found=False)
        graphdef, state64 = nnx.split(model64)
        r = jax.tree.map(np.asarray, _jit(run64)(state64, x32.astype(np.float64)))
    np.testing.assert_allclose(r["x_back"], x32, atol=1e-10)
    np.testing.assert_allclose(r["z_back"], r["z"], atol=1e-10)
    np.testing.assert_allclose(r["ld"], r["jac_f"], atol=1e-10)  # exact mode = log|det jacfwd| of the flow
    np.testing.assert_allclose(r["ld_inv"], r["jac_i"], atol=1e-10)
    np.testing.assert_allclose(r["ld_inv"], -r["ld"], atol=1e-12)
    assert r["ld"].shape == (4,) and np.all(np.abs(r["ld"]) > 1e-3)  # not the identity


def test_block_series_estimator_draws_from_its_stream_and_is_unbiased():
    # The block's own estimator ('series', 4000 Gaussian probes per call from the block's rng stream)
    # against the exact truncated series of the same block, within 4 standard errors of Hutchinson's
    # estimator of tr(A), A = Σ_k (−1)^{k+1} J^k/k: for Gaussian probes Var(vᵀAv) = 2‖(A + Aᵀ)/2‖_F².
    n_terms, n_probes = 8, 4000
    block = nnx.eval_shape(lambda: IR.IResNetBlock(3, hidden=(8,), n_terms=n_terms, n_probes=n_probes,
                                                   probe="normal", rngs=nnx.Rngs(0)))
    graphdef = nnx.graphdef(block)
    state = _jit(lambda: nnx.state(IR.IResNetBlock(3, hidden=(8,), n_terms=n_terms, n_probes=n_probes,
                                                   probe="normal", rngs=nnx.Rngs(0))))()
    block = _perturbed_params(nnx.merge(graphdef, state), 0.3, seed=2)
    x = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    graphdef, state = nnx.split(block)

    def run(state, x):
        b = nnx.merge(graphdef, state)
        a1, a2 = b.forward_and_log_det(x)[1], b.forward_and_log_det(x)[1]
        g = b.residual_fn()
        jac = jax.vmap(jax.jacfwd(IR._per_example(g)))(x)  # [b, d, d]
        return a1, a2, jac, nnx.state(b)

    a1, a2, jac, after = _jit(run)(state, x)
    a1, a2, jac = np.asarray(a1, np.float64), np.asarray(a2, np.float64), np.asarray(jac, np.float64)
    assert int(after["rngs"]["probe"]["count"][...]) == 2  # one draw per call, stored in the state
    assert not np.allclose(a1, a2)  # fresh probes each call
    for i in range(2):
        mat = sum((-1) ** (k + 1) * np.linalg.matrix_power(jac[i], k) / k for k in range(1, n_terms + 1))
        se = np.sqrt(2 * np.sum(((mat + mat.T) / 2) ** 2) / n_probes)
        for a in (a1, a2):
            assert abs(a[i] - np.trace(mat)) <= 4 * se, (a[i], np.trace(mat), se)


_SHARED = {}


def _shared_model(name):
    """A fresh copy of `_model(name)` with frozen power iteration, built once for the tests below."""
    if name not in _SHARED:
        model = _model(name)
        model.set_attributes(update_power_iteration=False)
        _SHARED[name] = nnx.split(model)
    return nnx.merge(*_SHARED[name], copy=True)


def test_nll_loss_and_evaluate_are_the_brute_force_negative_log_likelihood():
    # −mean[log N(f(x); 0, I) + log|det jacfwd f(x)|] over the test points, by brute force on the flow's map,
    # against `nll_loss` and `evaluate`'s 'test/nll_nats' (exact log-det) and 'test/nll_nats_estimator'; the
    # power iteration is frozen so every path uses the same normalised weights.
    import types

    model = _shared_model("2d_elu_actnorm")
    x = np.random.default_rng(3).standard_normal((16, 2)).astype(np.float32)
    f = _flat(model, "forward")
    z, jac = _jit(lambda v: (jax.vmap(f)(v), jax.vmap(jax.jacfwd(f))(v)))(x)
    z, jac = np.asarray(z, np.float64), np.asarray(jac, np.float64)
    log_p = -0.5 * np.sum(z ** 2, 1) - math.log(2 * math.pi) + np.linalg.slogdet(jac)[1]
    assert np.ptp(np.linalg.slogdet(jac)[1]) > 1e-2  # the log-dets differ between points
    graphdef, state = nnx.split(model)
    nll = float(_jit(lambda s, b: IR.nll_loss(nnx.merge(graphdef, s), b, key=None)[0])(state, {"x": x}))
    np.testing.assert_allclose(nll, -np.mean(log_p), rtol=1e-5)
    dataset = types.SimpleNamespace(arrays={"x": x}, name="points")
    out = IR.evaluate(model, dataset, key=jax.random.key(0), config=None, workdir=None)
    np.testing.assert_allclose(out["test/nll_nats"], -np.mean(log_p), rtol=1e-5)
    np.testing.assert_allclose(out["test/nll_nats_estimator"], -np.mean(log_p), rtol=1e-5)  # exact model
    assert out["test/inverse_max_abs_error"] < 1e-5


def test_data_init_standardises_every_actnorm_input():
    # After `data_init` on a batch: the first ActNorm's parameters are −mean and −log(std + 1e-6) of the batch
    # (NumPy float64), and the second one standardises what the first block outputs on that batch.
    model = _shared_model("2d_elu_actnorm")
    x = (np.array([2.0, -1.0]) + np.array([3.0, 0.5]) * np.random.default_rng(4).standard_normal((64, 2)))
    x = x.astype(np.float32)

    def run(m, x):
        IR.data_init(m, {"x": x}, key=None)
        a1, block1, a2 = m.flow.layers[1], m.flow.layers[2], m.flow.layers[3]
        h = a2.forward(block1.forward(a1.forward(x)))
        return a1.bias[...], a1.log_scale[...], h

    graphdef, state = nnx.split(model)
    bias, log_scale, h = map(np.asarray, _jit(lambda s, x: run(nnx.merge(graphdef, s), x))(state, x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(bias, -x64.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_scale, -np.log(x64.std(0) + 1e-6), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(h.std(0), 1.0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# The power-iteration state survives a step of the shared trainer.


def test_power_iteration_vectors_are_updated_by_a_training_step():
    model = _model("2d_elu_actnorm", num_blocks=1, hidden=(4,), actnorm=False)
    model = IR.with_log_det(model, "series", n_terms=2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(9)
    layers = rest["flow"]["layers"][1]["layers"]
    # fresh random vectors, far from the singular vectors, so one step must move them
    for layer in layers.values():
        layer["u"] = IR.PowerIterationState(jnp.asarray(rng.standard_normal(layer["u"].shape), jnp.float32))
        layer["v"] = IR.PowerIterationState(jnp.asarray(rng.standard_normal(layer["v"].shape), jnp.float32))
    tx = optax.adam(1e-2)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), rest, None)
    step = _jit(make_train_step(IR.nll_loss, tx, graphdef))
    batch = {"x": rng.standard_normal((8, 2)).astype(np.float32)}
    new, metrics = step(state, batch, key=jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    for i, layer in layers.items():
        after = new.model_state["flow"]["layers"][1]["layers"][i]
        kernel = params["flow"]["layers"][1]["layers"][i]["kernel"][...]
        u_ref, v_ref, _ = IR.power_iteration(kernel, layer["u"][...], layer["v"][...], 3)  # 3 = n_power_iterations
        np.testing.assert_allclose(np.asarray(after["u"][...]), np.asarray(u_ref), atol=1e-6)
        np.testing.assert_allclose(np.asarray(after["v"][...]), np.asarray(v_ref), atol=1e-6)
        assert np.max(np.abs(np.asarray(after["u"][...]) - np.asarray(layer["u"][...]))) > 0.1
    assert int(new.model_state["flow"]["layers"][1]["rngs"]["probe"]["count"][...]) == 1  # the probe stream too
    assert float(optax.tree.norm(jax.tree.map(lambda a, b: a - b, new.params, params))) > 0


# ----------------------------------------------------------------------------------------------------
# Bad inputs.

BAD = [
    ("lipschitz 1", lambda: IR.IResNetBlock(2, lipschitz=1.0, rngs=nnx.Rngs(0)),
     "`lipschitz` must be a number in (0, 1) (Lip(g) < 1 makes the block invertible); got 1.0"),
    ("lipschitz 0", lambda: IR.IResNet(event_shape=(2,), num_blocks=1, lipschitz=0, rngs=nnx.Rngs(0)),
     "`lipschitz` must be a number in (0, 1) (Lip(g) < 1 makes the block invertible); got 0"),
    ("n_terms 0", lambda: IR.IResNetBlock(2, n_terms=0, rngs=nnx.Rngs(0)), "`n_terms` must be an integer >= 1; got 0"),
    ("n_probes 0", lambda: IR.IResNetBlock(2, n_probes=0, rngs=nnx.Rngs(0)),
     "`n_probes` must be an integer >= 1; got 0"),
    ("unknown estimator", lambda: IR.IResNetBlock(2, logdet="neumann", rngs=nnx.Rngs(0)),
     "`logdet` must be one of ['series', 'exact', 'roulette']; got 'neumann'"),
    ("unknown activation", lambda: IR.IResNetBlock(2, activation="relu6", rngs=nnx.Rngs(0)),
     "`activation` must be one of ['elu', 'lipswish', 'tanh']; got 'relu6'"),
    ("unknown probe", lambda: IR.IResNetBlock(2, probe="uniform", rngs=nnx.Rngs(0)),
     "`probe` must be one of ['rademacher', 'normal']; got 'uniform'"),
    ("roulette p 1", lambda: IR.IResNetBlock(2, roulette_p=1.0, rngs=nnx.Rngs(0)),
     "`roulette_p` must be a number in (0, 1); got 1.0"),
    ("wrong event shape, block", lambda: IR.IResNetBlock(2, rngs=nnx.Rngs(0)).forward_and_log_det(jnp.zeros((4, 3))),
     "`x` must have event shape (2,); got shape (4, 3)"),
    ("wrong event shape, model",
     lambda: IR.IResNet(event_shape=(2,), num_blocks=1, rngs=nnx.Rngs(0)).log_prob(jnp.zeros((4, 2, 1))),
     "`x` must have event shape (2,); got shape (4, 2, 1)"),
    ("wrong latent shape, model",
     lambda: IR.IResNet(event_shape=(2,), num_blocks=1, rngs=nnx.Rngs(0)).inverse_and_log_det(jnp.zeros((4, 3))),
     "`z` must have event shape (2,); got shape (4, 3)"),
    ("conv block on flat data", lambda: IR.IResNet(event_shape=(4,), num_blocks=1, block="conv", rngs=nnx.Rngs(0)),
     "`event_shape` must be (height, width, channels) for block='conv'; got (4,)"),
    ("unknown block option", lambda: IR.IResNetBlock(2, n_term=3, rngs=nnx.Rngs(0)),
     "unknown i-ResNet block options ['n_term']; allowed: ['activation', 'atol', 'lipschitz', 'logdet', "
     "'max_iterations', 'max_terms', 'n_exact_terms', 'n_power_iterations', 'n_probes', 'n_terms', 'probe', "
     "'roulette_p', 'update_power_iteration']"),
    ("no blocks", lambda: IR.IResNet(event_shape=(2,), num_blocks=0, rngs=nnx.Rngs(0)),
     "`num_blocks` must be an integer >= 1; got 0"),
    ("negative atol", lambda: IR.IResNetBlock(2, atol=-1.0, rngs=nnx.Rngs(0)), "`atol` must be a number >= 0; got -1.0"),
    ("unknown estimator for with_log_det",
     lambda: IR.with_log_det(IR.IResNet(event_shape=(2,), num_blocks=1, rngs=nnx.Rngs(0)), "slogdet"),
     "`logdet` must be one of ['series', 'exact', 'roulette']; got 'slogdet'"),
    ("batch without x", lambda: IR.nll_loss(None, {"image": jnp.zeros((1, 2))}, key=None),
     "`batch` must hold continuous data under 'x'; got keys ['image']"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    # abstractly (nnx.eval_shape): the checks are on shapes and Python values and run before any compile
    with pytest.raises(ValueError, match=re.escape(message)):
        nnx.eval_shape(fn)


def test_evaluate_images_scores_with_the_exact_log_det_of_the_whole_flow():
    # A dense i-ResNet on 3×3×1 images with 17 levels, trained estimator: a 1-term series (far from exact).
    # 'test/bpd' must equal the brute-force bits/dim of the same dequantised draws (the draws of
    # flows.evaluate: key fold_in(fold_in(key(EVAL_DEQUANT_SEED), d), chunk)) with log|det jacfwd| of the
    # whole flow; the estimator's bits/dim must differ from it.
    import types

    from kexue_jax.flows import train as flows_train
    from kexue_jax.flows.likelihood import bits_per_dim

    model = _perturbed_params(IR.IResNet(event_shape=(3, 3, 1), num_blocks=2, hidden=(8,), activation="elu",
                                         levels=17, logdet="series", n_terms=1, n_probes=1,
                                         rngs=nnx.Rngs(0)), 0.3, seed=2)
    images = np.random.default_rng(1).integers(0, 17, size=(6, 3, 3, 1)).astype(np.uint8)
    dataset = types.SimpleNamespace(arrays={"image": images}, levels=17)
    config = {"eval_dequant_samples": 2, "eval_batch_size": 8}
    out = IR.evaluate_images(model, dataset, key=jax.random.key(0), config=config, workdir=None)

    exact = IR.with_log_det(model, "exact")
    graphdef, state = nnx.split(exact)
    logps = []
    for d in range(2):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.key(flows_train.EVAL_DEQUANT_SEED), d), 0)
        padded = np.zeros((8, 3, 3, 1), np.uint8)
        padded[:6] = images
        y = np.asarray(flows_train._centred(jnp.asarray(padded), key=k, levels=17), np.float64)[:6]
        m = nnx.merge(graphdef, state)
        m.set_attributes(update_power_iteration=False)
        f = _flat(m, "forward")
        z = np.stack([np.asarray(f(jnp.asarray(v, jnp.float32))) for v in y]).reshape(6, 9)
        ld = np.array([np.linalg.slogdet(np.asarray(jax.jacfwd(f)(jnp.asarray(v, jnp.float32)),
                                                    np.float64).reshape(9, 9))[1] for v in y])
        logps.append(-0.5 * np.sum(z.astype(np.float64) ** 2, 1) - 4.5 * np.log(2 * np.pi) + ld)
    per_image = np.mean(bits_per_dim(np.stack(logps), 9, 17), axis=0)
    brute = float(np.mean(per_image))
    np.testing.assert_allclose(out["test/bpd"], brute, rtol=1e-5)
    np.testing.assert_allclose(out["test/bpd_median"], np.median(per_image), rtol=1e-5)
    np.testing.assert_allclose(out["test/bpd_max"], np.max(per_image), rtol=1e-5)
    np.testing.assert_allclose(out["test/nll_nats"], -np.mean(np.stack(logps)), rtol=1e-5)  # over draws and images
    assert np.ptp(per_image) > 0.1  # the images differ, so median, mean and max are different checks
    assert abs(out["test/bpd_estimator"] - brute) > 1e-3
    assert out["test/inverse_max_abs_error"] < 1e-5
