"""Tests for kexue_jax.vae.importance against scipy, closed forms of probabilistic PCA and finite differences.

Probabilistic PCA (x = W z + b + σ ε) gives the exact log q(x) and the exact posterior, so the importance
estimate can be checked for exactness (true posterior as proposal), for monotone convergence in K and for
its bias (mismatched proposal, spec §10.4: D = 10, d = 2, σ = 0.3, proposal N(m + 0.3, 4 S)).
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from flax import nnx
from jax.flatten_util import ravel_pytree

from kexue_jax.vae import importance as I
from kexue_jax.vae import vae as V
from tests.vae.test_vae import (LinearGaussian, constant_encoder, make_ppca, ppca_closed_form_elbo, ppca_log_px,
                                ppca_posterior)


@pytest.mark.parametrize('axis', [0, 1, -1])
def test_log_mean_exp_equals_scipy_logsumexp_near_plus_minus_1000(axis):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        a = np.concatenate([1000.0 + rng.normal(size=(3, 7)), -1000.0 + rng.normal(size=(3, 7))], axis=0)  # [6, 7]
        expected = scipy.special.logsumexp(a, axis=axis) - math.log(a.shape[axis])
        np.testing.assert_allclose(np.asarray(I.log_mean_exp(jnp.asarray(a), axis)), expected, rtol=1e-14)
    # float32: the naive log(mean(exp(a))) overflows to inf / underflows to -inf here.
    got32 = I.log_mean_exp(jnp.asarray(a, jnp.float32), axis)
    np.testing.assert_allclose(np.asarray(got32), expected, rtol=1e-6)


def test_exact_posterior_proposal_gives_exact_log_likelihood_with_zero_variance():
    with jax.enable_x64(True):
        W, b, sigma, x = make_ppca(seed=1, orthogonal=True)
        post_m, post_S = ppca_posterior(W, b, sigma, x)
        model = LinearGaussian(W, b, sigma, constant_encoder(post_m, np.diag(post_S)))
        x_rep = jnp.broadcast_to(jnp.asarray(x), (256, x.shape[0]))  # 256 independent draws of z_1
        est = np.asarray(I.iwae_log_likelihood(model, x_rep, key=jax.random.key(0), num_samples=1))
        # q(x|z)q(z)/p(z|x) = q(x) for every z when p(z|x) is the true posterior.
        np.testing.assert_allclose(est, ppca_log_px(W, b, sigma, x), rtol=0, atol=1e-8)
        assert est.std() < 1e-10


def test_mismatched_proposal_estimate_rises_with_k_and_converges_from_below():
    with jax.enable_x64(True):
        W, b, sigma, x = make_ppca(seed=0, D=10, d=2, sigma=0.3, orthogonal=True)
        log_px = ppca_log_px(W, b, sigma, x)
        post_m, post_S = ppca_posterior(W, b, sigma, x)
        model = LinearGaussian(W, b, sigma, constant_encoder(post_m + 0.3, 4.0 * np.diag(post_S)))
        repeats = 400
        x_rep = jnp.broadcast_to(jnp.asarray(x), (repeats, x.shape[0]))  # each row an independent estimate
        means, errors, ses = {}, {}, {}
        for k in (1, 5, 50, 500, 1000):
            estimate = jax.jit(lambda x, key: I.iwae_log_likelihood(
                model, x, key=key, num_samples=k, chunk_size=min(k, 128)))  # 1000 = 7·128 + 104: ragged
            est = np.asarray(estimate(x_rep, jax.random.key(k)))
            means[k], ses[k] = est.mean(), est.std() / math.sqrt(repeats)
            errors[k] = np.mean(np.abs(est - log_px))
        assert errors[1] > 1.0  # the proposal really is poor at K = 1
        assert errors[1000] * 10 < errors[1], errors
        ks = (1, 5, 50, 500)
        for k0, k1 in zip(ks[:-1], ks[1:]):
            assert means[k1] > means[k0], means
        # A lower bound in expectation: no mean sits above log q(x) by more than 3 standard errors.
        assert all(means[k] < log_px + 3 * ses[k] for k in means), (means, log_px)


def test_single_sample_bound_is_unbiased_for_the_elbo():
    """K = 1: E[log q(x|z) + log q(z) − log p(z|x)] = ELBO (the VAE loss of VAE VIII with a 1-sample KL)."""
    with jax.enable_x64(True):
        W, b, sigma, x = make_ppca(seed=2)
        post_m, _ = ppca_posterior(W, b, sigma, x)
        m, s2 = post_m - 0.2, np.array([0.05, 0.2])
        model = LinearGaussian(W, b, sigma, constant_encoder(m, s2))
        n = 20_000
        est = np.asarray(I.iwae_log_likelihood(model, jnp.broadcast_to(jnp.asarray(x), (n, x.shape[0])),
                                               key=jax.random.key(3), num_samples=1))
        closed = ppca_closed_form_elbo(W, b, sigma, x, m, s2)
        assert abs(est.mean() - closed) < 4 * est.std() / math.sqrt(n), (est.mean(), closed)


def _tiny_vae(likelihood='bernoulli'):
    return V.VAE(data_shape=(2, 3, 1), latent_dim=2, hidden=5, likelihood=likelihood, rngs=nnx.Rngs(0))


def test_chunked_estimate_equals_unchunked():
    model = _tiny_vae()
    x = jnp.asarray(np.random.default_rng(1).integers(0, 2, size=(4, 6)), jnp.float32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def estimate(state, x):
        m = nnx.merge(graphdef, state)
        estimates = [I.iwae_log_likelihood(m, x, key=jax.random.key(5), num_samples=37, chunk_size=c)
                     for c in (None, 8, 1)]  # 8 does not divide 37
        # The documented draws, one by one: z_k from fold_in(key, k), weights combined outside JAX below.
        mean, log_var = m.encode(x)
        log_w = jax.vmap(lambda k: I.importance_log_weight(
            m, x, V.reparameterize(mean, log_var, key=jax.random.fold_in(jax.random.key(5), k)), mean, log_var)
        )(jnp.arange(37))  # [37, b]
        return estimates, log_w

    estimates, log_w = estimate(state, x)
    full, *chunked = (np.asarray(a) for a in estimates)
    for c in chunked:
        np.testing.assert_allclose(c, full, rtol=1e-5)
    expected = scipy.special.logsumexp(np.asarray(log_w, np.float64), axis=0) - math.log(37)
    np.testing.assert_allclose(full, expected, rtol=1e-5)


def test_iwae_loss_is_the_negated_batch_mean_of_the_k_sample_bound():
    model = _tiny_vae('gaussian')
    image = jnp.asarray(np.random.default_rng(2).integers(0, 17, size=(3, 2, 3, 1)), jnp.uint8)
    key = jax.random.key(8)

    @jax.jit
    def compute(model):
        loss, aux = I.iwae_loss(model, {'image': image, 'levels': 17}, key=key, num_samples=6)
        key_u, key_z = jax.random.split(key)  # documented layout
        y = V.dequantize(image, 17, key=key_u)
        bound = I.iwae_log_likelihood(model, y, key=key_z, num_samples=6)
        _, vae_aux = V.gaussian_dequantized_loss(model, {'image': image, 'levels': 17}, key=key)
        return loss, aux, bound, vae_aux

    loss, aux, bound, vae_aux = compute(model)
    np.testing.assert_allclose(float(loss), -float(jnp.mean(bound)), rtol=1e-6)
    np.testing.assert_allclose(float(aux['kl_nats']), float(vae_aux['kl_nats']), rtol=1e-6)
    np.testing.assert_allclose(float(aux['neg_elbo_nats']), float(aux['recon_nats'] + aux['kl_nats']), rtol=1e-6)


def test_iwae_loss_and_its_aux_equal_numpy():
    """Every output of `iwae_loss` from the documented draws (u = uniform(key_u), ε_k = normal(fold_in(key_z, k)))
    in NumPy/scipy float64: the K-sample bound, recon_nats = mean over b and k of −log q(x|z_k), the analytic
    KL and neg_elbo = recon + KL (rtol 1e-5)."""
    model = _tiny_vae('gaussian')
    model.decoder.log_scale[...] = jnp.asarray(-0.7)  # make σ̃ matter
    k_samples, levels = 6, 17
    image = np.random.default_rng(5).integers(0, levels, size=(3, 2, 3, 1)).astype(np.uint8)
    key = jax.random.key(9)
    loss, aux = jax.jit(lambda m, im: I.iwae_loss(m, {'image': im, 'levels': levels}, key=key,
                                                  num_samples=k_samples))(model, jnp.asarray(image))

    def lin(layer, h):
        return h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)

    def mlp(trunk, h):
        for layer in trunk.layers:
            h = np.maximum(lin(layer, h), 0.0)
        return h

    key_u, key_z = jax.random.split(key)
    y = (image.reshape(3, 6) + np.asarray(jax.random.uniform(key_u, (3, 6)), np.float64)) / levels
    h = mlp(model.encoder.trunk, y)
    mean, log_var = lin(model.encoder.mean, h), lin(model.encoder.log_var, h)
    log_lik, log_w = [], []
    for k in range(k_samples):
        eps = np.asarray(jax.random.normal(jax.random.fold_in(key_z, k), (3, 2)), np.float64)
        z = mean + np.exp(0.5 * log_var) * eps
        mu = lin(model.decoder.mean, mlp(model.decoder.trunk, z))
        ll = scipy.stats.norm.logpdf(y, mu, math.exp(-0.7)).sum(axis=1)
        log_lik.append(ll)
        log_w.append(ll + scipy.stats.norm.logpdf(z).sum(axis=1)
                     - scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)).sum(axis=1))
    log_lik, log_w = np.array(log_lik), np.array(log_w)  # [K, b]
    bound = scipy.special.logsumexp(log_w, axis=0) - math.log(k_samples)
    kl = 0.5 * np.sum(mean ** 2 + np.exp(log_var) - log_var - 1.0, axis=1)
    assert np.ptp(log_lik, axis=0).min() > 1e-2  # the K samples differ, so averaging over k matters
    np.testing.assert_allclose(float(loss), -bound.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux['neg_iwae_nats']), -bound.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux['recon_nats']), -log_lik.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux['kl_nats']), kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux['neg_elbo_nats']), kl.mean() - log_lik.mean(), rtol=1e-5)


def test_iwae_gradient_matches_central_finite_differences():
    with jax.enable_x64(True):
        model = _tiny_vae('gaussian')
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        theta0, unravel = ravel_pytree(params)
        x = jnp.asarray(np.random.default_rng(3).uniform(size=(4, 6)))

        def f(theta):  # K = 5 in chunks of 2: the gradient flows through the streaming scan and the padding
            m = nnx.merge(graphdef, unravel(theta), rest)
            return jnp.mean(I.iwae_log_likelihood(m, x, key=jax.random.key(4), num_samples=5, chunk_size=2))

        grad = np.asarray(jax.jit(jax.grad(f))(theta0))
        h = 1e-6
        eye = jnp.eye(theta0.shape[0], dtype=jnp.float64)
        f_batch = jax.jit(jax.vmap(f))
        fd = np.asarray((f_batch(theta0[None, :] + h * eye) - f_batch(theta0[None, :] - h * eye)) / (2 * h))
        assert np.isfinite(grad).all() and np.abs(grad).max() > 1e-2
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


BAD_INPUTS = [
    (lambda: I.iwae_log_likelihood(_tiny_vae(), jnp.zeros((2, 6)), key=jax.random.key(0), num_samples=0),
     "`num_samples` must be a positive int; got 0"),
    (lambda: I.iwae_log_likelihood(_tiny_vae(), jnp.zeros((2, 6)), key=jax.random.key(0), num_samples=2.0),
     "`num_samples` must be a positive int; got 2.0"),
    (lambda: I.iwae_log_likelihood(_tiny_vae(), jnp.zeros((2, 6)), key=jax.random.key(0), num_samples=4,
                                   chunk_size=0), "`chunk_size` must be a positive int; got 0"),
    (lambda: I.iwae_log_likelihood(_tiny_vae(), jnp.zeros((2, 3, 2)), key=jax.random.key(0), num_samples=4),
     "`x_flat` must be [b, D]; got shape (2, 3, 2)"),
    (lambda: I.iwae_loss(_tiny_vae(), {'image': jnp.zeros((2, 2, 3, 1), jnp.uint8)}, key=jax.random.key(0),
                         num_samples=-1), "`num_samples` must be a positive int; got -1"),
    (lambda: I.log_mean_exp(jnp.zeros((2, 3)), 2), "`axis` must be in [-2, 2); got 2"),
    (lambda: I.log_mean_exp(jnp.zeros((2, 3)), None), "`axis` must be an int; got None"),
    (lambda: I.importance_log_likelihood(lambda k: jnp.zeros(2), 3, key=jax.random.key(0), chunk_size=-2),
     "`chunk_size` must be a positive int; got -2"),
]


@pytest.mark.parametrize('fn,message', BAD_INPUTS, ids=[f'{i}' for i in range(len(BAD_INPUTS))])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
