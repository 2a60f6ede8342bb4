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
