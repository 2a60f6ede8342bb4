"""f-VAE checks (spec generative.md §3.4), each against an independent computation:

1. VAE special case: with F_x(u) = σ(x)u + μ(x) the Monte-Carlo mean of the general loss is the analytic
   VAE loss (closed-form reconstruction for a linear decoder + closed-form KL, in NumPy) within 3 s.e.; and
   the FVAE module's 'diagonal' posterior without couplings has the VAE pilot's KL (`gaussian_kl`).
2. Flow special case: E = G = identity, σ₁ = σ₂ = σ: the loss is the flow NLL of x + σu sample-wise
   (log-det from jacfwd), and the reconstruction term is (D/2)ln(2πσ²) + ½‖u‖².
3. log|det ∂F(σ₁u + E(x))/∂u| = d ln σ₁ + log|det J_F(h)| = slogdet(jacfwd), float64.
4. Linear-Gaussian: with the exact posterior built from linear E, F, G the loss equals −log q(x) of the
   Gaussian marginal for every u; a perturbed posterior has a positive ELBO gap.
Plus sampling round trip, `fvae_loss` accounting and a bad-input table.
"""
import math
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.flows.fvae import FVAE, fvae_loss, general_loss
from kexue_jax.vae.vae import gaussian_kl
from tests.flows.test_bijector import _FAST_COMPILE, _randomised, _to_float64

_LOG_2PI = math.log(2 * math.pi)


def _jit(fn, *args):
    return jax.jit(fn, compiler_options=_FAST_COMPILE)(*args)


def _np_normal_logpdf(v):
    return np.sum(-0.5 * v ** 2 - 0.5 * _LOG_2PI, axis=-1)


# ----------------------------------------------------------------------------------------------------
# 1. VAE special case.


def test_vae_special_case_monte_carlo_equals_analytic_vae_loss():
    rng = np.random.default_rng(0)
    b, big_d, d, n = 3, 5, 3, 100000
    x = rng.standard_normal((b, big_d))
    w_mu, w_s = rng.standard_normal((big_d, d)), rng.standard_normal((big_d, d))
    a, c, log_s2 = rng.standard_normal((big_d, d)), rng.standard_normal(big_d), math.log(0.7)
    mu, log_sigma = 2.0 * np.tanh(x @ w_mu), 0.5 * np.tanh(x @ w_s)  # a non-linear encoder [b, d]
    sigma = np.exp(log_sigma)

    def losses(x, mu, log_sigma, u):  # u [n, b, d] -> [n, b]
        def one(u):
            z = jnp.exp(log_sigma) * u + mu  # F_x(u) = σ(x) u + μ(x)
            mean = z @ a.T + c[None]
            log_lik = jnp.sum(-0.5 * (x - mean) ** 2 / math.exp(2 * log_s2) - log_s2 - 0.5 * _LOG_2PI, axis=1)
            return general_loss(u, z, jnp.sum(log_sigma, axis=1), log_lik)
        return jax.vmap(one)(u)

    with jax.enable_x64(True):
        u = rng.standard_normal((n, b, d))
        values = np.asarray(_jit(losses, x, mu, log_sigma, u))
    mc, se = values.mean(0), values.std(0, ddof=1) / math.sqrt(n)
    # analytic: E_u ‖x − A(μ + σu) − c‖² = ‖x − Aμ − c‖² + Σ_j σ_j² ‖A_j‖²
    resid = x - mu @ a.T - c
    recon = ((np.sum(resid ** 2, 1) + (sigma ** 2) @ np.sum(a ** 2, 0)) / (2 * math.exp(2 * log_s2))
             + big_d * log_s2 + 0.5 * big_d * _LOG_2PI)
    kl = 0.5 * np.sum(mu ** 2 + sigma ** 2 - 2 * log_sigma - 1, axis=1)
    assert np.all(np.abs(mc - (recon + kl)) < 3 * se), (mc, recon + kl, se)
    # the check has power: leaving out the KL is many standard errors away
    assert np.all(np.abs(mc - recon) > 10 * se), (mc - recon, se)


