"""DDPM in the blog's notation: loss vs NumPy float64, the ELBO's weights and constants in closed form on
Gaussian data, the 1000-step ancestral sampler (spec generative.md §11.4), bits/dim, bad inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import optimize

from kexue_jax.data import baselines
from kexue_jax.diffusion import ddpm
from kexue_jax.diffusion.schedules import article_schedule, linear_schedule, make_schedule

SCHED = article_schedule(1000)


def exact_eps(s, schedule=SCHED, mean=0.0):
    """E[ε | x_t] for x₀ ~ N(mean, s²): β̄_t (x_t − ᾱ_t mean)/(ᾱ_t² s² + β̄_t²) (spec §11.4)."""
    ba = jnp.asarray(schedule.bar_alpha, jnp.float32)
    bb = jnp.asarray(schedule.bar_beta, jnp.float32)

    def eps_fn(x, t):
        e = lambda c: c.reshape(c.shape + (1,) * (x.ndim - 1))
        a, b = e(ba[t]), e(bb[t])
        return b * (x - a * mean) / (a ** 2 * s ** 2 + b ** 2)

    return eps_fn


def test_loss_terms_match_numpy_float64():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(6, 3, 3, 2)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([1, 2, 10, 500, 999, 1000])
    coef = np.linspace(0.1, 0.9, 1001)

    def eps_fn(x, tt):  # a deterministic stand-in network: ε_θ = c_t x_t + 0.1
        return jnp.asarray(coef, jnp.float32)[tt].reshape(-1, 1, 1, 1) * x + 0.1

    e = lambda c: c.reshape(-1, 1, 1, 1)
    x_t = e(SCHED.bar_alpha[t]) * x0.astype(np.float64) + e(SCHED.bar_beta[t]) * eps
    sq = np.sum((eps - (e(coef[t]) * x_t + 0.1)) ** 2, axis=(1, 2, 3))
    got = np.asarray(ddpm.ddpm_loss_terms(eps_fn, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(eps), SCHED))
    np.testing.assert_allclose(got, sq, rtol=2e-5)
    a, b, bb = SCHED.alpha[t], SCHED.beta[t], SCHED.bar_beta[t]
    w = b ** 4 / (2 * bb ** 2 * a ** 2 * b ** 2)
    got_w = np.asarray(ddpm.ddpm_loss_terms(eps_fn, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(eps), SCHED,
                                            "elbo", "beta"))
    np.testing.assert_allclose(got_w, w * sq, rtol=2e-5)


def test_ddpm_loss_uses_documented_key_split_and_dequantisation():
    images = np.random.default_rng(1).integers(0, 17, size=(5, 4, 4, 1)).astype(np.uint8)
    key = jax.random.key(3)
    eps_fn = lambda x, t: 0.5 * x
    loss, aux = jax.jit(lambda im, k: ddpm.ddpm_loss(eps_fn, {"image": im}, key=k, levels=17))(images, key)
    k_data, k_t, k_eps = jax.random.split(key, 3)
    u = np.asarray(jax.random.uniform(k_data, images.shape), np.float64)
    x0 = 2 * (images + u) / 17 - 1
    t = np.asarray(jax.random.randint(k_t, (5,), 1, 1001))
    eps = np.asarray(jax.random.normal(k_eps, images.shape), np.float64)
    e = lambda c: c.reshape(-1, 1, 1, 1)
    x_t = e(SCHED.bar_alpha[t]) * x0 + e(SCHED.bar_beta[t]) * eps
    ref = np.mean(np.sum((eps - 0.5 * x_t) ** 2, axis=(1, 2, 3)))
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert float(aux["mse_per_dim"]) == pytest.approx(ref / 16, rel=1e-5)
    # weighting='elbo' with the posterior σ_t = β̄_{t−1}β_t/β̄_t: w_t = β_t⁴/(2β̄_t²α_t²σ_t²) (Ho's
    # β_t²/(2σ_t²α_t(1 − ᾱ_t)) in the blog's notation), written here from the schedule, not from step_weight
    loss_e, aux_e = jax.jit(lambda im, k: ddpm.ddpm_loss(eps_fn, {"image": im}, key=k, levels=17, weighting="elbo",
                                                          sigma="posterior"))(images, key)
    a, b, bb = SCHED.alpha[t], SCHED.beta[t], SCHED.bar_beta
    sig = np.where(t == 1, b, bb[t - 1] * b / bb[t])  # σ_1 = β_1 in the ELBO (the posterior's σ_1 is 0)
    w = b ** 4 / (2 * bb[t] ** 2 * a ** 2 * sig ** 2)
    sq = np.sum((eps - 0.5 * x_t) ** 2, axis=(1, 2, 3))
    assert float(loss_e) == pytest.approx(np.mean(w * sq), rel=1e-5)
    assert float(aux_e["mse_per_dim"]) == pytest.approx(ref / 16, rel=1e-5)  # unweighted, as documented
    assert abs(np.mean(w * sq) - np.mean(b ** 2 / (2 * bb[t] ** 2 * a ** 2) * sq)) > 1e-3 * np.mean(w * sq)


def test_elbo_weight_is_the_kl_of_the_posterior_means():
    """w_t‖ε − ε_θ‖² = ‖μ̃ − μ‖²/(2σ_t²), μ̃ from Ho's posterior-mean formula in x₀ and x_t (an independent form)."""
    rng = np.random.default_rng(2)
    for sigma in ddpm.SIGMAS:
        w = ddpm.step_weight(SCHED, sigma)
        sig = ddpm.sigma_choice(SCHED, sigma)
        for t in (2, 7, 300, 1000):
            x0, eps, eps_hat = rng.normal(size=(3, 16))
            a, b, ba, bb = SCHED.alpha[t], SCHED.beta[t], SCHED.bar_alpha, SCHED.bar_beta
            x_t = ba[t] * x0 + bb[t] * eps
            mu_tilde = (ba[t - 1] * b ** 2 / bb[t] ** 2) * x0 + (a * bb[t - 1] ** 2 / bb[t] ** 2) * x_t
            mu = (x_t - b ** 2 / bb[t] * eps_hat) / a
            kl_mean = np.sum((mu_tilde - mu) ** 2) / (2 * sig[t] ** 2)
            assert w[t] * np.sum((eps - eps_hat) ** 2) == pytest.approx(kl_mean, rel=1e-9)


