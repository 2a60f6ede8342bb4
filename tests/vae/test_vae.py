"""Tests for kexue_jax.vae.vae: every check compares with a closed form, scipy, NumPy or finite differences.

The linear-Gaussian model (probabilistic PCA) x = W z + b + σ ε has log q(x) = log N(x; b, WWᵀ + σ²I),
an exact Gaussian posterior, and a closed-form ELBO for any diagonal encoder, so the Monte-Carlo ELBO of
the library can be checked against exact numbers (spec §9.4, §10.4). `LinearGaussian` below is reused by
test_importance.py.
"""
import math
import os
import re
import types

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from flax import nnx
from jax.flatten_util import ravel_pytree

from kexue_jax.vae import vae as V


# ----------------------------------------------------------------------------------------------------
# Probabilistic PCA: the exact reference.


class LinearGaussian:
    """x = W z + b + σ ε, q(z) = N(0, I); the encoder p(z|x) is given as an explicit function."""

    def __init__(self, W, b, sigma, encoder_fn):
        self.W, self.b, self.sigma, self.encoder_fn = W, b, sigma, encoder_fn

    def encode(self, x_flat):
        return self.encoder_fn(x_flat)

    def log_likelihood(self, x_flat, z):
        # Written with jax.scipy (not the library) so the reference is independent of the code under test.
        mean = z @ jnp.asarray(self.W).T + jnp.asarray(self.b)[None, :]  # [b, d] @ [d, D] -> [b, D]
        return jnp.sum(jax.scipy.stats.norm.logpdf(x_flat, mean, self.sigma), axis=1)


def ppca_log_px(W, b, sigma, x):
    """Exact log q(x) = log N(x; b, WWᵀ + σ²I), NumPy/scipy float64."""
    cov = W @ W.T + sigma ** 2 * np.eye(W.shape[0])
    return scipy.stats.multivariate_normal(b, cov).logpdf(x)


def ppca_posterior(W, b, sigma, x):
    """Exact posterior N(m, S): S = (I + WᵀW/σ²)⁻¹, m = S Wᵀ(x − b)/σ²."""
    S = np.linalg.inv(np.eye(W.shape[1]) + W.T @ W / sigma ** 2)
    return S @ W.T @ (x - b) / sigma ** 2, S


def ppca_closed_form_elbo(W, b, sigma, x, m, s2):
    """E_{z~N(m, diag s2)}[log N(x; Wz + b, σ²I)] − KL(N(m, diag s2) ‖ N(0, I)), exactly."""
    D = W.shape[0]
    resid = x - W @ m - b
    expected_log_lik = (-0.5 * D * math.log(2 * math.pi * sigma ** 2)
                        - (resid @ resid + np.sum(np.sum(W ** 2, axis=0) * s2)) / (2 * sigma ** 2))
    kl = 0.5 * np.sum(m ** 2 + s2 - np.log(s2) - 1.0)
    return expected_log_lik - kl