def _vae_like(rngs):
    return FVAE(event_shape=(2, 2, 1), num_encoder_blocks=1, num_decoder_blocks=1, hidden=8, num_couplings=0,
                posterior_scale="diagonal", levels=17, rngs=rngs)


def test_diagonal_posterior_without_couplings_is_the_vae():
    """The 'vae_baseline' model: E_u of the loss minus reconstruction is the VAE pilot's closed-form KL."""
    model = _randomised(_vae_like)
    assert model.flow is None
    n = 20000
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    u = np.random.default_rng(2).standard_normal((n, 2, 4)).astype(np.float32)
    graphdef, state = nnx.split(model)

    def run(state, x, u):
        m = nnx.merge(graphdef, state)
        mean, log_sigma = m.encode(x)
        kl_terms = jax.vmap(lambda v: m.loss_terms(x, v)["kl"])(u)  # [n, b]
        return kl_terms, gaussian_kl(mean, 2.0 * log_sigma), log_sigma

    kl_terms, kl, log_sigma = map(np.asarray, _jit(run, state, x, u))
    assert np.ptp(log_sigma) > 1e-3  # σ(x) really varies per dimension
    mc, se = kl_terms.mean(0), kl_terms.std(0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(mc - kl) < 3 * se), (mc, kl, se)


# ----------------------------------------------------------------------------------------------------
# 2. and 3.: the flow special case and the conditional-flow Jacobian, float64.


def _flow_case(rngs):
    return FVAE(event_shape=(4,), num_encoder_blocks=0, num_decoder_blocks=0, hidden=4, num_couplings=3,
                flow_hidden=(8,), levels=17, rngs=rngs)