def test_sigma_choices_are_optimal_for_their_data():
    """Article: σ_t = β_t is optimal for N(0, I) data, σ_t = β̄_{t−1}β_t/β̄_t for one data point."""
    for schedule in (SCHED, linear_schedule(200)):
        a, b, bb = schedule.alpha[1:], schedule.beta[1:], schedule.bar_beta
        tilde2 = np.concatenate([[0.0], bb[1:-1] ** 2 * b[1:] ** 2 / bb[2:] ** 2])  # σ̃_t², t = 1..T
        # N(0, 1) data: E‖μ̃ − μ*‖² = β_t⁴/(β̄_t²α_t²)·Var(ε|x_t) = β_t⁴/(β̄_t²α_t²)·(1 − β̄_t²); optimum σ² = σ̃² + that.
        opt2 = tilde2 + b ** 4 / (bb[1:] ** 2 * a ** 2) * (1 - bb[1:] ** 2)
        np.testing.assert_allclose(opt2, ddpm.sigma_choice(schedule, "beta")[1:] ** 2, rtol=1e-9)
        np.testing.assert_allclose(tilde2, ddpm.sigma_choice(schedule, "posterior")[1:] ** 2, rtol=1e-9, atol=1e-30)
    # One data point: the step KL ½(r − 1 − ln r), r = σ̃²/σ², minimised numerically over σ.
    t = 37
    tilde = SCHED.bar_beta[t - 1] * SCHED.beta[t] / SCHED.bar_beta[t]
    res = optimize.minimize_scalar(lambda ls: (tilde ** 2 / np.exp(2 * ls) - 1 - np.log(tilde ** 2 / np.exp(2 * ls))),
                                   bounds=(-12, 0), method="bounded", options={"xatol": 1e-10})
    assert math.exp(res.x) == pytest.approx(ddpm.sigma_choice(SCHED, "posterior")[t], rel=1e-6)


