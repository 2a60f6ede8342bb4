"""bert4keras optimizer-wrapper parity (anchors.md §3.5): each wrapper vs a reference computation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kexue_jax.optim import bert4keras as b4k

PARAMS = {"dense": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "bias": jnp.array([0.1, -0.2])},
          "embedding": jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}


def _grads(i):
  return jax.tree.map(lambda p: jnp.cos(p * (i + 1)), PARAMS)


def _close(a, b, rtol=1e-6, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_piecewise_linear_lr_matches_np_interp():
  lr = b4k.piecewise_linear_lr(2.0, {1000: 1.0, 2000: 0.1})
  steps = np.array([0, 1, 500, 999, 1000, 1500, 2000, 5000])
  want = 2.0 * np.interp(steps, [0, 1000, 2000], [0.0, 1.0, 0.1])
  np.testing.assert_allclose([float(lr(s)) for s in steps], want, rtol=1e-6)
  # from_zero=False: no (0, 0) point, so the first multiplier holds before the first key.
  lr = b4k.piecewise_linear_lr(2.0, {1000: 0.5, 2000: 0.1}, from_zero=False)
  want = 2.0 * np.interp(steps, [1000, 2000], [0.5, 0.1])
  np.testing.assert_allclose([float(lr(s)) for s in steps], want, rtol=1e-6)
  assert float(lr(0)) == 1.0


def test_layer_adaptation_equals_lamb_style_trust_ratio():
  lr = 0.01
  ours = b4k.layer_adaptation(optax.adam(lr), lr)
  ref = optax.chain(optax.scale_by_adam(), optax.scale_by_trust_ratio(), optax.scale_by_learning_rate(lr))
  so, sr, p = ours.init(PARAMS), ref.init(PARAMS), PARAMS
  for i in range(3):
    uo, so = ours.update(_grads(i), so, p)
    ur, sr = ref.update(_grads(i), sr, p)
    _close(uo, ur)
    p = optax.apply_updates(p, uo)


def test_layer_adaptation_uses_the_scheduled_learning_rate():
  """bert4keras v2 divides by the decayed lr_t, so a warm-up survives the trust ratio: ‖step‖ = lr_t‖w‖."""
  sched = b4k.piecewise_linear_lr(1e-2, {100: 1.0})
  ours = b4k.layer_adaptation(optax.adam(sched), sched)
  ref = optax.chain(optax.scale_by_adam(), optax.scale_by_trust_ratio(), optax.scale_by_learning_rate(sched))
  so, sr, p = ours.init(PARAMS), ref.init(PARAMS), PARAMS
  for i in range(4):
    uo, so = jax.jit(ours.update)(_grads(i), so, p)
    ur, sr = ref.update(_grads(i), sr, p)
    _close(uo, ur)
    k = p["dense"]["kernel"]
    np.testing.assert_allclose(float(jnp.linalg.norm(uo["dense"]["kernel"]) / jnp.linalg.norm(k)),
                               float(sched(i)), rtol=1e-5, atol=1e-12)
    p = optax.apply_updates(p, uo)


def test_weight_decay_with_a_schedule_equals_optax_adamw():
  """Decoupled decay at the scheduled rate: adam + weight_decay(rate, lr_t) is optax.adamw(lr_t, rate)."""
  sched = b4k.piecewise_linear_lr(0.1, {3: 1.0, 10: 0.2})
  ours = b4k.weight_decay(optax.adam(sched), 0.05, sched, exclude_from=["bias"])
  mask = {"dense": {"kernel": True, "bias": False}, "embedding": True}
  ref = optax.adamw(sched, weight_decay=0.05, mask=mask)
  so, sr, p = ours.init(PARAMS), ref.init(PARAMS), PARAMS
  for i in range(6):
    uo, so = jax.jit(ours.update)(_grads(i), so, p)
    ur, sr = ref.update(_grads(i), sr, p)
    _close(uo, ur)
    p = optax.apply_updates(p, uo)


def test_parameter_wise_lr_multiplies_every_matching_key():
  """bert4keras multiplies the multipliers of all keys contained in the name, not just the first."""
  opt = b4k.parameter_wise_lr(optax.sgd(1.0), {"dense": 2.0, "bias": 0.5, "nothing": 7.0})
  ones = jax.tree.map(jnp.ones_like, PARAMS)
  u, _ = opt.update(ones, opt.init(PARAMS), PARAMS)
  np.testing.assert_allclose(u["dense"]["bias"], -1.0)     # 2 × 0.5
  np.testing.assert_allclose(u["dense"]["kernel"], -2.0)
  np.testing.assert_allclose(u["embedding"], -1.0)


def test_lazy_optimization_keeps_whole_rows_with_any_nonzero_gradient():
  """bert4keras masks rows (any(g ≠ 0) over the last axis): a live row moves everywhere, momentum included."""
  opt = b4k.lazy_optimization(optax.sgd(0.1, momentum=0.9))
  base = optax.sgd(0.1, momentum=0.9)
  so, sb = opt.init(PARAMS), base.init(PARAMS)
  g0 = jax.tree.map(jnp.ones_like, PARAMS)
  _, so = opt.update(g0, so, PARAMS)
  _, sb = base.update(g0, sb, PARAMS)
  g1 = {"dense": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]]), "bias": jnp.array([0.0, 0.3])},
        "embedding": jnp.array([[0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])}
  uo, _ = opt.update(g1, so, PARAMS)
  ub, _ = base.update(g1, sb, PARAMS)
  rows = {"dense": {"kernel": np.array([[1.0], [0.0]]), "bias": np.array([1.0])},
          "embedding": np.array([[1.0], [0.0], [1.0]])}
  _close(uo, jax.tree.map(lambda u, r: u * r, ub, rows))
  assert float(uo["embedding"][0, 0]) != 0.0  # zero gradient, live row: the momentum step is applied


def test_gradient_accumulation_is_one_step_on_the_mean():
  opt = b4k.gradient_accumulation(optax.adam(0.1), 3)
  s = opt.init(PARAMS)
  for i in range(3):
    u, s = opt.update(_grads(i), s, PARAMS)
  mean = jax.tree.map(lambda *g: sum(g) / 3, *[_grads(i) for i in range(3)])
  ref, _ = optax.adam(0.1).update(mean, optax.adam(0.1).init(PARAMS), PARAMS)
  _close(u, ref, rtol=1e-5)


def test_lookahead_matches_numpy():
  opt = b4k.lookahead(optax.sgd(0.1), steps=2, alpha=0.5)
  p = optax.LookaheadParams.init_synced(PARAMS)
  s = opt.init(p)
  fast = slow = np.asarray(PARAMS["embedding"])
  for i in range(4):
    g = _grads(i)
    u, s = opt.update(g, s, p)
    p = optax.apply_updates(p, u)
    fast = fast - 0.1 * np.asarray(g["embedding"])
    if (i + 1) % 2 == 0:
      slow = slow + 0.5 * (fast - slow)
      fast = slow
    np.testing.assert_allclose(p.slow["embedding"], slow, rtol=1e-6)


def test_lazy_optimization_leaves_zero_gradient_rows():
  opt = b4k.lazy_optimization(optax.adam(0.1, b1=0.9))
  s = opt.init(PARAMS)
  p = PARAMS
  u, s = opt.update(_grads(0), s, p)
  p = optax.apply_updates(p, u)
  g = _grads(1)
  g["embedding"] = g["embedding"].at[1].set(0.0)
  u, s = opt.update(g, s, p)
  assert float(jnp.max(jnp.abs(u["embedding"][1]))) == 0.0
  assert float(jnp.max(jnp.abs(u["embedding"][0]))) > 0.0


def test_ema_of_weights_is_bert4keras_average_and_equals_optax_ema_debiased():
  """bert4keras: ema starts at 0, ema ← m·ema + (1−m)·w after each step, read with bias correction 1 − m^t."""
  m = 0.9
  opt = b4k.exponential_moving_average(optax.sgd(0.1), momentum=m)
  s, p = opt.init(PARAMS), PARAMS
  ref = optax.ema(m, debias=True)  # the trusted peer: optax's debiased EMA of the parameter sequence
  rs = ref.init(PARAMS)
  raw = np.zeros_like(np.asarray(PARAMS["embedding"]))
  for i in range(5):
    u, s = jax.jit(opt.update)(_grads(i), s, p)
    p = optax.apply_updates(p, u)
    want, rs = ref.update(p, rs)
    raw = m * raw + (1 - m) * np.asarray(p["embedding"])
    _close(b4k.ema_weights(s), want)
    np.testing.assert_allclose(b4k.ema_weights(s, bias_correction=False)["embedding"], raw, rtol=1e-6)
  np.testing.assert_allclose(float(s.correction), 1 - m ** 5, rtol=1e-6)


def test_ema_is_kept_in_float32_under_bf16_params():
  """In bf16, 0.99·ema rounds so coarsely that the average drifts; the state must be float32."""
  m, steps = 0.99, 300
  targets = 1.0 + 0.5 * np.sin(np.arange(steps) / 30.0)
  p = {"w": jnp.ones((3,), jnp.bfloat16)}
  opt = b4k.exponential_moving_average(optax.sgd(1.0), momentum=m)
  s = opt.init(p)
  upd = opt.update  # eager: under jit XLA may keep p + u in excess precision instead of the stored bf16
  ema = 0.0
  for t in range(steps):  # sgd(1) on g = p − target puts the parameters on a known bf16 path
    u, s = upd({"w": (p["w"].astype(jnp.float32) - targets[t]).astype(jnp.bfloat16)}, s, p)
    p = optax.apply_updates(p, u)
    assert p["w"].dtype == jnp.bfloat16
    ema = m * ema + (1 - m) * float(p["w"][0])  # float64 EMA of the same bf16 path
  assert s.ema["w"].dtype == jnp.float32
  np.testing.assert_allclose(float(b4k.ema_weights(s, bias_correction=False)["w"][0]), ema, rtol=1e-5)


def test_parameter_wise_lr_and_masked_weight_decay():
  opt = b4k.parameter_wise_lr(optax.adam(0.1), {"embedding": 0.1, "bias": 2.0})
  ref = optax.multi_transform({"e": optax.adam(0.01), "b": optax.adam(0.2), "k": optax.adam(0.1)},
                              {"dense": {"kernel": "k", "bias": "b"}, "embedding": "e"})
  so, sr, p = opt.init(PARAMS), ref.init(PARAMS), PARAMS
  for i in range(3):
    uo, so = opt.update(_grads(i), so, p)
    ur, sr = ref.update(_grads(i), sr, p)
    _close(uo, ur)
    p = optax.apply_updates(p, uo)
  wd = b4k.weight_decay(optax.sgd(0.1), 0.01, 0.1, exclude_from=["bias"])
  u, _ = wd.update(_grads(0), wd.init(PARAMS), PARAMS)
  np.testing.assert_allclose(u["dense"]["kernel"], -0.1 * (_grads(0)["dense"]["kernel"]
                                                          + 0.01 * PARAMS["dense"]["kernel"]), rtol=1e-6)
  np.testing.assert_allclose(u["dense"]["bias"], -0.1 * _grads(0)["dense"]["bias"], rtol=1e-6)


BAD = [
    (lambda: b4k.piecewise_linear_lr(1.0, {}), "`schedule` must be a non-empty dict"),
    (lambda: b4k.piecewise_linear_lr(1.0, {-5: 1.0}), "`schedule` keys must be non-negative ints; got -5"),
    (lambda: b4k.gradient_accumulation(optax.sgd(0.1), 0), "`grad_accum_steps` must be a positive int; got 0"),
    (lambda: b4k.lookahead(optax.sgd(0.1), alpha=2.0), "`alpha` must be a finite number >= 0.0 and <= 1.0"),
    (lambda: b4k.exponential_moving_average("sgd"), "`optimizer` must be an optax.GradientTransformation"),
    (lambda: b4k.parameter_wise_lr(optax.sgd(0.1), {"x": -1.0}), r"`multipliers\['x'\]` must be a finite"),
]


@pytest.mark.parametrize("build,message", BAD)
def test_bad_inputs(build, message):
  with pytest.raises(ValueError, match=message):
    build()
