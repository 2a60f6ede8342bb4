"""The ablation harness: divergence bookkeeping, steps-to-target, one CSV row per grid point, summaries."""
import csv
import json
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.optim import exponentiated_gradient as eg_config
from kexue_jax.optim import ablation


def test_steps_to_target_on_a_hand_made_curve():
  steps = np.array([10, 20, 30, 40, 50])
  curve = np.array([5.0, np.nan, 0.5, 0.09, 0.2])
  assert ablation.steps_to_target(curve, steps, 0.1) == 40.0
  assert ablation.steps_to_target(curve, steps, 0.5) == 30.0  # ≤ counts, NaN never does
  assert ablation.steps_to_target(curve, steps, 5.0) == 10.0
  assert math.isnan(ablation.steps_to_target(curve, steps, 0.01))


@pytest.mark.parametrize("curve,diverged", [
    ([1.0, 0.5, 0.1], False),
    ([1.0, np.inf, 0.1], True),     # any non-finite evaluation
    ([1.0, 2.0, np.nan], True),
    ([1.0, 50.0, 10.5], True),      # final loss above 10 × initial
    ([1.0, 50.0, 9.0], False),
])
def test_is_diverged(curve, diverged):
  assert ablation.is_diverged(1.0, curve, 10.0) is diverged


def test_diverging_lane_is_recorded_and_does_not_spoil_the_others():
  task = ablation.quadratic_task(kappa=100.0, dim=10, target=0.1)
  lrs, seeds = [1e-3, 1e-2, 0.5], [0, 1]  # sgd diverges for lr > 2/100
  out = ablation.train_grid(task, "sgd", lrs, seeds, num_steps=200, eval_every=20, gammas={})
  assert out["losses"].shape == (3, 2, 10)
  np.testing.assert_array_equal(out["steps"], 20 * np.arange(1, 11))
  rows = ablation.grid_rows("sgd", task, lrs, seeds, out, divergence_factor=10.0)
  assert [r["diverged"] for r in rows] == [False, False, False, False, True, True]
  assert all(np.isfinite(out["losses"][:2]).ravel())
  # lr 1e-2 reaches the target, lr 1e-3 does not within 200 steps
  assert math.isfinite(rows[2]["steps_to_target"]) and math.isnan(rows[0]["steps_to_target"])
  # the summary treats a diverged run as "no progress" (its initial loss), so it stays finite
  clipped = ablation.clipped_final(rows)
  assert np.all(np.isfinite(clipped))
  assert clipped[4] == rows[4]["initial_loss"]