def closed_form_neg_elbo(s, schedule, sigma, d):
    """E[−ELBO] for x₀ ~ N(0, s² I_d) and the exact ε-predictor, float64 (independent assembly)."""
    ba, bb, a, b = schedule.bar_alpha, schedule.bar_beta, schedule.alpha, schedule.beta
    sig = ddpm.sigma_choice(schedule, sigma).copy()
    sig[1] = b[1]
    total = 0.5 * d * (ba[-1] ** 2 * s ** 2 + bb[-1] ** 2 - 1 - math.log(bb[-1] ** 2))
    for t in range(1, schedule.num_steps + 1):
        var_eps = 1 - bb[t] ** 2 / (ba[t] ** 2 * s ** 2 + bb[t] ** 2)  # Var(ε | x_t) per dim
        quad = d * b[t] ** 4 / (bb[t] ** 2 * a[t] ** 2) * var_eps / (2 * sig[t] ** 2)
        if t == 1:
            total += 0.5 * d * math.log(2 * math.pi * sig[1] ** 2) + quad
        else:
            r = (bb[t - 1] * b[t] / bb[t]) ** 2 / sig[t] ** 2
            total += 0.5 * d * (r - 1 - math.log(r)) + quad
    return total


@pytest.mark.parametrize("sigma,exact_first", [("beta", True), ("posterior", True), ("beta", False)])
def test_negative_elbo_estimator_matches_closed_form_on_gaussian_data(sigma, exact_first):
    s, d, n = 0.7, 2, 4000
    x0 = s * jax.random.normal(jax.random.key(0), (n, d))
    est = np.asarray(jax.jit(lambda x: ddpm.negative_elbo(exact_eps(s), x, key=jax.random.key(1), schedule=SCHED,
                                                         sigma=sigma, num_t=50, exact_first_step=exact_first))(x0),
                     np.float64)
    ref = closed_form_neg_elbo(s, SCHED, sigma, d)
    stderr = est.std() / math.sqrt(n)
    assert abs(est.mean() - ref) < 4 * stderr, (est.mean(), ref, stderr)
    # A bound: never below the true NLL ½d ln(2πe s²) of the data.
    assert ref > 0.5 * d * math.log(2 * math.pi * math.e * s ** 2)


# A short chain whose steps differ a lot (β_t² = t/24, ᾱ_T² = 0.018): at T = 1000 neighbouring steps are nearly
# identical and step-indexing errors hide. Two data dims, x₀_j ~ N(μ_j, s_j²).
SMALL_T = 12
SMALL_VAR = 0.5 * np.arange(1, SMALL_T + 1) / SMALL_T  # Ho's β_t (variances), t = 1..T
SMALL_SCHED = article_schedule(SMALL_T, max_variance=0.5)
SMALL_MU, SMALL_S = np.array([0.4, -1.0]), np.array([0.3, 1.5])


def ho_reverse_chain(mu, s, sigma):
    """Ho et al.'s reverse step x_{t−1} = g_t x_t + h_t + σ_t z for x₀ ~ N(mu, s²) and the exact ε*, float64 [T].

    Ho's notation: β_t variances, α_t = 1 − β_t, ᾱ_t = Π α. ε*(x_t) = √(1−ᾱ_t)·k_t·(x_t − √ᾱ_t mu) with
    k_t = 1/(ᾱ_t s² + 1 − ᾱ_t); x_{t−1} = (x_t − β_t/√(1−ᾱ_t)·ε*)/√α_t + σ_t z; σ_t² = β_t ('beta') or
    (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t ('posterior', 0 at t = 1). Returns (g, h, σ²), index t − 1.
    """
    b = SMALL_VAR
    a = 1 - b
    ab = np.cumprod(a)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    k = 1 / (ab * s ** 2 + 1 - ab)
    g = (1 - b * k) / np.sqrt(a)
    h = b * k * np.sqrt(ab) * mu / np.sqrt(a)
    var = b.copy() if sigma == "beta" else (1 - ab_prev) / (1 - ab) * b
    return g, h, var


