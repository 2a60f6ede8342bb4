"""Same key, same samples whatever the batch; jit/vmap consistency; no retrace on new inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax import samplers as S

MU = jnp.linspace(-1.0, 1.0, 6)
DEN = S.gaussian_denoiser(MU, 0.5)
SIG = np.concatenate([S.edm_sigmas(6, 0.01, 20.0), [0.0]])
STOCHASTIC = {
    "ddpm_beta": lambda x, key: S.sample_ddpm(DEN, x, SIG, key=key, variance="beta"),
    "heun_churn": lambda x, key: S.sample_heun(DEN, x, SIG, key=key, s_churn=10.0),
}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_same_key_same_sample_whatever_the_batch(name):
    fn = STOCHASTIC[name]
    x = 20.0 * jax.random.normal(jax.random.key(0), (8, 6))
    key = jax.random.key(42)
    full = fn(x, key)
    np.testing.assert_allclose(fn(x[:3], key), full[:3], rtol=1e-6, atol=1e-6)
    keys = jax.random.split(jax.random.key(7), 8)
    per_row = fn(x, keys)
    perm = np.array([5, 2, 7, 0])
    np.testing.assert_allclose(fn(x[perm], keys[perm]), per_row[perm], rtol=1e-6, atol=1e-6)
    assert np.min(np.abs(np.asarray(per_row - full))) > 0  # other keys, other noise: the key matters


def test_jit_vmap_and_no_retrace():
    traces = []

    def den(x, sigma):
        traces.append(1)
        return DEN(x, sigma)

    run = jax.jit(lambda x: S.sample_dpm_solver_pp(den, x, SIG, order=3))
    x = 20.0 * jax.random.normal(jax.random.key(1), (4, 6))
    out = run(x)
    n = len(traces)
    run(x + 1.0)
    assert len(traces) == n  # no retrace on new values
    np.testing.assert_allclose(out, S.sample_dpm_solver_pp(DEN, x, SIG, order=3), rtol=1e-5, atol=1e-5)
    # vmap over an extra leading axis: each slice is an independent batch.
    xs = jnp.stack([x, 2 * x])
    vm = jax.vmap(lambda y: S.sample_unipc(DEN, y, SIG))(xs)
    np.testing.assert_allclose(vm[1], S.sample_unipc(DEN, 2 * x, SIG), rtol=1e-5, atol=1e-5)