def gaussian_kl_full(m0, S0, m1, S1):
    """KL(N(m0, S0) ‖ N(m1, S1)) for full covariances."""
    d = m0.shape[0]
    S1_inv = np.linalg.inv(S1)
    diff = m1 - m0
    return 0.5 * (np.trace(S1_inv @ S0) + diff @ S1_inv @ diff - d
                  + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


def make_ppca(seed=0, D=10, d=2, sigma=0.3, orthogonal=False):
    rng = np.random.default_rng(seed)
    if orthogonal:
        Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
        W = Q[:, :d] * np.linspace(2.0, 1.0, d)  # orthogonal columns, distinct norms
    else:
        W = rng.normal(size=(D, d))
    b = rng.normal(size=D)
    x = W @ rng.normal(size=d) + b + sigma * rng.normal(size=D)
    return W, b, sigma, x


def constant_encoder(m, s2):
    """An encoder returning the same N(m, diag s2) for every row of x."""
    def encoder_fn(x_flat):
        n = x_flat.shape[0]
        return (jnp.broadcast_to(jnp.asarray(m), (n, m.shape[0])),
                jnp.broadcast_to(jnp.log(jnp.asarray(s2)), (n, m.shape[0])))
    return encoder_fn


# ----------------------------------------------------------------------------------------------------
# Closed forms of the pure functions.


def test_gaussian_kl_matches_monte_carlo_and_scipy_quadrature():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        mean = rng.normal(size=(3, 4))
        log_var = rng.normal(scale=0.7, size=(3, 4))
        kl = np.asarray(V.gaussian_kl(jnp.asarray(mean), jnp.asarray(log_var)))

        # scipy quadrature of ∫ N(z; μ, σ²) log(N(z; μ, σ²)/N(z; 0, 1)) dz, one latent coordinate at a time.
        def kl_1d(m, lv):
            s = math.exp(0.5 * lv)
            def f(z):
                return scipy.stats.norm.pdf(z, m, s) * (scipy.stats.norm.logpdf(z, m, s) - scipy.stats.norm.logpdf(z))
            return scipy.integrate.quad(f, m - 12 * s, m + 12 * s, epsabs=1e-13, epsrel=1e-12)[0]
        quad = np.array([[kl_1d(mean[i, j], log_var[i, j]) for j in range(4)] for i in range(3)]).sum(axis=1)
        np.testing.assert_allclose(kl, quad, rtol=1e-9)

        # Monte Carlo with z from `reparameterize` (1e5 draws per example): also checks its distribution.
        n = 100_000
        means = jnp.repeat(jnp.asarray(mean), n, axis=0)  # [3n, 4]
        log_vars = jnp.repeat(jnp.asarray(log_var), n, axis=0)
        z = V.reparameterize(means, log_vars, key=jax.random.key(0))
        log_ratio = np.asarray(V.diagonal_gaussian_log_prob(z, means, log_vars) - V.standard_normal_log_prob(z))
        log_ratio = log_ratio.reshape(3, n)
        mc, se = log_ratio.mean(axis=1), log_ratio.std(axis=1) / math.sqrt(n)
        assert np.all(np.abs(mc - kl) < 3 * se), (mc, kl, se)


def test_reparameterize_moments():
    with jax.enable_x64(True):
        n = 100_000
        mean = jnp.asarray([[0.5, -2.0, 3.0]])
        log_var = jnp.asarray([[0.0, -1.0, 1.5]])
        z = np.asarray(V.reparameterize(jnp.repeat(mean, n, 0), jnp.repeat(log_var, n, 0), key=jax.random.key(3)))
        var = np.exp(np.asarray(log_var[0]))
        # Sample mean within 4 standard errors; sample variance within 4 s.e. (var·sqrt(2/n) for a Gaussian).
        assert np.all(np.abs(z.mean(0) - np.asarray(mean[0])) < 4 * np.sqrt(var / n))
        assert np.all(np.abs(z.var(0) - var) < 4 * var * math.sqrt(2.0 / n))


def test_bernoulli_log_likelihood_equals_naive_bce_and_is_stable():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        logits = rng.uniform(-6, 6, size=(4, 3, 5))
        for x in (rng.integers(0, 2, size=(4, 3, 5)).astype(np.float64), rng.uniform(size=(4, 3, 5))):
            p = 1.0 / (1.0 + np.exp(-logits))
            naive = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2))
            got = V.bernoulli_log_likelihood(jnp.asarray(logits), jnp.asarray(x))
            np.testing.assert_allclose(np.asarray(got), naive, rtol=1e-12)

    # |ℓ| = 100 in float32: the naive form gives log 0 = −inf; the exact values are −100 or ≈ −3.7e−44.
    logits = jnp.asarray([[100.0, -100.0, 100.0, -100.0]], jnp.float32)
    x = jnp.asarray([[0.0, 1.0, 1.0, 0.0]], jnp.float32)
    got = V.bernoulli_log_likelihood(logits, x)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), [-200.0], rtol=1e-6)