def test_flow_special_case_is_the_flow_nll_of_noised_data_samplewise():
    sigma = 0.3
    graphdef, state = nnx.split(_randomised(_flow_case))
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        state = _to_float64(state)
        state["log_sigma1"][...] = jnp.asarray(math.log(sigma))
        state["log_sigma2"][...] = jnp.asarray(math.log(sigma))
        x, u = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

        def run(state, x, u):
            m = nnx.merge(graphdef, state)
            t = m.loss_terms(x, u)
            f = lambda v: m.flow.forward(v[None])[0]  # noqa: E731
            y = x + sigma * u
            z = jax.vmap(f)(y)
            logabs = jax.vmap(lambda v: jnp.linalg.slogdet(jax.jacfwd(f)(v))[1])(y)
            return t, z, logabs

        t, z, logabs = jax.tree.map(np.asarray, _jit(run, state, x, u))
    assert np.all(np.abs(logabs) > 1e-3)  # F is not volume-preserving here (its ActNorms are randomised)
    flow_nll = -(_np_normal_logpdf(z) + logabs)
    np.testing.assert_allclose(t["loss"], flow_nll, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(t["recon"], 0.5 * 4 * math.log(2 * math.pi * sigma ** 2) + 0.5 * np.sum(u ** 2, 1),
                               rtol=1e-10)


def _scalar_case(rngs):
    return FVAE(event_shape=(2, 3, 1), num_encoder_blocks=1, num_decoder_blocks=1, hidden=8, num_couplings=2,
                flow_hidden=(8,), levels=17, rngs=rngs)


def _diagonal_projected_case(rngs):
    return FVAE(event_shape=(6,), latent_dim=4, num_encoder_blocks=1, num_decoder_blocks=1, hidden=8,
                num_couplings=2, flow_hidden=(8,), posterior_scale="diagonal", levels=17, rngs=rngs)


@pytest.mark.parametrize("factory", [_scalar_case, _diagonal_projected_case], ids=["scalar", "diagonal_d4"])
def test_conditional_flow_log_det_matches_jacfwd(factory):
    graphdef, state = nnx.split(_randomised(factory))
    model = nnx.merge(graphdef, state)
    big_d, d = model.num_dims, model.latent_dim
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        state = _to_float64(state)
        x, u = rng.standard_normal((2, big_d)), rng.standard_normal((2, d))

        def run(state, x, u):
            m = nnx.merge(graphdef, state)
            z, log_det_u, h = m.conditional_flow(x, u)
            _, log_sigma = m.encode(x)
            _, log_det_f = m.flow_forward(h)

            def jac_logabs(xi, ui):
                return jnp.linalg.slogdet(jax.jacfwd(lambda v: m.conditional_flow(xi[None], v[None])[0][0])(ui))[1]

            def flow_logabs(hi):
                return jnp.linalg.slogdet(jax.jacfwd(lambda v: m.flow_forward(v[None])[0][0])(hi))[1]

            return dict(log_det_u=log_det_u, jac=jax.vmap(jac_logabs)(x, u), log_sigma=log_sigma,
                        log_det_f=log_det_f, flow_jac=jax.vmap(flow_logabs)(h))

        r = jax.tree.map(np.asarray, _jit(run, state, x, u))
    np.testing.assert_allclose(r["log_det_u"], r["jac"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(r["log_det_f"], r["flow_jac"], rtol=1e-10, atol=1e-10)
    # = d ln σ₁ + log|det J_F(h)| (scalar) or Σ log σ(x) + log|det J_F(h)| (diagonal)
    np.testing.assert_allclose(r["jac"], np.sum(r["log_sigma"], 1) + r["flow_jac"], rtol=1e-10, atol=1e-10)
    if model.posterior_scale == "scalar":
        np.testing.assert_allclose(np.sum(r["log_sigma"], 1), d * float(state["log_sigma1"][...]), rtol=1e-12)
    assert np.all(np.abs(r["flow_jac"]) > 1e-3)


# ----------------------------------------------------------------------------------------------------
# 4. Linear-Gaussian: the exact posterior makes the bound tight for every u.


def test_linear_gaussian_exact_posterior_gives_the_exact_nll_for_every_u():
    rng = np.random.default_rng(5)
    big_d, d, n = 3, 2, 6
    a, bias, s = rng.standard_normal((big_d, d)), rng.standard_normal(big_d), 0.4  # q(x|z) = N(Az + b, s²I)
    x = rng.standard_normal((1, big_d)).repeat(n, 0)
    cov_x = a @ a.T + s ** 2 * np.eye(big_d)
    diff = x[0] - bias
    exact_nll = 0.5 * (big_d * _LOG_2PI + np.linalg.slogdet(cov_x)[1] + diff @ np.linalg.solve(cov_x, diff))
    # true posterior N(m(x), S): S = (I + AᵀA/s²)⁻¹, m(x) = S Aᵀ (x − b)/s²
    post_cov = np.linalg.inv(np.eye(d) + a.T @ a / s ** 2)
    sigma1 = 0.5
    w = np.linalg.cholesky(post_cov) / sigma1  # F(h) = W h + c with σ₁² W Wᵀ = S
    e = np.linalg.solve(w, post_cov @ a.T / s ** 2)  # E(x) = E x, so W E x + c = m(x)
    c = -post_cov @ a.T @ bias / s ** 2

    def losses(w, x, u):
        h = sigma1 * u + x @ e.T
        z = h @ w.T + c[None]
        log_det = d * math.log(sigma1) + jnp.linalg.slogdet(w)[1]
        mean = z @ a.T + bias[None]  # G(F⁻¹(z)) = A F(h) + b
        log_lik = jnp.sum(-0.5 * (x - mean) ** 2 / s ** 2 - math.log(s) - 0.5 * _LOG_2PI, axis=1)
        return general_loss(u, z, jnp.broadcast_to(log_det, (x.shape[0],)), log_lik)

    with jax.enable_x64(True):
        u = rng.standard_normal((n, d))
        exact = np.asarray(_jit(losses, w, x, u))
        off = np.asarray(_jit(losses, w * 1.3, x, u))
    np.testing.assert_allclose(exact, exact_nll, rtol=1e-10)
    # a posterior outside the truth: the loss depends on u and its mean is above the NLL (ELBO gap > 0)
    assert np.ptp(off) > 1e-2


# ----------------------------------------------------------------------------------------------------
# Sampling, the trainer loss and bad inputs.


def _digits_like(rngs):
    return FVAE(event_shape=(4, 4, 1), num_encoder_blocks=1, num_decoder_blocks=1, hidden=8, num_couplings=2,
                flow_hidden=(8,), sigma1_init=0.5, sigma2_init=0.2, levels=17, rngs=rngs)


def test_sample_round_trip_and_loss_accounting():
    model = _randomised(_digits_like)
    graphdef, state = nnx.split(model)
    key = jax.random.key(7)
    images = np.random.default_rng(6).integers(0, 17, (5, 4, 4, 1)).astype(np.uint8)

    def run(state, images):
        m = nnx.merge(graphdef, state)
        z = 0.8 * jax.random.normal(key, (3, 16))
        h, ld_inv = m.flow_inverse(z)
        z_back, ld_fwd = m.flow_forward(h)
        samples = m.sample(3, key=key, temperature=0.8)
        loss, aux = fvae_loss(m, {"image": images}, key=key, levels=17)
        key_y, key_u = jax.random.split(key)
        y = (images.astype(jnp.float32) + jax.random.uniform(key_y, images.shape)) / 17 - 0.5
        t = m.loss_terms(y, jax.random.normal(key_u, (5, 16)))
        recon = m.reconstruct(y)
        g_e = m.decode(m.encode(y.reshape(5, 16))[0])
        return dict(z=z, z_back=z_back, ld_inv=ld_inv, ld_fwd=ld_fwd, samples=samples, g_h=m.decode(h),
                    loss=loss, aux=aux, terms=t, recon=recon, g_e=g_e)

    r = jax.tree.map(np.asarray, _jit(run, state, images))
    np.testing.assert_allclose(r["z_back"], r["z"], atol=1e-5)
    np.testing.assert_allclose(r["ld_inv"], -r["ld_fwd"], atol=1e-5)
    np.testing.assert_allclose(r["samples"], r["g_h"].reshape(3, 4, 4, 1), atol=1e-6)
    np.testing.assert_allclose(r["recon"], r["g_e"].reshape(5, 4, 4, 1), atol=1e-6)
    # bits/dim: (L + D ln 17)/(D ln 2) averaged over the batch; recon + kl = L
    expected_bpd = np.mean((r["terms"]["loss"] + 16 * math.log(17)) / (16 * math.log(2)))
    np.testing.assert_allclose(r["loss"], expected_bpd, rtol=1e-5)
    np.testing.assert_allclose(r["aux"]["neg_elbo_nats"], np.mean(r["terms"]["loss"]), rtol=1e-5)
    np.testing.assert_allclose(r["aux"]["recon_nats"] + r["aux"]["kl_nats"], r["aux"]["neg_elbo_nats"], rtol=1e-5)


def test_fvae_loss_bits_per_dim_count_data_dimensions_when_the_latent_is_smaller():
    # latent d = 4 < D = 6 (projected, diagonal posterior): bits/dim = mean_b (L_b + D ln 17)/(D ln 2) of the
    # general loss L at the documented draws (key_y, key_u = split(key)), in NumPy float64 from L.
    model = _randomised(_diagonal_projected_case)
    graphdef, state = nnx.split(model)
    key = jax.random.key(3)
    images = np.random.default_rng(9).integers(0, 17, (5, 6)).astype(np.uint8)

    def run(state, images):
        m = nnx.merge(graphdef, state)
        loss, aux = fvae_loss(m, {"image": images}, key=key, levels=17)
        key_y, key_u = jax.random.split(key)
        y = (images.astype(jnp.float32) + jax.random.uniform(key_y, images.shape)) / 17 - 0.5
        return loss, aux, m.loss_terms(y, jax.random.normal(key_u, (5, 4)))["loss"]

    loss, aux, terms = jax.tree.map(np.asarray, _jit(run, state, images))
    terms = terms.astype(np.float64)
    np.testing.assert_allclose(loss, np.mean((terms + 6 * math.log(17)) / (6 * math.log(2))), rtol=1e-5)
    np.testing.assert_allclose(aux["neg_elbo_nats"], np.mean(terms), rtol=1e-5)


def test_evaluate_against_the_closed_form_linear_gaussian_model():
    # F = identity, E(y) = W_e y + b_e and G(h) = W_d h + b_d linear, latent d = 2 < D = 4, and W_dᵀW_d = c²I so the
    # true posterior N(S W_dᵀ(y − b_d)/σ₂², S), S = I/(1 + c²/σ₂²), is isotropic: E and σ₁ are set to it exactly.
    # Then the marginal is q(y) = N(y; b_d, W_d W_dᵀ + σ₂² I) in closed form (NumPy float64) and the general loss
    # equals −log q(y) for EVERY u (as in the linear-Gaussian test above), so the −ELBO and the importance-sampled
    # NLL of `evaluate` both equal the exact NLL (float32 rounding), and bits/dim count the D data dimensions.
    # y is the evaluation's dequantisation (key fold_in(key(EVAL_DEQUANT_SEED), chunk)).
    from kexue_jax.flows import fvae as FV
    from kexue_jax.flows.likelihood import bits_per_dim

    rng = np.random.default_rng(8)
    big_d, d, s2, c = 4, 2, 0.3, 0.5
    w_d = c * np.linalg.qr(rng.standard_normal((big_d, big_d)))[0][:, :d]  # [D, d], W_dᵀW_d = c² I
    b_d = 0.1 * rng.standard_normal(big_d)
    post_var = 1.0 / (1.0 + c ** 2 / s2 ** 2)
    w_e = post_var * w_d.T / s2 ** 2  # [d, D]: the posterior mean map
    model = FVAE(event_shape=(big_d,), latent_dim=d, num_encoder_blocks=0, num_decoder_blocks=0, hidden=4,
                 num_couplings=0, sigma1_init=math.sqrt(post_var), sigma2_init=s2, levels=17, rngs=nnx.Rngs(0))
    model.encoder_in.kernel[...] = jnp.asarray(w_e.T, jnp.float32)  # y @ kernel: [D, d]
    model.encoder_in.bias[...] = jnp.asarray(-w_e @ b_d, jnp.float32)
    model.decoder_out.kernel[...] = jnp.asarray(w_d.T, jnp.float32)  # h @ kernel: [d, D]
    model.decoder_out.bias[...] = jnp.asarray(b_d, jnp.float32)
    images = rng.integers(0, 17, (10, big_d)).astype(np.uint8)
    dataset = types.SimpleNamespace(arrays={"image": images}, levels=17)
    config = dict(eval_num_samples=16, eval_elbo_samples=4, eval_batch_size=10, eval_sample_chunk_size=8)
    out = FV.evaluate(model, dataset, key=jax.random.key(1), config=config, workdir=None)
    u = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(FV.EVAL_DEQUANT_SEED), 0), (10, big_d)),
                   np.float64)
    y = (images + u) / 17 - 0.5
    cov = w_d @ w_d.T + s2 ** 2 * np.eye(big_d)
    r = y - b_d
    quad = np.einsum("bi,ij,bj->b", r, np.linalg.inv(cov), r)
    exact_nll = 0.5 * (big_d * _LOG_2PI + np.linalg.slogdet(cov)[1] + quad)
    for name in ("test/neg_elbo_nats", "test/nll_iwae_nats"):
        np.testing.assert_allclose(out[name], np.mean(exact_nll), rtol=1e-5)
    for name in ("test/neg_elbo_bpd", "test/nll_iwae_bpd"):  # (nll + D ln L)/(D ln 2) with D = 4, not d = 2
        np.testing.assert_allclose(out[name], np.mean(bits_per_dim(-exact_nll, big_d, 17)), rtol=1e-5)
    np.testing.assert_allclose(out["test/recon_nats"] + out["test/kl_nats"], out["test/neg_elbo_nats"], rtol=1e-6)
    np.testing.assert_allclose([out["test/sigma1"], out["test/sigma2"]], [math.sqrt(post_var), s2], rtol=1e-6)


