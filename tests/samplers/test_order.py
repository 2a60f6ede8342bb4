"""Order of accuracy on Gaussian data N(μ, s²I), where D(x, σ) and the PF-ODE flow are closed form.

Each sampler's RMSE to the exact x(σ_min) is measured at N = 64, 128, 256 steps of a log-SNR grid (uniform
in log σ, 80 → 0.002) and the fitted log-log slope must be within ±0.5 of the module's ORDER. A wrong
coefficient in any step formula drops the slope to 1 (or 0); float64 throughout.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax import samplers as S
from kexue_jax.samplers import amed, deis, dpm_solver, euler, heun, ipndm, unipc

STEPS = (64, 128, 256)
CASES = {
    "euler": (S.sample_euler, {}, euler.ORDER),
    "heun": (S.sample_heun, {}, heun.ORDER),
    "dpm_solver_2": (S.sample_dpm_solver_2, {}, dpm_solver.ORDER["dpm_solver_2"]),
    "dpm_solver_pp_2m": (S.sample_dpm_solver_pp, {"order": 2}, dpm_solver.ORDER["dpm_solver_pp_2m"]),
    "dpm_solver_pp_3m": (S.sample_dpm_solver_pp, {"order": 3}, dpm_solver.ORDER["dpm_solver_pp_3m"]),
    "ipndm": (S.sample_ipndm, {}, ipndm.ORDER),
    "deis": (S.sample_deis, {}, deis.ORDER),
    "unipc": (S.sample_unipc, {}, unipc.ORDER),
    "amed_midpoint": (S.sample_amed, {"afs": False}, amed.ORDER),
}


def _problem():
    rng = np.random.default_rng(0)
    mu = jnp.asarray(0.5 * rng.standard_normal(8))
    x_T = jnp.asarray(80.0 * rng.standard_normal((16, 8)))
    return mu, 0.5, x_T


@pytest.fixture(scope="module")
def errors():
    out = {}
    with jax.enable_x64(True):
        mu, s, x_T = _problem()
        den = S.gaussian_denoiser(mu, s)
        exact = S.gaussian_ode_solution(x_T, mu, s, 80.0, 0.002)
        for name, (fn, opts, _) in CASES.items():
            errs = []
            for n in STEPS:
                sig = S.logsnr_sigmas(n + 1)
                if fn is S.sample_amed:  # r = ½, c = a = 1: the geometric midpoint
                    opts = dict(opts, predictor=(np.full(n, 0.5), np.ones(n), np.ones(n)))
                errs.append(float(jnp.sqrt(jnp.mean((fn(den, x_T, sig, **opts) - exact) ** 2))))
            out[name] = np.array(errs)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_slope_matches_declared_order(errors, name):
    slope = -np.polyfit(np.log(STEPS), np.log(errors[name]), 1)[0]
    assert abs(slope - CASES[name][2]) <= 0.5, (name, slope, errors[name])


def test_third_order_formula_beats_second_order_constant(errors):
    # 3M's global rate is 2 (first-order warm start), but its formula must still cut the error vs 2M.
    assert np.all(errors["dpm_solver_pp_3m"] < 0.5 * errors["dpm_solver_pp_2m"])


def test_ddim_1000_steps_matches_exact_trajectory():
    with jax.enable_x64(True):
        mu, s, x_T = _problem()
        den = S.gaussian_denoiser(mu, s)
        sig = S.edm_sigmas(1001)
        # Walk the trajectory in 10 chunks of 100 steps to compare intermediate points too.
        x, worst = x_T, 0.0
        for k in range(10):
            part = sig[100 * k: 100 * k + 101]
            x = S.sample_ddim(den, x, part)
            ref = S.gaussian_ode_solution(x_T, mu, s, sig[0], part[-1])
            worst = max(worst, float(jnp.max(jnp.abs(x - ref)) / (jnp.max(jnp.abs(ref)) + 1e-12)))
        final = float(jnp.sqrt(jnp.mean((x - S.gaussian_ode_solution(x_T, mu, s, 80.0, 0.002)) ** 2)))
    assert worst < 5e-3, worst
    assert final < 2e-3, final


def _blog_sigmas(T=1000):
    t = np.arange(1, T + 1)
    alpha = np.sqrt(1 - 0.02 * t / T)  # the blog's α_t (a standard deviation)
    bar_alpha = np.cumprod(alpha)
    bar_beta = np.sqrt(1 - bar_alpha ** 2)
    return np.concatenate([(bar_beta / bar_alpha)[::-1], [0.0]]), bar_alpha[-1]


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_1000_steps_returns_data_std(variance):
    # Spec §11.4: 1-D data N(0, s²), exact ε-predictor, std within 1% for both σ_t choices.
    sig, bar_alpha_T = _blog_sigmas()
    s = jnp.array([[0.5, 1.0, 2.0]])  # three independent 1-D problems, one per column

    def den(x, sigma):  # exact D for N(0, s²) per column
        return s ** 2 * x / (s ** 2 + jnp.reshape(sigma, (-1, 1)) ** 2)

    z = jax.random.normal(jax.random.key(1), (40_000, 3))  # std s.e. 0.35% per column
    out = S.sample_ddpm(den, z / bar_alpha_T, sig, key=jax.random.key(2), variance=variance)
    ratio = np.asarray(jnp.std(out, axis=0) / s[0])
    assert np.all(np.abs(ratio - 1) < 0.01), (variance, ratio)