@pytest.mark.parametrize('scale_shape', ['scalar', 'pixel', 'full'])
def test_gaussian_log_likelihood_equals_norm_logpdf(scale_shape):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x, mean = rng.normal(size=(2, 5, 6))
        shape = {'scalar': (), 'pixel': (6,), 'full': (5, 6)}[scale_shape]
        log_scale = rng.normal(scale=0.5, size=shape)
        expected = np.sum(scipy.stats.norm.logpdf(x, mean, np.exp(log_scale)), axis=1)
        got = V.gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_scale))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
        scale = jnp.broadcast_to(jnp.exp(jnp.asarray(log_scale)), x.shape)
        jax_ref = jnp.sum(jax.scipy.stats.norm.logpdf(jnp.asarray(x), jnp.asarray(mean), scale), axis=1)
        np.testing.assert_allclose(np.asarray(got), np.asarray(jax_ref), rtol=1e-12)


def test_latent_log_densities_equal_scipy_multivariate_normal():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        z, mean = rng.normal(size=(2, 3, 4))
        log_var = rng.normal(size=(3, 4))
        expected = [scipy.stats.multivariate_normal(mean[i], np.diag(np.exp(log_var[i]))).logpdf(z[i])
                    for i in range(3)]
        got = V.diagonal_gaussian_log_prob(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(log_var))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
        expected0 = scipy.stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(z)
        np.testing.assert_allclose(np.asarray(V.standard_normal_log_prob(jnp.asarray(z))), expected0, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# The ELBO on probabilistic PCA.


def test_ppca_elbo_is_a_lower_bound_and_the_monte_carlo_elbo_is_unbiased():
    with jax.enable_x64(True):
        W, b, sigma, x = make_ppca(seed=0)
        log_px = ppca_log_px(W, b, sigma, x)
        post_m, post_S = ppca_posterior(W, b, sigma, x)
        rng = np.random.default_rng(5)
        n = 20_000
        for trial in range(3):
            m = post_m + rng.normal(scale=0.5, size=2)
            s2 = np.exp(rng.normal(size=2) - 2.0)
            closed = ppca_closed_form_elbo(W, b, sigma, x, m, s2)
            # Su's joint-KL identity: L(x) = −log q(x) + KL(p(z|x) ‖ q(z|x)) for any encoder.
            np.testing.assert_allclose(closed, log_px - gaussian_kl_full(m, np.diag(s2), post_m, post_S), rtol=1e-10)
            assert closed <= log_px
            model = LinearGaussian(W, b, sigma, constant_encoder(m, s2))
            x_rep = jnp.broadcast_to(jnp.asarray(x), (n, x.shape[0]))  # n independent ε for one x
            estimates = np.asarray(V.elbo(model, x_rep, key=jax.random.key(trial)))
            se = estimates.std() / math.sqrt(n)
            assert abs(estimates.mean() - closed) < 4 * se, (estimates.mean(), closed, se)


def test_ppca_exact_diagonal_posterior_makes_the_elbo_exact():
    with jax.enable_x64(True):
        W, b, sigma, x = make_ppca(seed=1, orthogonal=True)
        post_m, post_S = ppca_posterior(W, b, sigma, x)
        # Orthogonal columns make WᵀW diagonal, hence the exact posterior covariance too.
        np.testing.assert_allclose(post_S - np.diag(np.diag(post_S)), 0.0, atol=1e-14)
        closed = ppca_closed_form_elbo(W, b, sigma, x, post_m, np.diag(post_S))
        np.testing.assert_allclose(closed, ppca_log_px(W, b, sigma, x), rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------------------------------
# Reparameterised gradients of the module's ELBO against central finite differences.


def _float64_split(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    return graphdef, params, rest


@pytest.mark.parametrize('likelihood,scale', [('bernoulli', 'learned_scalar'), ('gaussian', 'learned_pixel')])
def test_elbo_gradient_matches_central_finite_differences(likelihood, scale):
    with jax.enable_x64(True):
        model = V.VAE(data_shape=(2, 2), latent_dim=2, hidden=3, likelihood=likelihood, decoder_scale=scale,
                      rngs=nnx.Rngs(0))
        graphdef, params, rest = _float64_split(model)
        if likelihood == 'gaussian' and scale == 'learned_pixel':
            params['decoder']['log_scale'] = nnx.Param(jnp.asarray([-0.3, 0.2, 0.1, -0.5]))
        theta0, unravel = ravel_pytree(params)
        rng = np.random.default_rng(6)
        x = rng.integers(0, 2, size=(5, 4)) if likelihood == 'bernoulli' else rng.uniform(size=(5, 4))
        x = jnp.asarray(x, jnp.float64)
        key = jax.random.key(7)  # fixed key ⇒ fixed ε, so the ELBO estimate is a deterministic function

        def f(theta):
            return jnp.mean(V.elbo(nnx.merge(graphdef, unravel(theta), rest), x, key=key))

        grad = np.asarray(jax.jit(jax.grad(f))(theta0))
        h = 1e-6
        eye = jnp.eye(theta0.shape[0], dtype=jnp.float64)
        f_batch = jax.jit(jax.vmap(f))
        fd = np.asarray((f_batch(theta0[None, :] + h * eye) - f_batch(theta0[None, :] - h * eye)) / (2 * h))
        assert theta0.shape[0] > 30 and np.abs(grad).max() > 1e-2
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------------
# The trainer-facing losses against an independent NumPy computation.


def _numpy_forward(model, x, eps):
    """Encoder/decoder forward pass in NumPy float64 from the module's weights."""
    def lin(layer, h):
        return h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)

    h = x
    for layer in model.encoder.trunk.layers:
        h = np.maximum(lin(layer, h), 0.0)
    mean, log_var = lin(model.encoder.mean, h), lin(model.encoder.log_var, h)
    z = mean + np.exp(0.5 * log_var) * eps
    h = z
    for layer in model.decoder.trunk.layers:
        h = np.maximum(lin(layer, h), 0.0)
    kl = 0.5 * np.sum(mean ** 2 + np.exp(log_var) - log_var - 1.0, axis=1)
    return h, kl


@pytest.mark.parametrize('levels_as', ['scalar', 'per_example', 'default'])
def test_bernoulli_binarized_loss_equals_numpy(levels_as):
    model = V.VAE(data_shape=(3, 3, 1), latent_dim=2, hidden=(5, 4), likelihood='bernoulli', rngs=nnx.Rngs(1))
    levels = 256 if levels_as == 'default' else 17
    rng = np.random.default_rng(8)
    image = rng.integers(0, levels, size=(6, 3, 3, 1)).astype(np.uint8)
    batch = {'image': jnp.asarray(image)}
    if levels_as == 'scalar':
        batch['levels'] = 17
    elif levels_as == 'per_example':
        batch['levels'] = jnp.full((6,), 17, jnp.int32)
    key = jax.random.key(9)
    loss, aux = jax.jit(V.bernoulli_binarized_loss)(model, batch, key=key)

    # Redraw the same u and ε (documented key layout), then compute everything in NumPy.
    key_u, key_z = jax.random.split(key)
    u = np.asarray(jax.random.uniform(key_u, (6, 9), jnp.float32), np.float64)
    x = (u < image.reshape(6, 9) / (levels - 1.0)).astype(np.float64)
    eps = np.asarray(jax.random.normal(key_z, (6, 2), jnp.float32), np.float64)
    h, kl = _numpy_forward(model, x, eps)
    logits = h @ np.asarray(model.decoder.logits.kernel[...], np.float64) + np.asarray(model.decoder.logits.bias[...])
    log_lik = np.sum(x * -np.logaddexp(0.0, -logits) + (1 - x) * -np.logaddexp(0.0, logits), axis=1)
    expected = np.mean(-log_lik + kl)
    assert 0.2 < x.mean() < 0.8  # the binarisation really depends on the grey level
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(aux['recon_nats']), np.mean(-log_lik), rtol=1e-5)
    np.testing.assert_allclose(float(aux['kl_nats']), np.mean(kl), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(loss), float(aux['recon_nats'] + aux['kl_nats']), rtol=1e-6)
    assert set(aux) >= {'recon_nats', 'kl_nats'}


def test_gaussian_dequantized_loss_equals_numpy():
    model = V.VAE(data_shape=(2, 3, 1), latent_dim=3, hidden=4, likelihood='gaussian',
                  decoder_scale='learned_scalar', rngs=nnx.Rngs(2))
    model.decoder.log_scale[...] = jnp.asarray(-1.3)  # make σ̃ matter
    rng = np.random.default_rng(10)
    image = rng.integers(0, 17, size=(5, 2, 3, 1)).astype(np.uint8)
    key = jax.random.key(11)
    loss, aux = jax.jit(V.gaussian_dequantized_loss)(model, {'image': jnp.asarray(image), 'levels': 17}, key=key)

    key_u, key_z = jax.random.split(key)
    u = np.asarray(jax.random.uniform(key_u, (5, 6), jnp.float32), np.float64)
    y = (image.reshape(5, 6) + u) / 17.0
    eps = np.asarray(jax.random.normal(key_z, (5, 3), jnp.float32), np.float64)
    h, kl = _numpy_forward(model, y, eps)
    mu = h @ np.asarray(model.decoder.mean.kernel[...], np.float64) + np.asarray(model.decoder.mean.bias[...])
    log_lik = np.sum(scipy.stats.norm.logpdf(y, mu, math.exp(-1.3)), axis=1)
    np.testing.assert_allclose(float(loss), np.mean(-log_lik + kl), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(aux['recon_nats'] + aux['kl_nats']), rtol=1e-6)


def _numpy_decoder_mean(model, z):
    """E[x|z] of the decoder in NumPy float64: sigmoid(ℓ) ('bernoulli') or μ̃ ('gaussian')."""
    def lin(layer, h):
        return h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)

    h = z
    for layer in model.decoder.trunk.layers:
        h = np.maximum(lin(layer, h), 0.0)
    if model.likelihood == 'bernoulli':
        return 1.0 / (1.0 + np.exp(-lin(model.decoder.logits, h)))
    return lin(model.decoder.mean, h)