def _abstract():
    return nnx.eval_shape(lambda: _digits_like(nnx.Rngs(0)))


def _kw(**kw):
    base = dict(event_shape=(4, 4, 1), hidden=8, num_couplings=2, flow_hidden=(8,), levels=17, rngs=nnx.Rngs(0))
    return lambda: FVAE(**{**base, **kw})


_KEY = jax.random.key(0)
BAD = [
    ("event_shape", _kw(event_shape=(4, 0)), "`event_shape` must be a non-empty sequence of positive integers; "
                                             "got (4, 0)"),
    ("latent_dim one", _kw(latent_dim=1), "`latent_dim` must be >= 2 for couplings to split it; got 1"),
    ("latent_dim zero", _kw(latent_dim=0), "`latent_dim` must be an integer >= 1; got 0"),
    ("posterior_scale", _kw(posterior_scale="full"), "`posterior_scale` must be one of ['scalar', 'diagonal']; "
                                                     "got 'full'"),
    ("sigma1_init", _kw(sigma1_init=0.0), "`sigma1_init` must be a number > 0; got 0.0"),
    ("num_couplings", _kw(num_couplings=-1), "`num_couplings` must be an integer >= 0; got -1"),
    ("model levels", _kw(levels=1), "`levels` must be an integer >= 2; got 1"),
    ("loss levels", lambda: fvae_loss(_abstract(), {"image": np.zeros((2, 4, 4, 1))}, key=_KEY, levels=0),
     "`levels` must be an integer >= 2; got 0"),
    ("loss levels mismatch", lambda: fvae_loss(_abstract(), {"image": np.zeros((2, 4, 4, 1))}, key=_KEY,
                                               levels=256),
     "`levels` must equal the model's levels (17); got 256"),
    ("loss event shape", lambda: fvae_loss(_abstract(), {"image": np.zeros((2, 3, 3, 1))}, key=_KEY, levels=17),
     "`batch['image']` must have event shape (4, 4, 1); got shape (2, 3, 3, 1)"),
    ("x event shape", lambda: _abstract().loss_terms(np.zeros((2, 15)), np.zeros((2, 16))),
     "`x` must have event shape (4, 4, 1) (or (16,)); got shape (2, 15)"),
    ("u latent size", lambda: _abstract().loss_terms(np.zeros((2, 16)), np.zeros((2, 10))),
     "`u` must have shape [b, latent_dim] = (2, 16); got (2, 10)"),
    ("u batch", lambda: _abstract().loss_terms(np.zeros((2, 16)), np.zeros((3, 16))),
     "`u` must have shape [b, latent_dim] = (2, 16); got (3, 16)"),
    ("z latent size", lambda: _abstract().flow_inverse(np.zeros((2, 8))),
     "`z` must have shape [b, latent_dim] = (2, 16); got (2, 8)"),
    ("h latent size", lambda: _abstract().decode(np.zeros((2, 8))),
     "`h` must have shape [b, latent_dim] = (2, 16); got (2, 8)"),
    ("sample n", lambda: _abstract().sample(0, key=_KEY), "`n` must be an integer >= 1; got 0"),
    ("sample temperature", lambda: _abstract().sample(2, key=_KEY, temperature=-1.0),
     "`temperature` must be a number >= 0; got -1.0"),
    ("general_loss shapes", lambda: general_loss(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros(2), np.zeros(2)),
     "`z` must have the shape of `u` [b, d] (2, 3); got (2, 4)"),
    ("general_loss log_det", lambda: general_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3), np.zeros(2)),
     "`log_det_u` must have shape [b] = (2,); got (3,)"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()
