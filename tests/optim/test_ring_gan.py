"""Ring-of-Gaussians GAN (https://kexue.fm/archives/6583, spec §4.6): metrics, the zero-centred penalty,
the non-saturating losses, config errors, and the data-parallel runner (8 simulated devices = 1)."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from kexue_jax.core import sharding
from kexue_jax.optim import ring_gan as rg
from tests.helpers import run_python

CENTRES = rg.ring_centres(8, 2.0)
STD = 0.05


def _config(**kw):
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "optim", "ring_gan.py")
  spec = importlib.util.spec_from_file_location("ring_gan_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke")
  c.update(kw)
  return c


def _brute_force_stats(x, centres, std):
  counts, good = [0] * len(centres), 0
  for p in x:
    d = [float(np.hypot(*(p - c))) for c in centres]
    k = int(np.argmin(d))
    if d[k] <= 3 * std:
      good += 1
      counts[k] += 1
  return sum(n / len(x) > 0.01 for n in counts), good / len(x)


def test_ring_centres_are_on_the_circle_and_match_the_8gaussians_layout():
  from kexue_jax.data import toy
  np.testing.assert_allclose(np.linalg.norm(CENTRES, axis=1), 2.0, rtol=1e-12)
  np.testing.assert_allclose(rg.ring_centres(8, 4 / 1.414), toy.eight_gaussian_centres(), atol=1e-12)
  x = rg.sample_ring(20000, num_modes=8, radius=2.0, std=STD, seed=0)
  # Per-coordinate std of the points about their nearest centre (modes are 0.77 apart, 15σ).
  near = CENTRES[np.argmin(np.linalg.norm(x[:, None] - CENTRES[None], axis=-1), axis=1)]
  assert np.std(x - near) == pytest.approx(STD, rel=0.02)


def test_mode_statistics_closed_cases():
  at_modes = np.repeat(CENTRES, 10, axis=0)
  s = rg.mode_statistics(at_modes, CENTRES, STD)
  assert s == {"mode_coverage": 8.0, "high_quality_fraction": 1.0, "mode_fraction_min": 0.125}
  one = np.repeat(CENTRES[3:4], 50, axis=0) + 2.9 * STD / np.sqrt(2)  # inside 3σ, off-centre
  s = rg.mode_statistics(one, CENTRES, STD)
  assert s["mode_coverage"] == 1.0 and s["high_quality_fraction"] == 1.0 and s["mode_fraction_min"] == 0.0
  origin = np.zeros((40, 2))
  assert rg.mode_statistics(origin, CENTRES, STD)["mode_coverage"] == 0.0
  assert rg.mode_statistics(origin, CENTRES, STD)["high_quality_fraction"] == 0.0
  # Just outside 3σ is not high quality.
  out = np.repeat(CENTRES[:1], 10, axis=0) + np.array([3.01 * STD, 0.0])
  assert rg.mode_statistics(out, CENTRES, STD)["high_quality_fraction"] == 0.0


def test_mode_coverage_needs_more_than_one_percent():
  # 1000 samples: 10 at mode 5 (exactly 1%) do not cover it, 11 do.
  for extra, covered in ((10, 1.0), (11, 2.0)):
    x = np.concatenate([np.repeat(CENTRES[:1], 1000 - extra, axis=0), np.repeat(CENTRES[5:6], extra, axis=0)])
    assert rg.mode_statistics(x, CENTRES, STD)["mode_coverage"] == covered


def test_mode_statistics_equal_brute_force_on_random_samples():
  rng = np.random.default_rng(0)
  k = rng.integers(0, 3, size=300)  # three modes only, with spread around 3σ and outliers
  x = CENTRES[k] + rng.normal(size=(300, 2)) * STD * rng.uniform(0.5, 3.0, size=(300, 1))
  x = np.concatenate([x, rng.uniform(-2.5, 2.5, size=(100, 2))])
  s = rg.mode_statistics(x, CENTRES, STD)
  cov, hq = _brute_force_stats(x, CENTRES, STD)
  assert s["mode_coverage"] == cov and s["high_quality_fraction"] == pytest.approx(hq, abs=1e-12)
  assert 0.0 < hq < 1.0 and cov >= 3


def test_energy_distance_direct_formula_zero_and_scipy():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(40, 2)), rng.normal(size=(30, 2)) + 0.5
  pair = lambda a, b: np.mean([[np.linalg.norm(p - q) for q in b] for p in a])  # noqa: E731
  direct = 2 * pair(x, y) - pair(x, x) - pair(y, y)
  assert rg.energy_distance(x, y) == pytest.approx(direct, rel=1e-12)
  assert rg.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
  assert rg.energy_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)
  a, b = rng.normal(size=(50, 1)), rng.exponential(size=(60, 1))
  assert rg.energy_distance(a, b) == pytest.approx(scipy.stats.energy_distance(a[:, 0], b[:, 0]) ** 2, rel=1e-10)


def _tanh_d(params, x):
  """D(x) = a·tanh(W x + c), a hand-written one-hidden-layer critic: x [b, 2] -> [b]."""
  return jnp.tanh(x @ params["W"] + params["c"][None, :]) @ params["a"]


def test_zero_centred_penalty_closed_forms():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(17, 2)))
    # Linear D(x) = w·x + b: ∇_x D = w everywhere, so the penalty is ‖w‖² and its gradient in w is 2w.
    w = jnp.asarray([0.7, -1.3])
    lin = lambda p, xx: xx @ p["w"] + p["b"]  # noqa: E731
    p_lin = {"w": w, "b": jnp.asarray(0.4)}
    assert float(rg.zero_centred_gradient_penalty(lin, p_lin, x)) == pytest.approx(0.49 + 1.69, rel=1e-14)
    g = jax.grad(lambda p: rg.zero_centred_gradient_penalty(lin, p, x))(p_lin)
    np.testing.assert_allclose(g["w"], 2 * np.asarray(w), rtol=1e-14)
    assert float(g["b"]) == 0.0
    # tanh critic: ∇_x D(x) = W (a ⊙ (1 − tanh²(Wᵀx + c))) in closed form.
    p = {"W": jnp.asarray(rng.normal(size=(2, 5))), "c": jnp.asarray(rng.normal(size=5)),
         "a": jnp.asarray(rng.normal(size=5))}
    t = np.tanh(np.asarray(x) @ np.asarray(p["W"]) + np.asarray(p["c"]))
    grads = (np.asarray(p["a"]) * (1 - t ** 2)) @ np.asarray(p["W"]).T  # [b, 2]
    closed = np.mean(np.sum(grads ** 2, axis=1))
    assert float(rg.zero_centred_gradient_penalty(_tanh_d, p, x)) == pytest.approx(closed, rel=1e-12)
    # Its parameter gradient (double backprop) against central differences.
    pen = lambda a: float(rg.zero_centred_gradient_penalty(_tanh_d, {**p, "a": a}, x))  # noqa: E731
    ga = jax.grad(lambda pp: rg.zero_centred_gradient_penalty(_tanh_d, pp, x))(p)["a"]
    eps = 1e-6
    fd = [(pen(p["a"].at[i].add(eps)) - pen(p["a"].at[i].add(-eps))) / (2 * eps) for i in range(5)]
    np.testing.assert_allclose(ga, fd, rtol=1e-6)


def test_penalty_of_the_mlp_critic_equals_per_sample_autodiff():
  with jax.enable_x64(True):
    d = rg.init_mlp(jax.random.key(0), (2, 8, 8, 1))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(9, 2)))
    per = jax.vmap(jax.grad(lambda xi: rg.mlp(d, xi[None])[0, 0]))(x)
    got = rg.zero_centred_gradient_penalty(lambda p, xx: rg.mlp(p, xx)[:, 0], d, x)
    assert float(got) == pytest.approx(float(jnp.mean(jnp.sum(per ** 2, axis=1))), rel=1e-12)


def test_non_saturating_losses_equal_numpy():
  with jax.enable_x64(True):
    d = rg.init_mlp(jax.random.key(1), (2, 8, 8, 1))
    g = rg.init_mlp(jax.random.key(2), (4, 8, 8, 2))
    rng = np.random.default_rng(4)
    x, z = jnp.asarray(rng.normal(size=(6, 2))), jnp.asarray(rng.normal(size=(6, 4)))

    def np_mlp(params, h):
      for i, layer in enumerate(params):
        h = h @ np.asarray(layer["w"]) + np.asarray(layer["b"])
        h = np.maximum(h, 0) if i < len(params) - 1 else h
      return h

    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    dr, df = np_mlp(d, np.asarray(x))[:, 0], np_mlp(d, np_mlp(g, np.asarray(z)))[:, 0]
    ld, lg, parts = rg.gan_losses(d, g, x, z, zero_gp=0.3)
    want_d = -np.mean(np.log(sig(dr))) - np.mean(np.log(1 - sig(df))) + 0.3 * float(parts["grad_penalty"])
    assert float(ld) == pytest.approx(want_d, rel=1e-12)
    assert float(lg) == pytest.approx(-np.mean(np.log(sig(df))), rel=1e-12)


@pytest.mark.parametrize("kw, message", [
    (dict(data="moons"), "`data` must be one of ('8gaussians', 'ring'); got 'moons'"),
    (dict(scheme="optimistic"), "`scheme` must be one of ('simultaneous', 'alternating'); got 'optimistic'"),
    (dict(regularisers=["none", "r2"]), "`regularisers entry` must be one of ('none', 'zero_gp', 'l2'); got 'r2'"),
    (dict(batch_size=0), "`batch_size` must be a positive int; got 0"),
    (dict(zero_gp=-1.0), "`zero_gp` must be a finite number >= 0.0; got -1.0"),
    (dict(ema_decay=1.0), "`ema_decay` must be a finite number >= 0.0 and < 1.0; got 1.0"),
    (dict(d_learning_rate=0.0), "`d_learning_rate` must be a finite number > 0.0; got 0.0"),
    (dict(std=-0.1), "`std` must be a finite number > 0.0; got -0.1"),
])
def test_bad_config_is_rejected_before_training(tmp_path, kw, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    rg.run(_config(**kw), str(tmp_path))


RUN = """
import json, sys
import jax
sys.path.insert(0, {repo!r})
from tests.optim.test_ring_gan import _config
from kexue_jax.optim import ring_gan as rg
c = _config(num_steps=4, batch_size=32, regularisers=["zero_gp"])
assert jax.device_count() == {devices}
rg.run(c, {workdir!r})
"""


@pytest.mark.multidevice
def test_eight_devices_give_the_losses_of_one(tmp_path):
  """The smoke runner (Adam, 4 steps, batch 32 split 8 ways, the zero-GP training: double backprop). The batch means are
  reduced in another order on 8 devices, so f32 values may differ in the last bits: rtol 1e-5 for the
  per-step losses and the penalty, 1e-4 for the sample metrics computed from the final generators."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  rows, res = {}, {}
  for n in (1, 8):
    workdir = str(tmp_path / f"d{n}")
    run_python(RUN.format(repo=repo, devices=n, workdir=workdir), devices=n)
    rows[n] = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    res[n] = json.load(open(os.path.join(workdir, "results.json")))
  assert len(rows[1]) == len(rows[8]) == 4
  for a, b in zip(rows[1], rows[8]):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=k)
  losses = [r["zero_gp/seed0/loss_d"] for r in rows[1] if "zero_gp/seed0/loss_d" in r]
  assert len(losses) == 4 and losses[0] != losses[-1]  # it trains
  for k in ("zero_gp/ema/energy_distance", "zero_gp/raw/energy_distance", "zero_gp/final_loss_g"):
    np.testing.assert_allclose(res[8][k], res[1][k], rtol=1e-4, err_msg=k)