@pytest.mark.parametrize('likelihood', ['bernoulli', 'gaussian'])
def test_sample_and_reconstruct_equal_numpy_decoder_means(likelihood):
    """`sample`: decoder means at z = normal(key, [n, d]) ~ q(z) = N(0, I); `reconstruct`: decoder means at
    z = μ(x) + σ(x) ⊙ normal(key, [b, d]) ~ p(z|x) (one draw, not z = μ). NumPy float64 reference, 1e-5."""
    model = V.VAE(data_shape=(2, 3), latent_dim=2, hidden=5, likelihood=likelihood, rngs=nnx.Rngs(4))
    key = jax.random.key(13)
    samples = np.asarray(model.sample(4, key=key), np.float64)
    z = np.asarray(jax.random.normal(key, (4, 2)), np.float64)
    assert samples.shape == (4, 2, 3)
    np.testing.assert_allclose(samples.reshape(4, 6), _numpy_decoder_mean(model, z), rtol=1e-5, atol=1e-6)

    x = np.random.default_rng(14).uniform(size=(3, 2, 3))
    recon = np.asarray(model.reconstruct(jnp.asarray(x, jnp.float32), key=key), np.float64)
    eps = np.asarray(jax.random.normal(key, (3, 2), jnp.float32), np.float64)
    h = x.reshape(3, 6)
    for layer in model.encoder.trunk.layers:
        h = np.maximum(h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64), 0.0)
    mean = h @ np.asarray(model.encoder.mean.kernel[...], np.float64) + np.asarray(model.encoder.mean.bias[...])
    log_var = h @ np.asarray(model.encoder.log_var.kernel[...], np.float64) + np.asarray(model.encoder.log_var.bias[...])
    expected = _numpy_decoder_mean(model, mean + np.exp(0.5 * log_var) * eps)
    assert np.abs(expected - _numpy_decoder_mean(model, mean)).max() > 1e-3  # the draw matters
    np.testing.assert_allclose(recon.reshape(3, 6), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('scale', [0.25, 2.0])
def test_fixed_decoder_scale_is_the_standard_deviation(scale):
    """decoder_scale = σ̃ (a float) gives log q(x|z) = Σ log N(x; μ̃(z), σ̃²) (scipy, rtol 1e-5) and no parameter."""
    model = V.VAE(data_shape=(5,), latent_dim=2, hidden=4, likelihood='gaussian', decoder_scale=scale,
                  rngs=nnx.Rngs(5))
    assert model.decoder.log_scale is None
    rng = np.random.default_rng(15)
    x, z = rng.uniform(size=(3, 5)), rng.normal(size=(3, 2))
    got = model.log_likelihood(jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32))
    expected = scipy.stats.norm.logpdf(x, _numpy_decoder_mean(model, z), scale).sum(axis=1)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-5)