def joint_gaussian_neg_elbo(mu, s, sigma):
    """E[−ELBO] of one data dim (nats) = KL(q(x_{0:T}) ‖ p(x_{0:T})) + H(N(mu, s²)), q the forward chain from the
    data, p the reverse model (prior N(0, 1), steps of `ho_reverse_chain`, decoder variance σ₁² = β₁ for both
    choices as in `ddpm`), from the two (T + 1)-dim joint Gaussians."""
    big_t, b = SMALL_T, SMALL_VAR
    g, h, var = ho_reverse_chain(mu, s, sigma)
    var[0] = b[0]
    # q: x₀ = mu + s n₀, x_t = √α_t x_{t−1} + √β_t n_t (rows x_0..x_T, columns n_0..n_T).
    lin_q = np.zeros((big_t + 1, big_t + 1))
    lin_q[0, 0] = s
    for t in range(1, big_t + 1):
        lin_q[t] = np.sqrt(1 - b[t - 1]) * lin_q[t - 1]
        lin_q[t, t] = np.sqrt(b[t - 1])
    mean_q = mu * np.sqrt(np.concatenate([[1.0], np.cumprod(1 - b)]))
    # p: x_T = n_T, x_{t−1} = g_t x_t + h_t + σ_t n_{t−1}.
    lin_p, mean_p = np.zeros((big_t + 1, big_t + 1)), np.zeros(big_t + 1)
    lin_p[big_t, big_t] = 1.0
    for t in range(big_t, 0, -1):
        lin_p[t - 1] = g[t - 1] * lin_p[t]
        lin_p[t - 1, t - 1] = np.sqrt(var[t - 1])
        mean_p[t - 1] = g[t - 1] * mean_p[t] + h[t - 1]
    cov_q, cov_p = lin_q @ lin_q.T, lin_p @ lin_p.T
    prec, dm = np.linalg.inv(cov_p), mean_p - mean_q
    kl = 0.5 * (np.trace(prec @ cov_q) + dm @ prec @ dm - (big_t + 1)
                + np.linalg.slogdet(cov_p)[1] - np.linalg.slogdet(cov_q)[1])
    return kl + 0.5 * math.log(2 * math.pi * math.e * s ** 2)


def ho_exact_eps(mu, s):
    """ε*(x_t, t) = E[ε | x_t] = √(1−ᾱ_t)(x_t − √ᾱ_t mu)/(ᾱ_t s² + 1 − ᾱ_t) for x₀ ~ N(mu, s²) per dim (mu, s [d]),
    Ho's notation on `SMALL_VAR`, computed in the dtype of x_t."""
    bar = np.concatenate([[1.0], np.cumprod(1 - SMALL_VAR)])  # Ho's ᾱ_t, t = 0..T

    def eps_fn(x, t):
        a = jnp.asarray(bar, x.dtype)[t][:, None]
        m, v = jnp.asarray(mu[None], x.dtype), jnp.asarray(s[None] ** 2, x.dtype)
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * v + 1 - a)

    return eps_fn


