"""Schedules: the article's numbers (spec generative.md §11.4), closed forms of each grid, bad inputs."""
import math

import numpy as np
import pytest

from kexue_jax.diffusion import schedules as S


def test_article_schedule_matches_the_article_and_spec():
    s = S.article_schedule(1000)
    t = np.arange(1, 1001)
    np.testing.assert_allclose(s.alpha[1:] ** 2, 1 - 0.02 * t / 1000, rtol=1e-12)
    np.testing.assert_allclose(s.alpha ** 2 + s.beta ** 2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(s.bar_alpha ** 2 + s.bar_beta ** 2, 1.0, rtol=1e-12)
    # ᾱ_t is the running product of α_t (brute-force reference).
    np.testing.assert_allclose(s.bar_alpha[1:], np.cumprod(np.sqrt(1 - 0.02 * t / 1000)), rtol=1e-10)
    # Spec §11.4 (computed there independently): ᾱ_T = 6.48e-3, β₁ = β̄₁ = 4.47e-3, β_T = 0.141.
    assert s.bar_alpha[-1] == pytest.approx(6.48e-3, rel=1e-3)
    assert s.bar_alpha[-1] ** 2 == pytest.approx(4.20e-5, rel=2e-3)
    assert s.beta[1] == pytest.approx(4.47e-3, rel=1e-3) and s.bar_beta[1] == pytest.approx(s.beta[1], rel=1e-12)
    assert s.beta[-1] == pytest.approx(math.sqrt(0.02), rel=1e-12) and abs(s.beta[-1] - 0.141) < 5e-4  # spec rounds
    assert (s.alpha[0], s.beta[0], s.bar_alpha[0], s.bar_beta[0]) == (1.0, 0.0, 1.0, 0.0)


def test_linear_and_cosine_schedules_against_their_definitions():
    lin = S.linear_schedule(1000)
    var = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(lin.bar_alpha[1:] ** 2, np.cumprod(1 - var), rtol=1e-10)
    assert lin.bar_alpha[-1] ** 2 == pytest.approx(4.04e-5, rel=1e-2)  # spec §11.4, Ho's schedule
    cos = S.cosine_schedule(1000)
    f = np.cos((np.arange(1001) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    # Exact wherever the 0.999 clip is inactive (all but the very last steps).
    np.testing.assert_allclose(cos.bar_alpha[:990] ** 2, f[:990] / f[0], rtol=1e-9)
    assert np.all(cos.beta[1:] ** 2 <= 0.999 + 1e-12)
    # The clip is active at t = T (1 − f(T)/f(T−1) = 1 − cos²(π/2)/… ≈ 1), and there only.
    assert cos.beta[-1] ** 2 == pytest.approx(0.999, rel=1e-12) and cos.beta[-2] ** 2 < 0.99


def test_vp_sigmas():
    s = S.article_schedule(1000)
    sig = S.vp_sigmas(s)
    np.testing.assert_allclose(sig[1:], np.sqrt(1 / s.bar_alpha[1:] ** 2 - 1), rtol=1e-9)
    assert sig[0] == 0.0 and np.all(np.diff(sig) > 0)


def test_edm_grid_is_linear_in_sigma_to_the_one_over_rho():
    g = S.edm_sigmas(18, 0.002, 80.0, 7.0)
    assert g[0] == 80.0 and g[-1] == 0.002 and np.all(np.diff(g) < 0)
    np.testing.assert_allclose(np.diff(g ** (1 / 7)), np.diff(g ** (1 / 7))[0], rtol=1e-9)
    g0 = S.edm_sigmas(5, append_zero=True)
    assert g0.shape == (6,) and g0[-1] == 0.0
    np.testing.assert_allclose(S.edm_sigmas(4, 1.0, 4.0, 1.0), [4.0, 3.0, 2.0, 1.0], rtol=1e-12)


def test_logsnr_and_time_uniform_grids():
    g = S.logsnr_sigmas(7, 0.01, 10.0)
    np.testing.assert_allclose(np.diff(np.log(g)), math.log(1e-3) / 6, rtol=1e-10)
    lo, hi, eps_s = 0.002, 80.0, 1e-3
    g = S.time_uniform_sigmas(9, lo, hi, rho=1.0)
    assert g[0] == hi and g[-1] == lo
    # Invert σ(τ) with the quadratic formula: the times must be uniform from 1 to ε_s.
    beta_d = 2 * (math.log1p(lo ** 2) / eps_s - math.log1p(hi ** 2)) / (eps_s - 1)
    beta_min = math.log1p(hi ** 2) - 0.5 * beta_d
    tau = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log1p(g ** 2)) - beta_min) / beta_d
    np.testing.assert_allclose(tau, np.linspace(1, eps_s, 9), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(S.sigma_grid("polynomial", 6), S.edm_sigmas(6), rtol=0)



def test_time_uniform_rho_2_is_karras_vp_and_grids_by_name():
    # Karras et al. 2022's VP-SDE: σ(τ) = √(exp(½β_d τ² + β_min τ) − 1), β_d = 19.9, β_min = 0.1, ε_s = 1e-3;
    # with its own endpoints the grid must recover those constants, at ρ = 2 (DEIS's) as at ρ = 1.
    vp = lambda tau: np.sqrt(np.expm1(0.5 * 19.9 * tau ** 2 + 0.1 * tau))
    eps_s = 1e-3
    lo, hi = float(vp(eps_s)), float(vp(1.0))
    for rho in (1.0, 2.0, 3.0):
        tau = (1 + np.arange(6) / 5 * (eps_s ** (1 / rho) - 1)) ** rho
        np.testing.assert_allclose(S.time_uniform_sigmas(6, lo, hi, rho=rho, epsilon_s=eps_s), vp(tau), rtol=1e-10)
    # sigma_grid dispatches by name with each grid's own default ρ
    np.testing.assert_array_equal(S.sigma_grid("logsnr", 7, lo, hi), S.logsnr_sigmas(7, lo, hi))
    np.testing.assert_array_equal(S.sigma_grid("time_uniform", 7, lo, hi), S.time_uniform_sigmas(7, lo, hi, 1.0))
    np.testing.assert_array_equal(S.sigma_grid("time_uniform", 7, lo, hi, 2.0),
                                  S.time_uniform_sigmas(7, lo, hi, 2.0))
    np.testing.assert_array_equal(S.sigma_grid("polynomial", 7, lo, hi, 3.0), S.edm_sigmas(7, lo, hi, 3.0))
    grids = [S.sigma_grid(k, 7, lo, hi) for k in ("polynomial", "logsnr", "time_uniform")]
    grids += [S.sigma_grid("time_uniform", 7, lo, hi, 2.0), S.edm_sigmas(7, lo, hi, 1.0)]
    assert all(np.max(np.abs(np.log(g) - np.log(h))) > 0.05 for i, g in enumerate(grids) for h in grids[i + 1:])

BAD = [
    (lambda: S.article_schedule(0), "`num_steps` must be a positive int; got 0"),
    (lambda: S.article_schedule(10, max_variance=1.5), "`max_variance` must be a float in (0, 1); got 1.5"),
    (lambda: S.linear_schedule(10, beta_end=0.0), "`beta_end` must be a float in (0, 1); got 0.0"),
    (lambda: S.cosine_schedule(10, s=-1.0), "`s` must be a float > 0; got -1.0"),
    (lambda: S.schedule_from_variances([0.1, 1.0]), "`variances` must be a non-empty 1-D array with values in (0, 1)"),
    (lambda: S.make_schedule("quadratic"), "`schedule` must be one of ['article', 'linear', 'cosine']; got 'quadratic'"),
    (lambda: S.edm_sigmas(1), "`n` must be an int >= 2; got 1"),
    (lambda: S.edm_sigmas(5, sigma_min=-1.0), "`sigma_min` must be a float > 0; got -1.0"),
    (lambda: S.edm_sigmas(5, sigma_min=2.0, sigma_max=1.0), "`sigma_max` must be > `sigma_min` (2.0); got 1.0"),
    (lambda: S.edm_sigmas(5, rho=0.0), "`rho` must be a float > 0; got 0.0"),
    (lambda: S.time_uniform_sigmas(5, epsilon_s=2.0), "`epsilon_s` must be a float in (0, 1); got 2.0"),
    (lambda: S.sigma_grid("karras", 5), "`kind` must be one of ['polynomial', 'logsnr', 'time_uniform']; got 'karras'"),
]


@pytest.mark.parametrize("fn,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs(fn, message):
    with pytest.raises(ValueError) as e:
        fn()
    assert message in str(e.value)