# ------------------------------------------------------- the training step against losses written here

def _ref_mlp(params, h):
  """ReLU MLP written here (not `rg.mlp`): h [b, in] -> [b, out], no activation on the last layer."""
  for i, layer in enumerate(params):
    h = h @ layer["w"] + layer["b"][None, :]
    if i < len(params) - 1:
      h = jnp.maximum(h, 0.0)
  return h


def _ref_r1(d, x):
  """E‖∇_x D(x_i)‖² from one jax.grad per sample (vmap), at the points x given."""
  per = jax.vmap(jax.grad(lambda xi: _ref_mlp(d, xi[None])[0, 0]))(x)  # [b, 2]
  return jnp.mean(jnp.sum(jnp.square(per), axis=1))


def _ref_losses(d, g, x, z, zero_gp=0.0, l2=0.0):
  """(L_D, L_G) of the module docstring, written here: softplus(t) = log(1 + eᵗ); the zero-centred penalty at
  the REAL points; L2 on D as the loss term (l2/2)‖φ‖² (its gradient l2·φ is what add_decayed_weights adds)."""
  d_real, d_fake = _ref_mlp(d, x)[:, 0], _ref_mlp(d, _ref_mlp(g, z))[:, 0]
  sq = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(d))
  loss_d = (jnp.mean(jnp.logaddexp(0.0, -d_real)) + jnp.mean(jnp.logaddexp(0.0, d_fake))
            + zero_gp * _ref_r1(d, x) + 0.5 * l2 * sq)
  return loss_d, jnp.mean(jnp.logaddexp(0.0, -d_fake))


