"""AFS with the data mean (`afs_mean`, ours): the analytical first slope (x − μ)/√(1 + σ²).

The paper's AFS d = x/√(1 + σ²) is the σ → ∞ limit of the exact slope for zero-mean data. For data of mean μ
the exact slope is (x − D)/σ with D → μ, so the paper's slope is off by μ/√(1 + σ²); with `afs_mean=μ` it is
the same limit as for zero-mean data. Proven here: the closed form on shifted Gaussian data, and in every
sampler with `afs`, the identity "AFS with mean μ = one denoiser call that returns the analytic D".
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax import samplers as S
from tests.helpers import BACKEND_COMPILES


def _shifted(d=16, rows=8, seed=0):
    rng = np.random.default_rng(seed)
    mu = jnp.asarray(rng.uniform(-0.9, 0.9, d))
    return mu, jnp.asarray(rng.standard_normal((rows, d)))


def test_afs_mean_is_the_exact_slope_limit_for_shifted_unit_gaussian_data():
    # N(μ, I): exact d = (x − μ)·σ/(1 + σ²), so (x − μ)/√(1 + σ²) is off by the factor √(1 + σ⁻²) exactly,
    # whatever μ; the paper's x/√(1 + σ²) is off by μ/√(1 + σ²) on top.
    with jax.enable_x64(True):
        mu, z = _shifted()
        den = S.gaussian_denoiser(mu, 1.0)
        for sigma in (10.0, 80.0, 1000.0):
            x = mu[None] + sigma * z
            exact = (x - den(x, sigma)) / sigma
            ours = S.afs_direction(x, sigma, mu[None])
            np.testing.assert_allclose(ours / exact, np.sqrt(1 + sigma ** -2), rtol=1e-12)
            paper = S.afs_direction(x, sigma)
            np.testing.assert_allclose(paper - ours, jnp.broadcast_to(mu / np.sqrt(1 + sigma ** 2), x.shape),
                                       rtol=1e-12, atol=1e-15)  # a difference of two O(1) float64 slopes
            if sigma == 80.0:  # at the EDM σ_max: |μ|/σ ≈ 1e-2 against |z|/(2σ²) ≈ 2e-4 (max over 128 z's)
                assert float(jnp.max(jnp.abs(paper - exact))) > 30 * float(jnp.max(jnp.abs(ours - exact)))


def _patched(den, sigma0, mu):
    """den, except at σ = σ₀ where it returns the D that makes (x − D)/σ the AFS slope with mean μ."""
    def f(x, sigma):
        s = jnp.asarray(sigma, x.dtype)
        s_b = s.reshape((-1,) + (1,) * (x.ndim - 1)) if s.ndim else s
        analytic = x - s_b * (x - mu[None]) / jnp.sqrt(1 + s_b ** 2)
        return jnp.where(s_b == sigma0, analytic, den(x, sigma))
    return f


def _samplers(n):
    fixed = (np.full(n, 0.5), np.ones(n), np.ones(n))
    learned_like = (np.linspace(0.3, 0.7, n), np.full(n, 1.01), np.full(n, 0.9))
    return {
        "euler": (S.sample_euler, {}),
        "heun": (S.sample_heun, {}),
        "dpm_solver_2": (S.sample_dpm_solver_2, {}),
        "ipndm": (S.sample_ipndm, {}),
        "dpm_solver_pp_3m": (S.sample_dpm_solver_pp, {"order": 3}),
        "deis": (S.sample_deis, {}),
        "unipc_bh1": (S.sample_unipc, {"variant": "bh1"}),
        "unipc_bh2": (S.sample_unipc, {"variant": "bh2"}),
        "amed": (S.sample_amed, {"predictor": learned_like}),
        "amed_plugin_ipndm": (S.sample_amed_plugin, {"predictor": learned_like}),
        "amed_plugin_dpmpp": (S.sample_amed_plugin, {"predictor": fixed, "base": "dpm_solver_pp"}),
    }


@pytest.mark.parametrize("name", list(_samplers(1)))
def test_afs_mean_equals_an_analytic_first_denoiser_call(name):
    with jax.enable_x64(True):
        mu, z = _shifted(d=8, rows=4)
        sig = S.edm_sigmas(5)
        x_T = sig[0] * z
        den = S.mixture_denoiser(jnp.stack([mu - 0.3, mu + 0.5]), 0.2)
        fn, opts = _samplers(len(sig) - 1)[name]
        got = fn(den, x_T, sig, afs=True, afs_mean=mu, **opts)
        want = fn(_patched(den, sig[0], mu), x_T, sig, afs=False, **opts)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        # the paper's AFS is afs_mean = 0 (bit for bit) and differs from the mean-corrected one
        np.testing.assert_array_equal(fn(den, x_T, sig, afs=True, afs_mean=0.0, **opts),
                                      fn(den, x_T, sig, afs=True, **opts))
        assert float(jnp.max(jnp.abs(fn(den, x_T, sig, afs=True, **opts) - got))) > 1e-4
        assert S.nfe(fn, sig, afs=True, afs_mean=mu, **opts) == S.nfe(fn, sig, afs=False, **opts) - 1


def test_afs_mean_shrinks_the_first_step_error_on_shifted_gaussian_data():
    # N(μ, s²I) with |μ| ~ 0.7 (like mnist in [−1, 1]): iPNDM on 5 steps against the exact flow.
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        mu = jnp.asarray(rng.uniform(-0.9, -0.5, 32))
        den = S.gaussian_denoiser(mu, 0.5)
        x_T = 80.0 * jnp.asarray(rng.standard_normal((256, 32)))
        sig = S.edm_sigmas(6)
        exact = S.gaussian_ode_solution(x_T, mu, 0.5, 80.0, float(sig[-1]))
        err = lambda y: float(jnp.sqrt(jnp.mean((y - exact) ** 2)))  # noqa: E731
        paper = err(S.sample_ipndm(den, x_T, sig, afs=True))
        ours = err(S.sample_ipndm(den, x_T, sig, afs=True, afs_mean=mu))
        no_afs = err(S.sample_ipndm(den, x_T, sig))
    assert ours < 0.1 * paper, (ours, paper, no_afs)  # measured 0.0068 vs 0.18
    assert ours < 1.2 * no_afs, (ours, paper, no_afs)  # measured 0.0068 vs 0.0076 without AFS


def test_distillation_loss_with_afs_mean_is_the_loss_with_the_analytic_call():
    with jax.enable_x64(True):
        mu, z = _shifted(d=8, rows=4)
        sig = S.edm_sigmas(4)
        x_T = sig[0] * z
        den = S.mixture_denoiser(jnp.stack([mu - 0.3, mu + 0.5]), 0.2)
        target = jnp.zeros_like(x_T)
        fixed = (np.full(3, 0.4), np.full(3, 1.005), np.full(3, 0.95))
        for student in ("amed", "ipndm", "dpm_solver_pp"):
            opts = dict(step=0, student=student, num_steps=None if student == "amed" else 3)
            got, _ = S.amed_distillation_loss(fixed, den, x_T, target, sig[0], sig[1], first_afs=True,
                                              afs_mean=mu, **opts)
            want, _ = S.amed_distillation_loss(fixed, _patched(den, sig[0], mu), x_T, target, sig[0], sig[1],
                                               **opts)
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=student)


BAD = [
    ("without afs", dict(afs=False, afs_mean=0.5), "`afs_mean` is the data mean used by the analytical first step; "
                                                   "it needs afs=True"),
    ("wrong shape", dict(afs=True, afs_mean=np.zeros(4)), "`afs_mean` must be a number or an array broadcastable "
                                                          "to one example's shape (3,); got shape (4,)"),
    ("batch shape", dict(afs=True, afs_mean=np.zeros((2, 3))), "got shape (2, 3)"),
    ("nan", dict(afs=True, afs_mean=np.array([0.0, np.nan, 0.0])), "`afs_mean` must hold finite real numbers"),
    ("bool", dict(afs=True, afs_mean=True), "`afs_mean` must be None, a number or an array"),
]


@pytest.mark.parametrize("name", list(_samplers(1)))
@pytest.mark.parametrize("case,kwargs,message", BAD, ids=[b[0] for b in BAD])
def test_bad_afs_mean_is_rejected_before_compiling(name, case, kwargs, message):
    sig = S.edm_sigmas(5)
    fn, opts = _samplers(len(sig) - 1)[name]
    den = S.gaussian_denoiser(jnp.zeros(()), 1.0)
    x = jnp.ones((2, 3))
    BACKEND_COMPILES.clear()
    with pytest.raises(ValueError) as err:
        fn(den, x, sig, **kwargs, **opts)
    assert message in str(err.value)
    assert not BACKEND_COMPILES, "compiled before rejecting the input"


def test_train_amed_predictor_checks_afs_mean_first():
    from flax import nnx
    pred = S.AMEDPredictor(0, rngs=nnx.Rngs(0))
    den = S.gaussian_denoiser(jnp.zeros(()), 1.0)
    with pytest.raises(ValueError, match="`afs_mean` must be a number or an array broadcastable"):
        S.train_amed_predictor(pred, den, S.edm_sigmas(4), lambda k: jnp.ones((2, 3)), key=jax.random.key(0),
                               num_batches=1, afs_mean=np.zeros(5))
