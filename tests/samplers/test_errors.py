"""The bad-input table: every public sampler validates eagerly with a specific message."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax import samplers as S

DEN = S.gaussian_denoiser(jnp.zeros(()), 1.0)
X = jnp.ones((2, 3))
GOOD = S.edm_sigmas(5)
FIXED = (np.full(4, 0.5), np.ones(4), np.ones(4))

CASES = [
    ("increasing sigmas", lambda: S.sample_euler(DEN, X, GOOD[::-1]), "`sigmas` must be strictly decreasing"),
    ("2-D sigmas", lambda: S.sample_heun(DEN, X, GOOD[None]), "`sigmas` must be 1-D"),
    ("NFE below minimum", lambda: S.sample_dpm_solver_pp(DEN, X, GOOD[:1]), "at least 2 points"),
    ("negative sigma", lambda: S.sample_ipndm(DEN, X, np.array([1.0, -0.5])), "`sigmas` must be positive"),
    ("nan sigma", lambda: S.sample_unipc(DEN, X, np.array([1.0, np.nan])), "`sigmas` must be finite"),
    ("AMED into zero", lambda: S.sample_amed(DEN, X, np.array([2.0, 1.0, 0.0]), predictor=FIXED),
     "its last point may not be 0"),
    ("unknown ddpm variance", lambda: S.sample_ddpm(DEN, X, GOOD, key=jax.random.key(0), variance="fixed"),
     "`variance` must be one of ('beta', 'posterior')"),
    ("ddpm without key", lambda: S.sample_ddpm(DEN, X, GOOD), "`key` must be a jax.random key"),
    ("churn without key", lambda: S.sample_heun(DEN, X, GOOD, s_churn=1.0), "`key` must be a jax.random key"),
    ("bad key batch", lambda: S.sample_ddpm(DEN, X, GOOD, key=jax.random.split(jax.random.key(0), 3)),
     "`key` must be one key or a batch of 2 keys"),
    ("dpm++ order 4", lambda: S.sample_dpm_solver_pp(DEN, X, GOOD, order=4), "`order` must be an integer in [1, 3]"),
    ("ipndm order 5", lambda: S.sample_ipndm(DEN, X, GOOD, max_order=5), "`max_order` must be an integer in [1, 4]"),
    ("unipc variant", lambda: S.sample_unipc(DEN, X, GOOD, variant="bh3"), "`variant` must be one of ('bh1', 'bh2')"),
    ("deis interpolation", lambda: S.sample_deis(DEN, X, GOOD, interpolation="log"),
     "`interpolation` must be one of ('vp_time', 'sigma')"),
    ("dpm2 r", lambda: S.sample_dpm_solver_2(DEN, X, GOOD, r=0.0), "`r` must be in (0, 1]"),
    ("negative churn", lambda: S.sample_heun(DEN, X, GOOD, s_churn=-1.0), "`s_churn` must be a finite number"),
    ("scalar x_T", lambda: S.sample_euler(DEN, jnp.ones(()), GOOD), "`x_T` must be an array [b, ...]"),
    ("integer x_T", lambda: S.sample_euler(DEN, jnp.ones((2, 3), jnp.int32), GOOD), "`x_T` must have a floating"),
    ("predictor not callable", lambda: S.sample_amed(DEN, X, GOOD, predictor=3), "`predictor` must be callable"),
    ("plugin base", lambda: S.sample_amed_plugin(DEN, X, GOOD, predictor=FIXED, base="unipc"),
     "`base` must be one of ('ipndm', 'dpm_solver_pp')"),
    ("has_aux mismatch", lambda: S.sample_amed(DEN, X, GOOD, predictor=FIXED, has_aux=True),
     "`denoise_fn` must return (x0 [b, ...], features [b, f])"),
    ("predictor scale_dir", lambda: S.AMEDPredictor(4, scale_dir=1.5, rngs=nnx.Rngs(0)), "`scale_dir` must be in [0, 1)"),
    ("predictor channels", lambda: S.AMEDPredictor(4, noise_channels=5, rngs=nnx.Rngs(0)),
     "`noise_channels` must be an even integer >= 4"),
    ("grid n", lambda: S.edm_sigmas(1), "`n` must be an int >= 2; got 1"),
    ("grid range", lambda: S.logsnr_sigmas(5, 1.0, 0.5), "`sigma_max` must be > `sigma_min` (1.0); got 0.5"),
    ("grid rho", lambda: S.edm_sigmas(5, rho=0.0), "`rho` must be a float > 0; got 0.0"),
    ("nfe of non-sampler", lambda: S.nfe(print, GOOD), "`sampler` must be one of the kexue_jax.samplers"),
    ("traced sigmas", lambda: jax.jit(lambda s: S.sample_euler(DEN, X, s))(jnp.asarray(GOOD)),
     "`sigmas` must be a concrete (static) array"),
    ("train lr", lambda: S.train_amed_predictor(S.AMEDPredictor(0, rngs=nnx.Rngs(0)), DEN, GOOD, lambda k: X,
                                                key=jax.random.key(0), num_batches=1, learning_rate=0.0),
     "`learning_rate` must be a positive number"),
    ("train teacher", lambda: S.train_amed_predictor(S.AMEDPredictor(0, rngs=nnx.Rngs(0)), DEN, GOOD, lambda k: X,
                                                     key=jax.random.key(0), num_batches=1, teacher="dpm"),
     "`teacher` must be one of ('heun', 'ipndm')"),
]


@pytest.mark.parametrize("name,call,message", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs(name, call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value), str(err.value)


def test_nfe_counts():
    sig0 = np.concatenate([GOOD, [0.0]])  # 5 steps, the last into 0
    assert S.nfe(S.sample_euler, GOOD) == 4
    assert S.nfe(S.sample_heun, sig0) == 9  # EDM: 2N − 1
    assert S.nfe(S.sample_heun, GOOD, afs=True) == 7
    assert S.nfe(S.sample_dpm_solver_2, sig0) == 9
    assert S.nfe(S.sample_dpm_solver_pp, sig0, order=3) == 5
    assert S.nfe(S.sample_ipndm, GOOD, afs=True) == 3
    assert S.nfe(S.sample_unipc, GOOD) == S.nfe(S.sample_deis, GOOD) == S.nfe(S.sample_ddpm, GOOD) == 4
    assert S.nfe(S.sample_amed, GOOD) == 7  # AFS on by default
    assert S.nfe(S.sample_amed, GOOD, afs=False, denoise_to_zero=True) == 9