def test_single_run_matches_a_hand_written_loop():
  import optax
  task = ablation.rosenbrock_task()
  out = ablation.train_grid(task, "adam", [1e-2], [3], num_steps=30, eval_every=10, gammas={})
  import jax
  p = task.init(jax.random.fold_in(jax.random.PRNGKey(3), 0))
  opt = optax.adam(1e-2)
  s = opt.init(p)
  for _ in range(30):
    u, s = opt.update(jax.grad(task.full_loss)(p, 0), s, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(out["losses"][0, 0, -1], task.full_loss(p, 0), rtol=1e-5)


def test_lr_sensitivity_and_best_final():
  rows = [dict(lr=lr, final_loss=f, initial_loss=10.0, diverged=d)
          for lr, f, d in [(0.1, 1.0, False), (0.1, 3.0, False), (1.0, 0.01, False), (1.0, np.nan, True)]]
  # medians over seeds: lr 0.1 -> 2.0; lr 1.0 -> median(0.01, 10.0 [diverged -> initial]) = 5.005
  assert ablation.best_final(rows, [0.1, 1.0]) == pytest.approx(2.0)
  assert ablation.lr_sensitivity(rows, [0.1, 1.0], 0.0) == pytest.approx(math.log10(5.005 / 2.0))
  assert ablation.lr_sensitivity(rows, [0.1, 1.0], 3.0) == pytest.approx(math.log10(6.5 / 3.0))  # floor before median


@pytest.mark.parametrize("name,message", [
    ("eg_adam_both", "`optimizer` must be eg_"),
    ("eg_lion_both_rms", "`optimizer` must be eg_"),
    ("lion", "`optimizer` must be one of"),
])
def test_bad_optimizer_names(name, message):
  with pytest.raises(ValueError, match=message):
    ablation.make_optimizer(name, 1e-3, {})


def test_every_named_optimizer_builds_and_its_first_step_is_its_base_optimizers():
  # Gains and scale start at 1 and their EG/hypergradient updates multiply by the previous gradient
  # (or update), which is zero before the first step: so the first update of every method of the
  # article family equals that of its base, -lr·g for SGD and SGDM, Adam's for Adam. The optax peers
  # only have to descend (rprop's and mechanize's first steps are exactly zero by construction).
  config = eg_config.get_config()
  g = jnp.array([1.0, -2.0, 0.5])
  params = jnp.ones(3)
  adam_first, _ = optax.adam(1e-2).update(g, optax.adam(1e-2).init(params), params)
  for name in config.optimizers:
    opt = ablation.make_optimizer(name, jnp.float32(1e-2), dict(config.gammas))
    u, _ = opt.update(g, opt.init(params), params)
    assert u.shape == (3,) and bool(jnp.all(jnp.isfinite(u))), (name, u)
    assert float(jnp.vdot(u, g)) <= 0.0, (name, u)
    if name in ablation.PEERS and not name.startswith("hd_"):
      continue
    expected = adam_first if "adam" in name else -1e-2 * g
    np.testing.assert_allclose(np.asarray(u), np.asarray(expected), rtol=1e-6, atol=0, err_msg=name)


def test_run_writes_one_row_per_grid_point_and_survives_a_failing_pair(tmp_path, monkeypatch):
  config = eg_config.get_config("smoke")
  config.tasks = ["quadratic", "rosenbrock"]
  config.optimizers = ["sgd", "adam", "eg_adam_both_mixed"]
  config.learning_rates = [1e-2, 3.0]
  config.seeds = [0, 1]
  config.num_steps = 20
  config.shift.enabled = False
  real = ablation.make_optimizer

  def flaky(name, lr, gammas):
    if name == "adam":
      raise RuntimeError("boom")
    return real(name, lr, gammas)

  monkeypatch.setattr(ablation, "check_config", lambda c: None)
  monkeypatch.setattr(ablation, "make_optimizer", flaky)
  results = ablation.run(config, str(tmp_path))
  with open(tmp_path / "ablation.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 3 * 2 * 2
  keys = {(r["task"], r["optimizer"], float(r["lr"]), int(r["seed"])) for r in rows}
  assert len(keys) == len(rows)
  adam = [r for r in rows if r["optimizer"] == "adam"]
  assert all(r["diverged"] == "True" and "boom" in r["error"] for r in adam)
  assert all(r["diverged"] == "True" for r in rows if r["optimizer"] == "sgd" and float(r["lr"]) == 3.0)
  assert results["grid/failed_pairs"] == 2.0
  assert json.loads((tmp_path / "results.json").read_text())["grid/runs"] == 24.0
  assert (tmp_path / "loss_vs_lr.png").exists()


def test_bad_config_values():
  config = eg_config.get_config("smoke")
  config.learning_rates = [0.0]
  with pytest.raises(ValueError, match="`learning_rates` must be"):
    ablation.check_config(config)
  config = eg_config.get_config("smoke")
  config.tasks = ["mnist"]
  with pytest.raises(ValueError, match="`task` must be one of"):
    ablation.check_config(config)


# --------------------------------------------------------------------------------------------------
# Review: summaries, divergence boundary, schedule-free evaluation, the distribution-shift test


def test_clipped_final_caps_a_run_that_ended_above_its_start_at_its_initial_loss():
  # "No progress" is the floor of the summary: a finite, not diverged run whose final loss rose above its
  # initial loss counts at the initial loss; a diverged one at its initial loss whatever its final value.
  rows = [dict(final_loss=5.0, initial_loss=2.0, diverged=False),   # rose, not diverged -> 2.0
          dict(final_loss=1.0, initial_loss=2.0, diverged=False),   # improved -> 1.0
          dict(final_loss=0.5, initial_loss=2.0, diverged=True),    # diverged (a NaN midway) -> 2.0
          dict(final_loss=np.nan, initial_loss=3.0, diverged=True)]
  np.testing.assert_array_equal(ablation.clipped_final(rows), [2.0, 1.0, 2.0, 3.0])
  lr_rows = [dict(r, lr=0.1) for r in rows[:1]]
  assert ablation.best_final(lr_rows, [0.1]) == 2.0


@pytest.mark.parametrize("initial,curve,factor,diverged", [
    (1.0, [1.0, 5.0, 10.0], 10.0, False),   # final exactly factor × initial: not "above", not diverged
    (0.5, [0.5, 1.0, 2.0], 4.0, False),     # the same boundary at another factor (4 × 0.5 = 2 exactly)
    (0.5, [0.5, 1.0, 2.0000002], 4.0, True),  # just above it
])
def test_is_diverged_at_the_factor_boundary(initial, curve, factor, diverged):
  # Docstring: diverged = any non-finite evaluation, or a final loss *above* factor × the initial loss.
  assert ablation.is_diverged(initial, curve, factor) is diverged


def test_per_lr_summary_is_the_median_over_three_seeds():
  # lr 0.1: seeds end at (0.01, 0.02, 10.0) -> median 0.02 (the mean would be 3.34); lr 1.0: (0.5, 0.4, 0.3)
  # -> median 0.4. All below the initial 20, none diverged, so clipping changes nothing.
  rows = [dict(lr=lr, final_loss=f, initial_loss=20.0, diverged=False)
          for lr, fs in [(0.1, (0.01, 0.02, 10.0)), (1.0, (0.5, 0.4, 0.3))] for f in fs]
  assert ablation.best_final(rows, [0.1, 1.0]) == pytest.approx(0.02, rel=1e-12)
  assert ablation.lr_sensitivity(rows, [0.1, 1.0], 0.0) == pytest.approx(math.log10(0.4 / 0.02), rel=1e-12)
  # floored at 0.015 before the median: lr 0.1 -> median(0.015, 0.02, 10) = 0.02 still
  assert ablation.lr_sensitivity(rows, [0.1, 1.0], 0.015) == pytest.approx(math.log10(0.4 / 0.02), rel=1e-12)


def _rosenbrock_in_the_test(p):
  return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def test_schedule_free_is_evaluated_at_its_eval_params():
  # Schedule-free AdamW's iterate y (where gradients are taken) is not its solution x: the harness must report
  # the loss at `schedule_free_eval_params`. Compared with a hand-written loop on Rosenbrock (the loss written
  # here), evaluated at x; the loss at y differs by far more than the tolerance, so y would fail.
  import jax
  task = ablation.rosenbrock_task()
  out = ablation.train_grid(task, "schedule_free_adamw", [1e-2], [1], num_steps=20, eval_every=10, gammas={})
  p = task.init(jax.random.fold_in(jax.random.PRNGKey(1), 0))
  opt = optax.contrib.schedule_free_adamw(1e-2)
  s = opt.init(p)
  at_x, at_y = [], []
  for t in range(20):
    u, s = opt.update(jax.grad(_rosenbrock_in_the_test)(p), s, p)
    p = optax.apply_updates(p, u)
    if (t + 1) % 10 == 0:
      at_x.append(float(_rosenbrock_in_the_test(optax.contrib.schedule_free_eval_params(s, p))))
      at_y.append(float(_rosenbrock_in_the_test(p)))
  np.testing.assert_allclose(out["losses"][0, 0], at_x, rtol=1e-5)
  assert np.all(np.abs(np.asarray(at_y) / np.asarray(at_x) - 1) > 1e-2), (at_x, at_y)


def test_shift_task_trains_and_reports_the_labels_of_the_last_step_trained():
  # Labels become perm[y] from step `shift_step` on. With shift_step = every = 2, the loss reported at step 2
  # follows two steps on the original labels and must be measured on y (the pre-shift bar of the recovery
  # count); the loss at step 4 follows two steps on the permuted labels and must be measured on perm[y].
  # Compared with a hand-written SGD loop whose labels, linear model and cross-entropy are chosen here (only the
  # initialisation and the harness's key scheme, fold_in(key, t + 1) -> minibatch, are taken from the task).
  import jax
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
  perm = jnp.asarray(np.random.default_rng(0).permutation(10))  # the task's permutation_seed=0
  assert int(jnp.sum(perm[y] != y)) >= 12
  task = ablation.classification_task("tiny", x, y, (4, 10), batch_size=8, target=0.0, shift_step=2)
  out = ablation.train_grid(task, "sgd", [0.5], [0], num_steps=4, eval_every=2, gammas={})
  np.testing.assert_array_equal(out["steps"], [2, 4])

  def xent(w, b, xx, labels):
    logp = jax.nn.log_softmax(xx @ w + b[None], axis=-1)
    return -jnp.mean(logp[jnp.arange(labels.shape[0]), labels])

  grad = jax.jit(jax.grad(xent, argnums=(0, 1)))
  key = jax.random.PRNGKey(0)
  (layer,) = task.init(jax.random.fold_in(key, 0))
  w, b = layer["w"], layer["b"]
  np.testing.assert_allclose(out["initial"][0, 0], xent(w, b, x, y), rtol=1e-5)
  on_y, on_perm = [], []
  for t in range(4):
    idx = jax.random.randint(jax.random.fold_in(key, t + 1), (8,), 0, 16)
    labels = perm[y[idx]] if t >= 2 else y[idx]
    gw, gb = grad(w, b, x[idx], labels)
    w, b = w - 0.5 * gw, b - 0.5 * gb
    if t % 2 == 1:
      on_y.append(float(xent(w, b, x, y)))
      on_perm.append(float(xent(w, b, x, perm[y])))
  np.testing.assert_allclose(out["losses"][0, 0], [on_y[0], on_perm[1]], rtol=1e-5)
  # the other labelling is far off at both evaluations, so a wrong labelling cannot pass at rtol 1e-5
  assert abs(on_perm[0] / on_y[0] - 1) > 1e-2 and abs(on_y[1] / on_perm[1] - 1) > 1e-2, (on_y, on_perm)


def test_shift_recovery_counts_on_hand_made_curves(tmp_path, monkeypatch):
  # The training is replaced by hand-made curves (the unit 'shift' of the store), so the bookkeeping is checked
  # against answers worked out by hand. shift.num_steps = num_steps = 40 -> shift at step 20, evaluations
  # every 5 steps at 5, 10, ..., 40; the pre-shift loss is the one at step 20, the initial loss 2.3 is higher.
  config = eg_config.get_config("smoke")
  config.seeds = [0, 1, 2]
  config.num_steps = 40
  config.shift.num_steps, config.shift.eval_every, config.shift.level = 40, 5, 0.3
  steps = 5 * np.arange(1, 9)
  curves = np.array([
      # 5    10   15   20 |  25    30    35    40
      [1.0, 0.5, 0.4, 0.3, 2.0, 0.5, 0.3, 0.2],    # back to exactly 0.3 at 35 -> 15 steps; level 0.3 at 35 -> 15
      [1.5, 0.9, 0.5, 0.25, 1.0, 0.8, 0.6, 0.5],   # never back to 0.25 -> censored at 40 - 20 = 20; level -> 20
      [1.2, 0.8, 0.6, 0.4, 0.6, 0.35, 0.1, 0.05],  # 0.35 <= 0.4 at 30 -> 10 steps; level 0.3 at 35 -> 15
  ])
  calls = []

  class FakeStore:
    def run(self, name, fn, task, makers, lrs, seeds, *, num_steps, eval_every):
      calls.append((name, fn, sorted(makers), list(lrs), list(seeds), num_steps, eval_every))
      return {o: dict(initial=np.full((1, 3), 2.3), losses=curves[None], steps=steps, stats={}) for o in makers}

  monkeypatch.setattr(ablation, "_digits", lambda: (jnp.zeros((4, 64)), jnp.zeros(4, jnp.int32)))
  monkeypatch.setattr(ablation, "_plot_shift", lambda *a: None)
  res = ablation.shift_experiment(config, str(tmp_path), FakeStore())
  assert calls == [("shift", ablation.train_grid_multi, ["adam", "adam_cosine", "eg_adam", "eg_adam_cosine"],
                    [1e-2], [0, 1, 2], 40, 5)]
  assert res["shift/shift_step"] == 20.0
  for o in ("adam", "adam_cosine", "eg_adam", "eg_adam_cosine"):
    assert res[f"shift/recovery_steps/{o}"] == 15.0          # mean(15, 20, 10)
    assert res[f"shift/not_recovered/{o}"] == 1.0
    assert res[f"shift/steps_to_0.3_after_shift/{o}"] == pytest.approx(50 / 3, rel=1e-12)  # mean(15, 20, 15)
    assert res[f"shift/final_loss/{o}"] == 0.2                # median(0.2, 0.5, 0.05)


def test_shift_eval_every_must_put_an_evaluation_on_the_shift_step():
  # The shift is at min(shift.num_steps, num_steps) // 2 = min(40, 20) // 2 = 10 in the smoke config. With
  # eval_every 3 the evaluations fall on 9 and 12: the "pre-shift" loss would be step 9's.
  from kexue_jax.core.config import ConfigError
  config = eg_config.get_config("smoke")
  config.shift.eval_every = 3
  with pytest.raises(ConfigError) as e:
    ablation.check_config(config)
  assert str(e.value) == ("`shift.eval_every` must be a divisor of the shift step 10 (min(shift.num_steps, "
                          "num_steps) // 2) or >= it, so that the pre-shift loss is evaluated at the shift; got 3")
  for ok in (1, 2, 5, 10, 25):  # divisors of 10, and values >= 10 (clipped to one evaluation at the shift)
    config.shift.eval_every = ok
    ablation.check_config(config)
  config = eg_config.get_config()  # full scale: shift at 1500 // 2 = 750
  config.shift.eval_every = 20
  with pytest.raises(ConfigError, match=r"divisor of the shift step 750 .*; got 20$"):
    ablation.check_config(config)



def test_eval_every_must_divide_the_number_of_steps():
  # Training runs whole evaluation intervals: num_steps 20 with eval_every 15 would train 30 steps.
  from kexue_jax.core.config import ConfigError
  config = eg_config.get_config("smoke")  # num_steps 20
  config.eval_every = 15
  with pytest.raises(ConfigError) as e:
    ablation.check_config(config)
  assert str(e.value) == "`eval_every` must be a divisor of num_steps (20) or >= it; got 15"
  for ok in (1, 4, 20, 50):
    config.eval_every = ok
    ablation.check_config(config)
  config = eg_config.get_config("smoke")
  config.num_steps = 40
  config.shift.num_steps, config.shift.eval_every = 30, 4  # 30 steps, shift at 15 (not a multiple of 4)
  with pytest.raises(ConfigError, match=r"divisor of the shift step 15 "):
    ablation.check_config(config)
  config.shift.num_steps, config.shift.eval_every = 21, 5  # 21 steps, shift at 10: 10 % 5 == 0 but 21 % 5 != 0 (it would train 25)
  with pytest.raises(ConfigError, match=r"divisor of the shift test's 21 steps"):
    ablation.check_config(config)
  config.num_steps = 20  # num_steps caps the shift test: 20 steps, shift at 10
  ablation.check_config(config)
  config.num_steps, config.eval_every, config.shift.num_steps = 1, 1, 40  # one step: nothing after a shift
  with pytest.raises(ConfigError, match=r"`shift.num_steps` must be min\(shift.num_steps, num_steps\) >= 2"):
    ablation.check_config(config)
