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


def test_ema_of_weights_matches_numpy():
  opt = b4k.exponential_moving_average(optax.sgd(0.1), momentum=0.9)
  s, p = opt.init(PARAMS), PARAMS
  ema = np.asarray(PARAMS["embedding"])
  for i in range(5):
    u, s = opt.update(_grads(i), s, p)
    p = optax.apply_updates(p, u)
    ema = 0.9 * ema + 0.1 * np.asarray(p["embedding"])
  np.testing.assert_allclose(s.ema["embedding"], ema, rtol=1e-6)


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