def _batch(n=16, z_dim=3, seed=5):
  rng = np.random.default_rng(seed)
  return (rg.sample_ring(n, num_modes=8, radius=2.0, std=0.3, seed=seed).astype(np.float64),
          rng.standard_normal((n, z_dim)))


def test_gan_losses_take_the_penalty_at_the_real_points():
  """parts['grad_penalty'] and L_D against the per-sample jax.grad of the D written here at x_real (not at G(z));
  the penalty at the fake points is checked to differ, so the comparison can tell the two apart."""
  with jax.enable_x64(True):
    d = rg.init_mlp(jax.random.key(1), (2, 8, 8, 1))
    g = rg.init_mlp(jax.random.key(2), (3, 8, 8, 2))
    x, z = (jnp.asarray(a) for a in _batch())
    ld, lg, parts = rg.gan_losses(d, g, x, z, zero_gp=0.3)
    at_real, at_fake = float(_ref_r1(d, x)), float(_ref_r1(d, _ref_mlp(g, z)))
    assert abs(at_real - at_fake) > 1e-2 * at_real
    assert float(parts["grad_penalty"]) == pytest.approx(at_real, rel=1e-6)
    want_d, want_g = _ref_losses(d, g, x, z, zero_gp=0.3)
    assert float(ld) == pytest.approx(float(want_d), rel=1e-6)
    assert float(lg) == pytest.approx(float(want_g), rel=1e-6)


