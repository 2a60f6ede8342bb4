"""benchmarks/optim_overhead.py: the reported ratios are their documented formula of the timed intervals.

`bench` and `bench_harness` run their steps for real on tiny models; the clock is scripted, so every interval
is known. main() runs with tiny stand-in models and its `jax.jit` a stand-in that computes nothing.
Documented: per optimizer, the time per step of a timed call is its interval / steps, the reported time the
median over the interleaved repeats, and the ratio (train step, and update alone) that median ÷ the first
optimizer's (Adam's) median; harness steps are timed one `lax.scan` call of `steps` steps at a time.
"""
import statistics
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from benchmarks import optim_overhead as bench
from tests.benchmarks.scripted_clock import close, install, no_compile

U = 2.0 ** -10  # time unit (~1 ms); all intervals are multiples of it


def _tiny_model(key, batch_size=4):
  k1, k2 = jax.random.split(key)
  params = [bench._dense(k1, 3, 5), bench._dense(k2, 5, 2)]

  def loss(params, batch):
    x, y = batch
    x = jnp.tanh(x @ params[0]["w"] + params[0]["b"][None])
    return optax.softmax_cross_entropy_with_integer_labels(x @ params[1]["w"] + params[1]["b"][None], y).mean()

  def batch(key):
    return jax.random.normal(key, (batch_size, 3)), jax.random.randint(key, (batch_size,), 0, 2)

  return params, loss, batch


def _opts():
  """Adam and a cheap stand-in for the EG wrapper (its compile time is not what these tests are about):
  SGD with momentum, one parameter-sized buffer, so 1 − 2 = −1 extra buffers against Adam."""
  return {"adam": optax.adam(1e-3), "eg raw": optax.sgd(1e-3, momentum=0.9)}


def _eg_stand_in(inner, **kwargs):
  """Stands in for `eg_step_size_adaptation` in main: the inner optimizer plus two parameter-sized buffers."""
  return optax.chain(inner, optax.trace(0.0), optax.trace(0.0))


def _bench_script(costs, steps, repeats):
  """Intervals in bench's order (repeat, optimizer, then train step / update) for `costs` = {optimizer:
  (train-step call, update call)} in units U, each repeat wobbling by 0, 9 or 4 U (so the median is at
  another repeat than the minimum or maximum); and per optimizer the expected median times per step."""
  train = {o: [] for o in costs}
  update = {o: [] for o in costs}
  iv = []
  for r in range(repeats):
    wobble = [0, 9, 4][r % 3]
    for o, (t, u) in costs.items():
      t, u = (t + wobble) * U, (u + 2 * wobble) * U
      iv += [t, u]
      train[o].append(t / steps)
      update[o].append(u / steps)
  return iv, {o: statistics.median(v) for o, v in train.items()}, {o: statistics.median(v) for o, v in update.items()}


def test_bench_ratios_are_medians_over_the_base_optimizer(monkeypatch, capsys):
  opts, steps, repeats = _opts(), 2, 3
  iv, med, umed = _bench_script({"adam": (40, 10), "eg raw": (120, 50)}, steps, repeats)
  clock = install(monkeypatch, bench, iv)
  out = bench.bench("tiny", _tiny_model(jax.random.PRNGKey(0)), opts, steps=steps, repeats=repeats)
  clock.assert_consumed()
  for o in opts:
    assert out[o]["step_ratio"] == pytest.approx(med[o] / med["adam"], rel=1e-12, abs=0)
    assert out[o]["update_ratio"] == pytest.approx(umed[o] / umed["adam"], rel=1e-12, abs=0)
  assert out["eg raw"]["step_ratio"] > 2 and out["eg raw"]["update_ratio"] > 2
  assert out["eg raw"]["extra_buffers"] == pytest.approx(-1.0)  # momentum 1 buffer against Adam's mu, nu
  rows = {line[:34].rstrip(): line[34:].split() for line in capsys.readouterr().out.splitlines()}
  for o in opts:
    step_ms, step_ratio, update_ms, update_ratio = (float(v) for v in rows[o][:4])
    assert close(step_ms, 1e3 * med[o], 3) and close(update_ms, 1e3 * umed[o], 3), rows[o]
    assert close(step_ratio, med[o] / med["adam"], 3) and close(update_ratio, umed[o] / umed["adam"], 3), rows[o]