def test_loss_does_not_recompile_across_keys():
    model = V.VAE(data_shape=(4,), latent_dim=2, hidden=3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    batch = {'image': jnp.zeros((3, 4), jnp.uint8)}

    @jax.jit
    def step(state, key):
        return V.bernoulli_binarized_loss(nnx.merge(graphdef, state), batch, key=key)[0]

    for i in range(3):
        step(state, jax.random.fold_in(jax.random.key(0), i))
    assert step._cache_size() == 1


# ----------------------------------------------------------------------------------------------------
# evaluate: the K-sample NLL against 1-D quadrature of q(x) = ∫ q(x|z) N(z; 0, 1) dz.


@pytest.mark.parametrize('likelihood', ['bernoulli', 'gaussian'])
def test_evaluate_matches_quadrature_and_writes_figures(likelihood, tmp_path):
    levels, n = 5, 13
    model = V.VAE(data_shape=(2, 3, 1), latent_dim=1, hidden=8, likelihood=likelihood, decoder_scale='learned_scalar',
                  rngs=nnx.Rngs(3))
    if likelihood == 'gaussian':
        model.decoder.log_scale[...] = jnp.asarray(-0.5)
    images = np.random.default_rng(12).integers(0, levels, size=(n, 2, 3, 1)).astype(np.uint8)
    dataset = types.SimpleNamespace(arrays={'image': images}, levels=levels)
    results = V.evaluate(model, dataset, key=jax.random.key(0), workdir=str(tmp_path),
                         config={'eval_num_samples': 1000, 'eval_batch_size': 5, 'eval_sample_chunk_size': 300})

    # The documented fixed preprocessing, then log q(x) by quadrature on a fine z grid (latent_dim = 1).
    prep = V.binarize if likelihood == 'bernoulli' else V.dequantize
    x = prep(jnp.asarray(images), levels, key=jax.random.key(V.EVAL_PREPROCESS_SEED))  # [n, 6]
    z = jnp.linspace(-10.0, 10.0, 8001)
    log_lik = jax.vmap(lambda zi: model.log_likelihood(x, jnp.full((n, 1), zi)))(z)  # [grid, n]
    log_px = scipy.special.logsumexp(np.asarray(log_lik, np.float64) + scipy.stats.norm.logpdf(np.asarray(z))[:, None],
                                     axis=0) + math.log(float(z[1] - z[0]))
    exact_nll = -np.mean(log_px)
    # K = 1000 importance samples on a 1-D latent: the bias and spread are a few hundredths of a nat at most.
    assert abs(results['test/nll_iwae_nats'] - exact_nll) < 0.02, (results, exact_nll)
    assert results['test/neg_elbo_nats'] > exact_nll - 0.5  # the ELBO cannot sit far above log q(x)
    np.testing.assert_allclose(results['test/neg_elbo_nats'], results['test/recon_nats'] + results['test/kl_nats'],
                               rtol=1e-9)
    if likelihood == 'gaussian':
        for name in ('neg_elbo', 'nll_iwae'):
            expected_bpd = (results[f'test/{name}_nats'] + 6 * math.log(levels)) / (6 * math.log(2))
            np.testing.assert_allclose(results[f'test/{name}_bpd'], expected_bpd, rtol=1e-12)
    else:
        assert 'test/nll_iwae_bpd' not in results
    for name in ('samples.png', 'reconstructions.png'):
        assert matplotlib.image.imread(os.path.join(tmp_path, name)).ndim == 3


def _quadrature_nll(model, x):
    """−mean log q(x) with q(x) = ∫ q(x|z) N(z; 0, 1) dz by a Riemann sum on [−10, 10] (latent_dim = 1)."""
    z = jnp.linspace(-10.0, 10.0, 8001)
    log_lik = jax.vmap(lambda zi: model.log_likelihood(x, jnp.full((x.shape[0], 1), zi)))(z)  # [grid, n]
    log_px = scipy.special.logsumexp(np.asarray(log_lik, np.float64) + scipy.stats.norm.logpdf(np.asarray(z))[:, None],
                                     axis=0) + math.log(float(z[1] - z[0]))
    return -np.mean(log_px)


def test_evaluate_scores_the_fixed_preprocessing_whatever_the_key():
    """With an evaluation key other than key(EVAL_PREPROCESS_SEED), the test points are still binarised with
    the fixed key: the K-sample NLL matches the quadrature NLL of those points (0.2 nats), and binarising
    with the evaluation key instead would be 10 times further off (decoder biases ~ N(0, 3²) make every
    flipped pixel cost nats)."""
    levels, n = 5, 3
    model = V.VAE(data_shape=(4, 6, 1), latent_dim=1, hidden=8, likelihood='bernoulli', rngs=nnx.Rngs(3))
    rng = np.random.default_rng(12)
    model.decoder.logits.bias[...] = jnp.asarray(rng.normal(scale=3.0, size=24), jnp.float32)
    images = rng.integers(0, levels, size=(n, 4, 6, 1)).astype(np.uint8)
    key = jax.random.key(7)
    results = V.evaluate(model, types.SimpleNamespace(arrays={'image': images}, levels=levels), key=key,
                         workdir=None, config={'eval_num_samples': 100, 'eval_batch_size': n})
    fixed = _quadrature_nll(model, V.binarize(jnp.asarray(images), levels, key=jax.random.key(V.EVAL_PREPROCESS_SEED)))
    other = _quadrature_nll(model, V.binarize(jnp.asarray(images), levels, key=key))
    assert abs(results['test/nll_iwae_nats'] - fixed) < 0.2, (results, fixed)
    assert abs(other - fixed) > 2.0, (other, fixed)


# ----------------------------------------------------------------------------------------------------
# Bad inputs.


def _rngs():
    return nnx.Rngs(0)


BAD_INPUTS = [
    (lambda: V.GaussianEncoder(0, 4, 2, rngs=_rngs()), "`in_features` must be a positive int; got 0"),
    (lambda: V.GaussianEncoder(4, 4, 0, rngs=_rngs()), "`latent_dim` must be a positive int; got 0"),
    (lambda: V.GaussianEncoder(4, (), 2, rngs=_rngs()),
     "`hidden` must be a positive int or a non-empty sequence of positive ints; got ()"),
    (lambda: V.BernoulliDecoder(2, -3, 4, rngs=_rngs()),
     "`hidden` must be a positive int or a non-empty sequence of positive ints; got -3"),
    (lambda: V.BernoulliDecoder(2, 3, 2.5, rngs=_rngs()), "`out_features` must be a positive int; got 2.5"),
    (lambda: V.GaussianDecoder(2, 3, 4, scale='learned', rngs=_rngs()),
     "`scale` must be one of ('learned_scalar', 'learned_pixel') or a positive float; got 'learned'"),
    (lambda: V.GaussianDecoder(2, 3, 4, scale=0.0, rngs=_rngs()),
     "`scale` must be one of ('learned_scalar', 'learned_pixel') or a positive float; got 0.0"),
    (lambda: V.VAE(data_shape=(4,), latent_dim=0, hidden=3, rngs=_rngs()),
     "`latent_dim` must be a positive int; got 0"),
    (lambda: V.VAE(data_shape=(4,), latent_dim=2, hidden=3, likelihood='poisson', rngs=_rngs()),
     "`likelihood` must be one of ('bernoulli', 'gaussian'); got 'poisson'"),
    (lambda: V.VAE(data_shape=(4,), latent_dim=2, hidden=3, likelihood='gaussian', decoder_scale='pixel',
                   rngs=_rngs()),
     "`scale` must be one of ('learned_scalar', 'learned_pixel') or a positive float; got 'pixel'"),
    (lambda: V.VAE(data_shape=(8, 0), latent_dim=2, hidden=3, rngs=_rngs()),
     "`data_shape` must be a non-empty tuple of positive ints; got (8, 0)"),
    (lambda: V.VAE(data_shape=(4,), latent_dim=2, hidden=3, rngs=_rngs()).sample(0, key=jax.random.key(0)),
     "`n` must be a positive int; got 0"),
    (lambda: V.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 4))),
     "`log_var` must have the shape of `mean` (2, 3); got (2, 4)"),
    (lambda: V.gaussian_kl(jnp.zeros(()), jnp.zeros(())),
     "`mean` must have a leading batch axis (ndim >= 1); got shape ()"),
    (lambda: V.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((3, 2))),
     "`x` must have the shape of `logits` (2, 3); got (3, 2)"),
    (lambda: V.gaussian_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2,))),
     "`log_scale` must broadcast to the shape of `x` (2, 3); got (2,)"),
    (lambda: V.elbo(V.VAE(data_shape=(4,), latent_dim=2, hidden=3, rngs=_rngs()), jnp.zeros((2, 2, 2)),
                    key=jax.random.key(0)), "`x_flat` must be [b, D]; got shape (2, 2, 2)"),
    (lambda: V.evaluate(V.VAE(data_shape=(2, 2, 1), latent_dim=2, hidden=3, rngs=_rngs()),
                        types.SimpleNamespace(arrays={'image': np.zeros((3, 2, 2, 1), np.uint8)}, levels=256),
                        key=jax.random.key(0), config={'eval_num_samples': 0}, workdir=None),
     "`eval_num_samples` must be a positive int; got 0"),
    (lambda: V.evaluate(V.VAE(data_shape=(2, 2, 1), latent_dim=2, hidden=3, rngs=_rngs()),
                        types.SimpleNamespace(arrays={'image': np.zeros((3, 4), np.uint8)}, levels=256),
                        key=jax.random.key(0), config={}, workdir=None),
     "`dataset.arrays['image']` must be [N, *(2, 2, 1)]; got (3, 4)"),
    (lambda: V.evaluate(V.VAE(data_shape=(2, 2, 1), latent_dim=2, hidden=3, rngs=_rngs()),
                        types.SimpleNamespace(arrays={'image': np.zeros((3, 2, 2, 1), np.uint8)}, levels=1),
                        key=jax.random.key(0), config={}, workdir=None),
     "`dataset.levels` must be an int >= 2; got 1"),
]