def _sgd_train_step(monkeypatch, regulariser, **kw):
  """`rg.make_train_step` with optax.adam replaced by optax.sgd at the same learning rate, so one step moves
  each player by exactly −lr·(its gradient); float64 when called inside enable_x64; 1 device."""
  monkeypatch.setattr(optax, "adam", lambda learning_rate, b1, b2: optax.sgd(learning_rate))
  c = _config(hidden=8, z_dim=3, **kw)
  return rg.make_train_step(c, regulariser, sharding.make_mesh(c.mesh))


@pytest.mark.parametrize("regulariser, scheme", [("none", "simultaneous"), ("none", "alternating"),
                                                 ("l2", "simultaneous"), ("zero_gp", "alternating")])
def test_one_sgd_step_descends_the_losses_written_here(monkeypatch, regulariser, scheme):
  """One step of `make_train_step` (SGD): D moves by −lr_D ∇_φ L_D at the old point, with (l2/2)‖φ‖² for 'l2'
  and zero_gp·E‖∇_x D(x_real)‖² for 'zero_gp' (config sets both weights; only the named one may act), and G by
  −lr_G ∇_θ L_G at the OLD D (simultaneous) or at the NEW D (alternating). References: jax.grad of
  `_ref_losses`; rtol 1e-5 (atol 1e-12 for the float64 cancellation in new − old where a gradient is ~0).
  The reported losses are L_D at the old point (without the L2 term) and L_G at the D that G saw."""
  with jax.enable_x64(True):
    init, step = _sgd_train_step(monkeypatch, regulariser, scheme=scheme, d_learning_rate=0.5, g_learning_rate=0.2,
                                 zero_gp=0.5, l2=0.3)
    state = init(jax.random.key(3))
    d0, g0 = jax.tree.map(np.array, state[:2])
    x, z = _batch()
    (d1, g1, *_), m = step(state, jnp.asarray(x), jnp.asarray(z))
    zero_gp, l2 = {"none": (0.0, 0.0), "l2": (0.0, 0.3), "zero_gp": (0.5, 0.0)}[regulariser]
    gd = jax.grad(lambda dp: _ref_losses(dp, g0, x, z, zero_gp, l2)[0])(d0)
    d_new = jax.tree.map(lambda p, gr: p - 0.5 * gr, d0, gd)
    d_for_g = d_new if scheme == "alternating" else d0
    gg = jax.grad(lambda gp: _ref_losses(d_for_g, gp, x, z)[1])(g0)
    for got, old, grad, lr in ((d1, d0, gd, 0.5), (g1, g0, gg, 0.2)):
      for a, b, gr in zip(jax.tree.leaves(got), jax.tree.leaves(old), jax.tree.leaves(grad)):
        np.testing.assert_allclose(np.asarray(a) - b, -lr * np.asarray(gr), rtol=1e-5, atol=1e-12)
    # The reference can tell the alternatives apart: G's gradient at the other D, and D's without the
    # regulariser, each differ from the one compared above by far more than the tolerance.
    other = jax.grad(lambda gp: _ref_losses(d0 if scheme == "alternating" else d_new, gp, x, z)[1])(g0)
    flat = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])  # noqa: E731
    assert np.linalg.norm(flat(other) - flat(gg)) > 1e-2 * np.linalg.norm(flat(gg))
    if regulariser != "none":
      plain = jax.grad(lambda dp: _ref_losses(dp, g0, x, z)[0])(d0)
      assert np.linalg.norm(flat(plain) - flat(gd)) > 1e-2 * np.linalg.norm(flat(gd))
    want_d = _ref_losses(d0, g0, x, z, zero_gp)[0]
    assert float(m["loss_d"]) == pytest.approx(float(want_d), rel=1e-10)
    assert float(m["loss_g"]) == pytest.approx(float(_ref_losses(d_for_g, g0, x, z)[1]), rel=1e-10)
    assert float(m["grad_penalty"]) == pytest.approx(float(_ref_r1(d0, x)), rel=1e-10)


