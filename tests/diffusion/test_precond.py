"""EDM preconditioning identities and parameterisation conversions, exact on Gaussian data."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax.diffusion import precond as P
from kexue_jax.diffusion.schedules import article_schedule, vp_sigmas

MU, S = 0.3, 0.7  # data N(MU, S² I)


def exact_denoiser(x, sigma):
    """E[x₀ | x₀ + σn = x] = (s² x + σ² μ)/(s² + σ²) for x₀ ~ N(μ, s²)."""
    s = jnp.asarray(sigma).reshape(-1, *([1] * (x.ndim - 1))) if jnp.ndim(sigma) else sigma
    return (S ** 2 * x + s ** 2 * MU) / (S ** 2 + s ** 2)


def test_edm_coefficients():
    with jax.enable_x64(True):
        sigma = jnp.logspace(-3, 2, 41)
        sd = 0.5
        c_skip, c_out, c_in, c_noise = P.edm_preconditioning(sigma, sd)
        np.testing.assert_allclose(c_in ** 2 * (sigma ** 2 + sd ** 2), 1.0, rtol=1e-12)
        np.testing.assert_allclose(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2), rtol=1e-12)
        np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-12)
        # The training target F* = (x₀ − c_skip x)/c_out has unit variance for data of std σ_d (Karras B.6).
        target_var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2
        np.testing.assert_allclose(target_var, 1.0, rtol=1e-10)
        # c_skip is the minimiser of that variance (d/dc_skip = 0).
        np.testing.assert_allclose(-(1 - c_skip) * sd ** 2 + c_skip * sigma ** 2, 0.0, atol=1e-12)
        np.testing.assert_allclose(P.edm_loss_weight(sigma, sd), 1 / c_out ** 2, rtol=1e-12)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 50.0, "vector"])
def test_every_parameterisation_gives_the_exact_denoiser(sigma):
    x = MU + jax.random.normal(jax.random.key(0), (4, 3, 3, 1)) * 2.0
    sigma = jnp.array([0.05, 0.9, 7.0, 60.0]) if sigma == "vector" else jnp.float32(sigma)
    d_true = exact_denoiser(x, sigma)
    eps_true = P.from_denoiser(exact_denoiser, "eps")
    score_true = P.from_denoiser(exact_denoiser, "score")
    v_true = P.from_denoiser(exact_denoiser, "v")
    e = lambda s, x: s.reshape(-1, *([1] * (x.ndim - 1)))
    vp = lambda x_in, s: x_in * jnp.sqrt(1 + e(s, x_in) ** 2)  # recover x from ᾱx
    nets = {
        ("eps", False): lambda x_in, s: eps_true(x_in, s),
        ("eps", True): lambda x_in, s: eps_true(vp(x_in, s), s),
        ("x0", False): lambda x_in, s: exact_denoiser(x_in, s),
        ("score", False): lambda x_in, s: score_true(x_in, s),
        ("v", True): lambda x_in, s: v_true(vp(x_in, s), s),
    }
    for (param, vp_input), net in nets.items():
        d = P.to_denoiser(net, param, vp_input=vp_input)(x, sigma)
        np.testing.assert_allclose(np.asarray(d), np.asarray(d_true), rtol=2e-5, atol=2e-5, err_msg=param)
    # Independent closed forms: ε = (x − D)/σ, score = (D − x)/σ², v = ᾱ ε − β̄ D.
    s = e(jnp.broadcast_to(sigma, (4,)), x)
    ab = 1 / jnp.sqrt(1 + s ** 2)
    np.testing.assert_allclose(np.asarray(eps_true(x, sigma)), np.asarray((x - d_true) / s), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v_true(x, sigma)), np.asarray(ab * (x - d_true) / s - s * ab * d_true),
                               rtol=1e-4, atol=1e-5)
    # EDM: F* = (D* − c_skip x)/c_out through the preconditioner returns D*.
    def raw(x_in, c_noise):
        sig = jnp.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = P.edm_preconditioning(sig, 0.5)
        xx = x_in / e(c_in, x_in)
        return (exact_denoiser(xx, sig) - e(c_skip, xx) * xx) / e(c_out, xx)

    np.testing.assert_allclose(np.asarray(P.edm_denoiser(raw, 0.5)(x, sigma)), np.asarray(d_true), rtol=1e-4,
                               atol=1e-4)



def test_from_denoiser_closed_forms_on_gaussian_data():
    # For x₀ ~ N(μ, s²), x = x₀ + σn: score = −(x − μ)/(s² + σ²), ε = E[n | x] = σ(x − μ)/(s² + σ²),
    # v = ᾱε − β̄ D (ᾱ = 1/√(1+σ²), β̄ = σᾱ). Written from the Gaussian posterior, not from to_denoiser.
    with jax.enable_x64(True):
        x = MU + jax.random.normal(jax.random.key(3), (4, 5), jnp.float64) * 2.0
        sigma = jnp.array([0.05, 0.9, 7.0, 60.0], jnp.float64)
        s2 = sigma[:, None] ** 2
        score = -(x - MU) / (S ** 2 + s2)
        eps = sigma[:, None] * (x - MU) / (S ** 2 + s2)
        d = (S ** 2 * x + s2 * MU) / (S ** 2 + s2)
        ba = 1 / jnp.sqrt(1 + s2)
        v = ba * eps - sigma[:, None] * ba * d
        for name, want in (("score", score), ("eps", eps), ("x0", d), ("v", v)):
            np.testing.assert_allclose(np.asarray(P.from_denoiser(exact_denoiser, name)(x, sigma)),
                                       np.asarray(want), rtol=1e-12, err_msg=name)
            # and back: to_denoiser of the closed-form prediction is the exact denoiser
            pred = lambda xx, ss, w=want: w
            back = P.to_denoiser(pred, name, vp_input=name == "v")(x, sigma)
            np.testing.assert_allclose(np.asarray(back), np.asarray(d), rtol=1e-12, err_msg=name)


def test_round_sigma_is_nearest_in_log_sigma():
    # Between adjacent grid points a < b the log-nearest switches at √(ab), the linear-nearest at (a + b)/2;
    # a σ strictly between the two must go to b.
    sched = article_schedule(1000)
    grid = vp_sigmas(sched)
    for t in (1, 2, 3):  # the widest gaps (σ₁ = 0.0045, σ₂ = 0.0077, ...); near σ_T they are ~1e-5 relative
        a, b = grid[t], grid[t + 1]
        geo, mid = math.sqrt(a * b), (a + b) / 2
        assert mid - geo > 1e-4 * b  # float32 can resolve the gap
        sig, tt = P.round_sigma(jnp.array([0.5 * (geo + mid), 0.5 * (a + geo)], jnp.float32), sched)
        np.testing.assert_array_equal(np.asarray(tt), [t + 1, t])

def test_ddpm_denoiser_rounds_to_the_grid():
    sched = article_schedule(1000)
    grid = vp_sigmas(sched)
    ba = jnp.asarray(sched.bar_alpha, jnp.float32)

    def eps_fn(x_t, t):  # exact discrete ε for N(μ, s²) data at step t (x_t = ᾱ x)
        e = lambda c: c.reshape(-1, *([1] * (x_t.ndim - 1)))
        sig = jnp.asarray(grid, jnp.float32)[t]
        x = x_t / e(ba[t])
        return (x - exact_denoiser(x, sig)) / e(sig)

    x = jax.random.normal(jax.random.key(1), (3, 5))
    d = P.ddpm_denoiser(eps_fn, sched)
    on_grid = jnp.asarray(grid[[10, 400, 990]], jnp.float32)
    np.testing.assert_allclose(np.asarray(d(x, on_grid)), np.asarray(exact_denoiser(x, on_grid)), rtol=1e-4, atol=1e-5)
    off = on_grid * 1.001
    np.testing.assert_allclose(np.asarray(d(x, off)), np.asarray(exact_denoiser(x, on_grid)), rtol=1e-4, atol=1e-5)
    sig, t = P.round_sigma(jnp.array([grid[1] / 10, grid[500], grid[-1] * 10]), sched)
    np.testing.assert_array_equal(np.asarray(t), [1, 500, 1000])


def test_edm_loss_matches_numpy_reference():
    x = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    key = jax.random.key(4)

    def raw(x_in, c_noise):  # a fixed linear "network"
        return 0.5 * x_in + c_noise[:, None]

    loss, _ = jax.jit(lambda b, k: P.edm_loss(raw, b, key=k))({"x": x}, key)
    _, k_sigma, k_noise = jax.random.split(key, 3)
    sig = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(k_sigma, (6,)), np.float64))[:, None]
    n = np.asarray(jax.random.normal(k_noise, x.shape), np.float64)
    xn = x + sig * n
    tot = sig ** 2 + 0.25
    d = 0.25 / tot * xn + sig * 0.5 / np.sqrt(tot) * (0.5 * xn / np.sqrt(tot) + np.log(sig) / 4)
    ref = np.mean(tot[:, 0] / (sig[:, 0] * 0.5) ** 2 * np.sum((d - x) ** 2, axis=1))
    assert float(loss) == pytest.approx(ref, rel=1e-4)


BAD = [
    (lambda: P.to_denoiser(lambda x, s: x, "noise"), "`parameterization` must be one of ['eps', 'x0', 'v', 'score']; got 'noise'"),
    (lambda: P.from_denoiser(lambda x, s: x, "flow"), "`parameterization` must be one of"),
    (lambda: P.to_denoiser(lambda x, s: x, "v"), "`vp_input` must be True for parameterization 'v'"),
    (lambda: P.edm_preconditioning(1.0, sigma_data=0.0), "`sigma_data` must be a float > 0; got 0.0"),
    (lambda: P.ddpm_denoiser(lambda x, t: x, "article"), "`schedule` must be a DDPMSchedule; got str"),
    (lambda: P.to_denoiser(lambda x, s: x, "x0")(jnp.ones((3, 2)), jnp.ones((2,))),
     "`sigma` must be a scalar or have shape [b] = (3,); got (2,)"),
    (lambda: P.edm_loss(lambda x, c: x, {"x": jnp.ones((2, 2))}, key=jax.random.key(0), p_std=0.0),
     "`p_std` must be a float > 0; got 0.0"),
]


@pytest.mark.parametrize("fn,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError) as e:
        fn()
    assert message in str(e.value)