@pytest.mark.parametrize('fn,message', BAD_INPUTS,
                         ids=[m.split('`')[1] + f'-{i}' for i, (_, m) in enumerate(BAD_INPUTS)])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()


# ---- evaluation keys and loss levels: checked before anything compiles ----

from tests.helpers import BACKEND_COMPILES as _BACKEND_COMPILES  # noqa: E402


@pytest.mark.parametrize("path, key, value, message", [
    ("experiments/vae/vae.py", "eval_num_samples", 0, r"`eval_num_samples` must be a positive int; got 0"),
    ("experiments/vae/vae.py", "eval_batch_size", -1, r"`eval_batch_size` must be a positive int; got -1"),
    ("experiments/vae/importance.py", "eval_num_samples", -5, r"`eval_num_samples` must be a positive int; got -5"),
    ("experiments/vae/importance.py", "loss_kwargs.levels", 0, r"`levels` must be an int >= 2; got 0"),
])
def test_config_mistakes_fail_before_compiling(path, key, value, message, tmp_path):
    from experiments.reproduce import load_config
    from kexue_jax.core.train import train_and_evaluate

    config = load_config(path, "smoke")
    if key.startswith("loss_kwargs."):
        config.loss_kwargs[key.split(".")[1]] = value
    else:
        config[key] = value
    _BACKEND_COMPILES.clear()
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, str(tmp_path))
    assert not _BACKEND_COMPILES and not (tmp_path / "checkpoints").exists()