def test_generator_ema_is_the_numpy_average_of_the_new_generators():
  """Three Adam steps of `make_train_step` with decay δ = 0.6: g_ema after step t equals the NumPy recursion
  e_0 = θ_0, e_t = δ e_{t−1} + (1 − δ) θ_t over the generators θ_t the steps return (float64, rtol 1e-12)."""
  with jax.enable_x64(True):
    c = _config(hidden=8, z_dim=3, ema_decay=0.6, scheme="alternating")
    init, step = rg.make_train_step(c, "none", sharding.make_mesh(c.mesh))
    state = init(jax.random.key(4))
    ema = [np.array(leaf) for leaf in jax.tree.leaves(state[1])]
    for s in range(3):
      x, z = _batch(seed=10 + s)
      state, _ = step(state, jnp.asarray(x), jnp.asarray(z))
      new_g, got = ([np.array(leaf) for leaf in jax.tree.leaves(t)] for t in (state[1], state[4]))
      ema = [0.6 * e + 0.4 * p for e, p in zip(ema, new_g)]
      for a, b in zip(got, ema):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
      # The average differs from the iterate (so e_t = θ_t would fail) by far more than the tolerance.
      gap = max(np.max(np.abs(b - p)) for b, p in zip(ema, new_g))
      assert gap > 1e-6 * max(np.max(np.abs(p)) for p in new_g)