@pytest.mark.parametrize("sigma", ["beta", "posterior"])
def test_negative_elbo_equals_joint_gaussian_kl_at_small_t(sigma):
    """T = 12, exact ε*: E[−ELBO] in nats (before the bits/dim constants) = Σ_j `joint_gaussian_neg_elbo`
    (2.2304 nats 'beta', 3.0527 'posterior'). (1) prior_kl + Σ_t elbo_terms is quadratic in (x₀, ε), so in float64
    its mean over the 16 points x₀ = μ ± s, ε = ±1 is its exact expectation: equal to 1e-10 relative. (2) The
    stratified `negative_elbo` (num_t = 3, with and without exact_first_step; float32) over 4·10⁵ examples on
    the 4 points x₀ = μ ± s (exact in x₀): within 5 standard errors (≤ 0.04 nats; the SE includes the fixed
    spread across the points, so it is conservative), so a 0.1-nat bias is ≥ 12 standard errors."""
    ref = sum(joint_gaussian_neg_elbo(m, s, sigma) for m, s in zip(SMALL_MU, SMALL_S))
    eps_fn = ho_exact_eps(SMALL_MU, SMALL_S)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * 4)).reshape(4, -1).T  # [16, 4]: (x₀ dims, ε dims)

    def expectation(x0, eps):
        total = ddpm.prior_kl(x0, SMALL_SCHED)
        for t in range(1, SMALL_T + 1):
            total = total + ddpm.elbo_terms(eps_fn, x0, jnp.full((16,), t), eps, SMALL_SCHED, sigma)
        return jnp.mean(total)

    with jax.enable_x64(True):
        exact = float(jax.jit(expectation)(jnp.asarray(SMALL_MU + SMALL_S * signs[:, :2]), jnp.asarray(signs[:, 2:])))
    assert exact == pytest.approx(ref, rel=1e-10)

    n = 400_000
    corners = SMALL_MU + SMALL_S * np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    x0 = jnp.asarray(np.tile(corners, (n // 4, 1)), jnp.float32)
    for exact_first in (True, False):
        run = jax.jit(lambda x: ddpm.negative_elbo(eps_fn, x, key=jax.random.key(21), schedule=SMALL_SCHED,
                                                   sigma=sigma, num_t=3, exact_first_step=exact_first))
        est = np.asarray(run(x0), np.float64)
        stderr = est.std() / math.sqrt(n)
        assert abs(est.mean() - ref) < 5 * stderr, (exact_first, est.mean(), ref, stderr)


def test_negative_elbo_exact_first_step_removes_the_decoder_term_variance():
    """L_1 ≈ −½d ln(2πβ₁²) ≈ 4.5 nats/dim dwarfs every other L_t: drawn with probability 1/w and weight w, it
    alone gives a per-example standard deviation ≈ L_1·√(w − 1) (≈ 39 nats at d = 2, w = 20). Evaluated
    exactly, the spread is that of the remaining terms (measured 37 → 6.8 nats here; what remains is mostly the
    first stratum, t = 2 … 20, whose terms still vary several-fold); the per-example means agree."""
    s, d, n = 0.7, 2, 2000
    x0 = s * jax.random.normal(jax.random.key(0), (n, d))
    runs = {}
    for exact_first in (True, False):
        runs[exact_first] = np.asarray(jax.jit(lambda x: ddpm.negative_elbo(
            exact_eps(s), x, key=jax.random.key(2), schedule=SCHED, num_t=50, exact_first_step=exact_first))(x0),
            np.float64)
    l1 = -0.5 * d * math.log(2 * math.pi * SCHED.beta[1] ** 2)
    assert runs[False].std() > 0.5 * l1 * math.sqrt(19)
    assert runs[True].std() < runs[False].std() / 4
    diff_err = math.hypot(runs[True].std(), runs[False].std()) / math.sqrt(n)
    assert abs(runs[True].mean() - runs[False].mean()) < 4 * diff_err


def test_negative_elbo_all_steps_is_exact_per_step_sum():
    """num_t = T evaluates every step once: equals the per-step sum built from `elbo_terms` directly."""
    sched = article_schedule(8)
    x0 = jax.random.normal(jax.random.key(0), (3, 4))
    eps_fn = lambda x, t: 0.3 * x
    key = jax.random.key(5)
    got = ddpm.negative_elbo(eps_fn, x0, key=key, schedule=sched, num_t=8)

    @jax.jit
    def reference(x0):
        ref = ddpm.prior_kl(x0, sched)
        for k in range(8):
            _, key_eps = jax.random.split(jax.random.fold_in(key, k))
            eps = jax.random.normal(key_eps, x0.shape)
            ref = ref + ddpm.elbo_terms(eps_fn, x0, jnp.full((3,), k + 1), eps, sched)
        return ref

    ref = reference(x0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5)


def test_bits_per_dim_constant():
    # The uniform density on [−1, 1]^D has −log p = D ln 2: exactly log2(levels) bits per dimension.
    for levels in (17, 256):
        assert ddpm.elbo_bits_per_dim(64 * math.log(2), 64, levels) == pytest.approx(math.log2(levels), rel=1e-12)
    # Same value as the data-package convention on [0, 1] (Jacobian of x = 2y − 1 is 2^D).
    nll_x = 123.4
    assert ddpm.elbo_bits_per_dim(nll_x, 64, 17) == pytest.approx(
        baselines.bits_per_dim(nll_x - 64 * math.log(2), 64, 17), rel=1e-12)


@pytest.mark.parametrize("sigma", ["beta", "posterior"])
def test_ancestral_sampler_recovers_data_std(sigma):
    """Spec §11.4: 1000 steps with the exact ε-predictor return std within 1% of s (s = 0.5, 1, 2)."""
    n = 100_000
    run = jax.jit(lambda x, s: ddpm.ddpm_sample(exact_eps(s), x, key=jax.random.key(7), schedule=SCHED,
                                                sigma=sigma))
    for s in (0.5, 1.0, 2.0):
        x = run(jax.random.normal(jax.random.key(int(s * 10)), (n, 1)), jnp.float32(s))
        assert float(jnp.std(x)) == pytest.approx(s, rel=0.01)
        assert abs(float(jnp.mean(x))) < 0.02 * s


@pytest.mark.parametrize("sigma", ["beta", "posterior"])
def test_ancestral_sampler_matches_exact_gaussian_recursion_at_small_t(sigma):
    """T = 12, exact ε*, x_T ~ N(0, 1): the chain is linear-Gaussian, x₀ = G x_T + R with G = Π_t g_t; its mean and
    variance follow m ← g_t m + h_t, V ← g_t² V + σ_t² (t = T..1, `ho_reverse_chain`, Ho's notation). (1) With
    shared noise, x₀(x_T) − x₀(0) = G x_T exactly (float32). (2) Over 5·10⁵ chains per dim, mean and std within 5
    Monte-Carlo standard errors (sd/√n and sd/√(2n), x₀ being Gaussian): 0.5% of the std. Noise σ_{t−1} for σ_t,
    skipping t = 1, or σ_t = β_t for 'posterior' are each off by ≥ 12 standard errors."""
    n = 500_000
    eps_fn = ho_exact_eps(SMALL_MU, SMALL_S)
    run = jax.jit(lambda x: ddpm.ddpm_sample(eps_fn, x, key=jax.random.key(11), schedule=SMALL_SCHED, sigma=sigma))
    x_T = jax.random.normal(jax.random.key(10), (n, 2))
    x0 = np.asarray(run(x_T), np.float64)
    x0_from_zero = np.asarray(run(jnp.zeros_like(x_T)), np.float64)
    mean, var, gain = np.zeros(2), np.ones(2), np.ones(2)
    for j in range(2):
        g, h, sig2 = ho_reverse_chain(SMALL_MU[j], SMALL_S[j], sigma)
        for i in range(SMALL_T - 1, -1, -1):  # step t = i + 1
            mean[j], var[j], gain[j] = g[i] * mean[j] + h[i], g[i] ** 2 * var[j] + sig2[i], g[i] * gain[j]
    np.testing.assert_allclose(x0 - x0_from_zero, gain * np.asarray(x_T, np.float64), atol=1e-5)
    sd = np.sqrt(var)
    assert np.all(np.abs(x0.mean(0) - mean) < 5 * sd / math.sqrt(n)), (x0.mean(0), mean, sd / math.sqrt(n))
    assert np.all(np.abs(x0.std(0) / sd - 1) < 5 / math.sqrt(2 * n)), (x0.std(0), sd)


def test_prepare_batch_and_to_images_round_trip():
    images = np.arange(17, dtype=np.uint8).reshape(1, 17, 1, 1)
    x = ddpm.prepare_batch({"image": images}, key=jax.random.key(0), levels=17)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    np.testing.assert_array_equal(np.asarray(ddpm.to_images(x, 17)), images.astype(np.float32))


def test_time_mlp_depends_on_t():
    m = ddpm.TimeMLP(num_embeddings=11, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 2))
    assert float(jnp.max(jnp.abs(m(x, jnp.array([1, 1])) - m(x, jnp.array([1, 2]))))) > 1e-4


BAD = [
    (lambda: ddpm.sigma_choice(SCHED, "optimal"), "`sigma` must be one of ['beta', 'posterior']; got 'optimal'"),
    (lambda: ddpm.ddpm_loss(lambda x, t: x, {"x": jnp.ones((2, 2))}, key=jax.random.key(0), weighting="snr"),
     "`weighting` must be one of ['simple', 'elbo']; got 'snr'"),
    (lambda: ddpm.ddpm_loss(lambda x, t: x, {"image": np.zeros((2, 2, 2, 1), np.uint8)}, key=jax.random.key(0)),
     "`levels` must be an int >= 2 for image data; got None"),
    (lambda: ddpm.prepare_batch({"x": np.zeros((2, 2))}, key=jax.random.key(0), data_key="image"),
     "`data_key` must name an entry of the batch ['x']; got 'image'"),
    (lambda: ddpm.negative_elbo(lambda x, t: x, jnp.ones((2, 2)), key=jax.random.key(0), schedule=SCHED, num_t=7),
     "`num_t` must be a positive divisor of T = 1000; got 7"),
    (lambda: ddpm.negative_elbo(lambda x, t: x, jnp.ones((2, 2)), key=jax.random.key(0), schedule=SCHED, num_t=10,
                                exact_first_step=1),
     "`exact_first_step` must be a bool; got 1"),
    (lambda: ddpm.ddpm_sample(lambda x, t: x, jnp.ones((2, 2)), key=jax.random.key(0), schedule=SCHED, t_start=0),
     "`t_start` must be an int in [1, 1000]; got 0"),
    (lambda: ddpm.elbo_bits_per_dim(1.0, 0, 17), "`num_dims` must be a positive int; got 0"),
    (lambda: ddpm.elbo_bits_per_dim(1.0, 4, 1), "`levels` must be an int >= 2; got 1"),
    (lambda: ddpm.TimeMLP(hidden=(), rngs=nnx.Rngs(0)), "`hidden` must be a non-empty sequence of positive ints"),
    (lambda: make_schedule("x"), "`schedule` must be one of"),
]


@pytest.mark.parametrize("fn,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError) as e:
        fn()
    assert message in str(e.value)


@pytest.mark.parametrize("key, value, message", [
    ("eval_sigma", "posteriour", r"`eval_sigma` must be one of \('beta', 'posterior'\); got 'posteriour'"),
    ("elbo_num_t", 0, r"`elbo_num_t` must be an integer >= 1; got 0"),
    ("eval_num_samples", -20, r"`eval_num_samples` must be an integer >= 1; got -20"),
])
def test_bad_evaluate_keys_fail_before_training(key, value, message, tmp_path):
    from experiments.reproduce import load_config
    from kexue_jax.core.config import ConfigError
    from kexue_jax.core.train import train_and_evaluate

    config = load_config("experiments/diffusion/ddpm.py", "smoke")
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