def test_harness_ratio_is_per_step_median_over_the_base_optimizer(monkeypatch, capsys):
  opts, steps, repeats = _opts(), 4, 3
  iv, t = [], {o: [] for o in opts}
  for r in range(repeats):
    for j, o in enumerate(opts):
      v = (60 + 100 * j + [0, 7, 3][r]) * U  # one lax.scan call of `steps` harness steps
      iv.append(v)
      t[o].append(v / steps)
  med = {o: statistics.median(v) for o, v in t.items()}
  clock = install(monkeypatch, bench, iv)
  out = bench.bench_harness("mlp_digits", opts, steps=steps, repeats=repeats)
  clock.assert_consumed()
  assert out["adam"]["step_ratio"] == 1.0
  assert out["eg raw"]["step_ratio"] == pytest.approx(med["eg raw"] / med["adam"], rel=1e-12, abs=0)
  assert out["eg raw"]["step_ratio"] > 2
  rows = {line[:34].rstrip(): line[34:].split() for line in capsys.readouterr().out.splitlines()}
  assert close(float(rows["eg raw"][0]), 1e6 * med["eg raw"], 2), rows["eg raw"]
  assert close(float(rows["eg raw"][1]), med["eg raw"] / med["adam"], 3), rows["eg raw"]


def test_main_summary_reports_each_models_ratio_and_verdict(monkeypatch, capsys):
  """main's closing lines: per model and EG variant, 'step ×<median ratio>' and whether it meets ≤ 1.2."""
  steps, repeats = 2, 3
  names = ["adam(1e-3)", "eg(adam) gains+scale none", "eg(adam) gains+scale raw"]
  monkeypatch.setattr(bench, "mlp_model", lambda key, bs: _tiny_model(key, bs))
  monkeypatch.setattr(bench, "transformer_model", lambda key: _tiny_model(key, 2))
  monkeypatch.setattr(bench, "eg_step_size_adaptation", _eg_stand_in)
  no_compile(monkeypatch, bench)  # the steps are run for real in the two tests above
  iv_mlp, med_mlp, _ = _bench_script(dict(zip(names, [(40, 10), (120, 50), (100, 40)])), steps, repeats)
  # the transformer's raw wrapper is scripted just under the target, so both verdicts are printed
  iv_tr, med_tr, _ = _bench_script(dict(zip(names, [(48, 12), (128, 52), (53, 20)])), steps, repeats)
  clock = install(monkeypatch, bench, iv_mlp + iv_tr)
  monkeypatch.setattr(sys, "argv", ["optim_overhead", "--no-harness", "--steps", str(steps), "--repeats",
                                    str(repeats), "--eg-normalize", "none", "--mlp-batches", "4"])
  bench.main()
  clock.assert_consumed()
  lines = capsys.readouterr().out.splitlines()
  summary = lines[lines.index("targets: train-step ratio ≤ 1.2, extra state ≤ 2 parameter-sized buffers") + 1:]
  assert len(summary) == 4
  for line, (model, med, o) in zip(summary, [("mlp", med_mlp, names[1]), ("mlp", med_mlp, names[2]),
                                             ("transformer", med_tr, names[1]), ("transformer", med_tr, names[2])]):
    assert line.split()[0] == model and o in line, line
    ratio = med[o] / med[names[0]]
    assert close(float(line.split("step ×")[1].split()[0]), ratio, 3), (line, ratio)
    assert ("meets" in line) == (ratio <= 1.2 and "buffers 2.00" in line), line
  assert "meets" in summary[3] and "MISSES" in summary[0]
