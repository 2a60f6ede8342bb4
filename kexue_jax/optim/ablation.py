"""Config-driven optimizer ablation: optimizers × tasks × learning rates × seeds (issue 3, spec §2.6).

Article: 指数梯度下降 + 元学习 = 自适应学习率 (https://kexue.fm/archives/8968).

`run(config, workdir)` is the experiment runner (see experiments/optim/exponentiated_gradient.py). Every
(optimizer, task) pair is compiled once: the initial learning rate and the seed are traced and vmapped,
the steps run in a `lax.scan`. A run that produces NaN/inf (or ends above `divergence_factor` × its
initial loss) is recorded as diverged in its own CSV row; it never stops the grid. A pair whose
construction or compilation raises is recorded as diverged with the error message. Config mistakes are not
results: `check_config` checks every key `run` reads (and builds every configured optimizer with the
configured γ) before anything is compiled, and raises a ConfigError naming the key (e.g. `gammas.rms`).

Optimizer names (`config.optimizers`):
  sgd, sgdm (momentum 0.9), adam                        plain optax baselines
  eg_sgd                                                the article's rule, ν ← ν exp(γ g_{t−1} g_t)
  eg_<base>_<mode>_<norm>                               `eg_step_size_adaptation(base)`:
      base ∈ {sgd, sgdm, adam}, mode ∈ {gains, scale, both}, norm ∈ {raw, rms, cosine, mixed}
      ('mixed' = gains 'rms' + scale 'cosine'; γ from `config.gammas[norm]`)
  hd_sgd (additive), hd_adam (multiplicative)           Baydin et al.'s hypergradient descent
  prodigy, dadapt_adamw                                 lr axis = their `estim_lr0` (initial step estimate)
  mechanize_adam                                        `mechanize(adam(lr))`
  schedule_free_adamw                                   evaluated at `schedule_free_eval_params`
  rprop                                                 lr axis = initial per-coordinate step

Tasks (`config.tasks`): quadratic (κ = `quadratic_kappa`, rotated), rosenbrock (a=1, b=100, start
(−1.2, 1) + 0.05·N(0, I) by seed), logreg_digits and mlp_digits (64-64-10 tanh, minibatch 64, full
training loss evaluated every `eval_every` steps), mlp_mnist5k (784-128-10, optional).

Outputs in `workdir`: ablation.csv (one row per optimizer × task × lr × seed), loss_vs_lr.png,
steps_to_target.png, trajectories.png, shift.png and results.json (summary floats, see `_summaries`).

Resumable job by job (`kexue_jax.core.units.UnitStore`, saved under `workdir/units/`): each compiled
call is a unit, 'grid/<task>/<opt1>+<opt2>+…' per (task, group of `compile_group` optimizers), and
'grid/<task>/<opt>/alone' for the one-by-one retry of a group that raised; 'shift' is the
distribution-shift training. Rerun the same command with the same --workdir: finished units are restored
instead of recomputed, so a killed run loses at most the job in progress and the resumed results equal an
uninterrupted run's. A pair that raised is not saved, so it is retried on a rerun. Resuming with a
different config is a ConfigError. 'grid/seconds' is the wall time of the last (resumed) invocation only.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import numbers
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.optim.exponentiated_gradient import eg_sgd, eg_step_size_adaptation
from kexue_jax.optim.hypergradient import hypergradient_descent
from kexue_jax.optim.stats import optimizer_stats
from kexue_jax.core.config import ConfigError, check_int, check_real, check_real_dict, is_finite_real, require
from kexue_jax.core.metrics import write_results
from kexue_jax.core.units import UnitFault, UnitStore

BASES = ("sgd", "sgdm", "adam")
MODES = ("gains", "scale", "both")
NORMS = ("raw", "rms", "cosine", "mixed")
PEERS = ("hd_sgd", "hd_adam", "prodigy", "dadapt_adamw", "mechanize_adam", "schedule_free_adamw", "rprop")
TASKS = ("quadratic", "rosenbrock", "logreg_digits", "mlp_digits", "mlp_mnist5k")
STAT_KEYS = ("eg/scale", "eg/gain_q50", "eg/effective_lr_multiplier", "eg_sgd/gain_q50", "hd/learning_rate")
CSV_FIELDS = ("optimizer", "family", "task", "lr", "seed", "initial_loss", "final_loss", "min_loss",
              "steps_to_target", "diverged", "error")

_NORM_ARGS = {"raw": ("none", "none"), "rms": ("rms", "rms"), "cosine": ("cosine", "cosine"),
              "mixed": ("rms", "cosine")}


# --------------------------------------------------------------------------------------------------
# Optimizers


def _base(name: str, lr) -> optax.GradientTransformation:
  if name == "sgd":
    return optax.sgd(lr)
  if name == "sgdm":
    return optax.sgd(lr, momentum=0.9)
  return optax.adam(lr)


def family(name: str) -> str:
  """'article' (the EG rule and wrapper), 'base' (sgd, sgdm, adam) or 'peer'."""
  if name.startswith("eg_"):
    return "article"
  return "base" if name in BASES else "peer"


def make_optimizer(name: str, lr, gammas: dict[str, float]) -> optax.GradientTransformation:
  """The optimizer called `name` (module docstring) with initial learning rate `lr` (may be traced)."""
  if name in BASES:
    return _base(name, lr)
  if name == "eg_sgd":
    return eg_sgd(lr, gammas["eg_sgd"])
  if name.startswith("eg_"):
    parts = name.split("_")
    if len(parts) != 4 or parts[1] not in BASES or parts[2] not in MODES or parts[3] not in NORMS:
      raise ValueError(f"`optimizer` must be eg_<{'|'.join(BASES)}>_<{'|'.join(MODES)}>_"
                       f"<{'|'.join(NORMS)}>; got {name!r}")
    _, base, mode, norm = parts
    gnorm, snorm = _NORM_ARGS[norm]
    g = gammas[norm]
    return eg_step_size_adaptation(
        _base(base, lr), gamma_gains=g if mode in ("gains", "both") else 0.0,
        gamma_scale=g if mode in ("scale", "both") else 0.0,
        normalize=gnorm, scale_normalize=snorm)
  if name == "hd_sgd":
    return hypergradient_descent(lr, gammas["hd_additive"], mode="additive")
  if name == "hd_adam":
    return hypergradient_descent(lr, gammas["hd_multiplicative"], base_direction=optax.scale_by_adam(),
                                 mode="multiplicative")
  if name == "prodigy":
    return optax.contrib.prodigy(estim_lr0=lr)
  if name == "dadapt_adamw":
    return optax.contrib.dadapt_adamw(estim_lr0=lr)
  if name == "mechanize_adam":
    return optax.contrib.mechanize(optax.adam(lr))
  if name == "schedule_free_adamw":
    return optax.contrib.schedule_free_adamw(lr)
  if name == "rprop":
    return optax.rprop(lr)
  raise ValueError(f"`optimizer` must be one of {BASES + ('eg_sgd', 'eg_<base>_<mode>_<norm>') + PEERS}; "
                   f"got {name!r}")


def _eval_params(name: str, state, params):
  if name == "schedule_free_adamw":
    return optax.contrib.schedule_free_eval_params(state, params)
  return params


# --------------------------------------------------------------------------------------------------
# Tasks: init(key) -> params; batch_loss(params, key, step) -> loss; full_loss(params, step) -> loss.


class Task:
  def __init__(self, name: str, init: Callable, batch_loss: Callable, full_loss: Callable, target: float):
    self.name, self.init, self.batch_loss, self.full_loss, self.target = (
        name, init, batch_loss, full_loss, target)


def _digits(split: str = "train"):
  from kexue_jax import data
  ds = data.load("digits", split)
  x = np.asarray(ds.arrays["image"], np.float32).reshape(len(ds.arrays["label"]), -1) / (ds.levels - 1)
  return jnp.asarray(x), jnp.asarray(ds.arrays["label"], jnp.int32)


def _mnist5k():
  from kexue_jax import data
  ds = data.load("mnist5k", "train")
  n = len(ds.arrays["label"])
  x = np.asarray(ds.arrays["image"], np.float32).reshape(n, -1) / 255.0
  return jnp.asarray(x), jnp.asarray(ds.arrays["label"], jnp.int32)


def _xent(logits, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _mlp_init(sizes):
  def init(key):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
      params.append(dict(w=jax.random.normal(k, (m, n)) / math.sqrt(m), b=jnp.zeros(n)))
    return params
  return init


def _mlp_apply(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"][None])
  return x @ params[-1]["w"] + params[-1]["b"][None]


def classification_task(name, x, y, sizes, *, batch_size, target, shift_step=None, num_classes=10,
                        permutation_seed=0):
  """Minibatch cross-entropy on (x, y); with `shift_step` the labels become perm[y] from that step on."""
  perm = jnp.asarray(np.random.default_rng(permutation_seed).permutation(num_classes)
                     if shift_step is not None else np.arange(num_classes))
  n = x.shape[0]

  def labels(yy, step):
    if shift_step is None:
      return yy
    return jnp.where(step >= shift_step, perm[yy], yy)

  def batch_loss(params, key, step):
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return _xent(_mlp_apply(params, x[idx]), labels(y[idx], step))

  def full_loss(params, step):
    return _xent(_mlp_apply(params, x), labels(y, step))

  return Task(name, _mlp_init(sizes), batch_loss, full_loss, target)


def quadratic_task(kappa: float = 100.0, dim: int = 50, target: float = 1e-6) -> Task:
  """½ xᵀAx, A = Qᵀ diag(λ) Q with λ log-spaced in [1, κ] and a fixed random rotation Q."""
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
  a = jnp.asarray(q.T @ np.diag(np.geomspace(1.0, kappa, dim)) @ q, jnp.float32)

  def loss(params, *_):
    return 0.5 * params @ a @ params

  return Task("quadratic", lambda key: jax.random.normal(key, (dim,)), loss, loss, target)


def rosenbrock_task(target: float = 1e-4) -> Task:
  def loss(p, *_):
    return (1 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2

  def init(key):
    return jnp.array([-1.2, 1.0]) + 0.05 * jax.random.normal(key, (2,))

  return Task("rosenbrock", init, loss, loss, target)


def make_task(name: str, config) -> Task:
  targets = dict(config.targets)
  if name == "quadratic":
    return quadratic_task(config.quadratic_kappa, target=targets["quadratic"])
  if name == "rosenbrock":
    return rosenbrock_task(targets["rosenbrock"])
  if name in ("logreg_digits", "mlp_digits"):
    x, y = _digits()
    sizes = (64, 10) if name == "logreg_digits" else (64, 64, 10)
    return classification_task(name, x, y, sizes, batch_size=64, target=targets[name])
  if name == "mlp_mnist5k":
    x, y = _mnist5k()
    return classification_task(name, x, y, (784, 128, 10), batch_size=64, target=targets[name])
  raise ValueError(f"`task` must be one of {TASKS}; got {name!r}")


# --------------------------------------------------------------------------------------------------
# One (optimizer, task) pair, all learning rates × seeds in one compiled call


def _chunks(num_steps: int, eval_every: int) -> tuple[int, int]:
  every = max(1, min(eval_every, num_steps))
  return -(-num_steps // every), every


def train_grid_multi(task: Task, makers: dict[str, Callable], lrs, seeds, *, num_steps: int,
                     eval_every: int) -> dict[str, dict[str, Any]]:
  """Trains `task` with every optimizer of `makers` ({name: lr -> optax transform}) for every (lr, seed).

  All optimizers share one compiled call (XLA compile time, not run time, dominates on a small CPU).

  Returns:
    {name: dict with 'initial' [L, S], 'losses' [L, S, C] (full loss after each of C chunks of `every`
    steps), 'steps' [C] (the step count at each evaluation) and 'stats' {key: [L, S, C]}
    (`STAT_KEYS` present)}.
  """
  n_chunks, every = _chunks(num_steps, eval_every)

  def single(lr, seed, opt_name, make):
    key = jax.random.PRNGKey(seed)
    params = task.init(jax.random.fold_in(key, 0))
    opt = make(lr)
    state = opt.init(params)

    def step(carry, t):
      p, s = carry
      g = jax.grad(task.batch_loss)(p, jax.random.fold_in(key, t + 1), t)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    def chunk(carry, c):
      carry, _ = jax.lax.scan(step, carry, c * every + jnp.arange(every))
      p, s = carry
      # labels of the last step trained (matters for the shift test only)
      loss = task.full_loss(_eval_params(opt_name, s, p), (c + 1) * every - 1)
      stats = {k: v.astype(jnp.float32) for k, v in optimizer_stats(s).items() if k in STAT_KEYS}
      return carry, (loss, stats)

    loss0 = task.full_loss(params, 0)
    _, (losses, stats) = jax.lax.scan(chunk, (params, state), jnp.arange(n_chunks))
    return loss0, losses, stats

  def multi(lr, seed):
    return {name: single(lr, seed, name, make) for name, make in makers.items()}

  fn = jax.jit(jax.vmap(jax.vmap(multi, (None, 0)), (0, None)))
  outs = fn(jnp.asarray(lrs, jnp.float32), jnp.asarray(seeds, jnp.int32))
  steps = every * (np.arange(n_chunks) + 1)
  return {name: dict(initial=np.asarray(loss0, np.float64), losses=np.asarray(losses, np.float64),
                     steps=steps, stats={k: np.asarray(v, np.float64) for k, v in stats.items()})
          for name, (loss0, losses, stats) in outs.items()}


def train_grid(task: Task, opt_name: str, lrs, seeds, *, num_steps: int, eval_every: int,
               gammas: dict[str, float] | None = None, make: Callable | None = None) -> dict[str, Any]:
  """`train_grid_multi` for one optimizer (by name, or by `make`: lr -> optax transform)."""
  make = make or (lambda lr: make_optimizer(opt_name, lr, gammas or {}))
  return train_grid_multi(task, {opt_name: make}, lrs, seeds, num_steps=num_steps,
                          eval_every=eval_every)[opt_name]


def steps_to_target(losses, steps, target: float) -> float:
  """First evaluated step whose loss is ≤ target (NaN when never reached; NaN losses never count)."""
  losses = np.asarray(losses, np.float64)
  hit = np.nonzero(np.isfinite(losses) & (losses <= target))[0]
  return float(np.asarray(steps)[hit[0]]) if hit.size else math.nan


def is_diverged(initial: float, losses, factor: float) -> bool:
  """Any non-finite evaluated loss, or a final loss above `factor` × the initial loss."""
  losses = np.asarray(losses, np.float64)
  return bool(not np.all(np.isfinite(losses)) or losses[-1] > factor * initial)


def grid_rows(opt_name: str, task: Task, lrs, seeds, out: dict | None, *, divergence_factor: float,
              error: str = "") -> list[dict[str, Any]]:
  """CSV rows for one (optimizer, task) pair; `out=None` (construction/compilation failed) -> diverged."""
  rows = []
  for i, lr in enumerate(lrs):
    for j, seed in enumerate(seeds):
      row = dict(optimizer=opt_name, family=family(opt_name), task=task.name, lr=float(lr), seed=int(seed),
                 error=error)
      if out is None:
        row.update(initial_loss=math.nan, final_loss=math.nan, min_loss=math.nan,
                   steps_to_target=math.nan, diverged=True)
      else:
        curve = out["losses"][i, j]
        finite = curve[np.isfinite(curve)]
        row.update(initial_loss=float(out["initial"][i, j]), final_loss=float(curve[-1]),
                   min_loss=float(finite.min()) if finite.size else math.nan,
                   steps_to_target=steps_to_target(curve, out["steps"], task.target),
                   diverged=is_diverged(out["initial"][i, j], curve, divergence_factor))
      rows.append(row)
  return rows


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
      w.writerow({k: r[k] for k in CSV_FIELDS})


# --------------------------------------------------------------------------------------------------
# Summaries


def clipped_final(rows) -> np.ndarray:
  """Final loss with diverged / non-finite runs replaced by their initial loss (no progress)."""
  out = []
  for r in rows:
    bad = r["diverged"] or not math.isfinite(r["final_loss"])
    v = r["initial_loss"] if bad else min(r["final_loss"], r["initial_loss"])
    out.append(v if math.isfinite(v) else math.nan)
  return np.asarray(out, np.float64)


def _per_lr_median(rows, lrs, floor: float = 0.0):
  vals = np.maximum(clipped_final(rows), floor)
  lr_of = np.asarray([r["lr"] for r in rows])
  return np.asarray([np.nanmedian(vals[np.isclose(lr_of, lr)]) if np.any(np.isclose(lr_of, lr)) else math.nan
                     for lr in lrs])


def lr_sensitivity(rows, lrs, floor: float) -> float:
  """max − min over the lr grid of log10(median-over-seeds clipped final loss, floored at `floor`).

  0 means the initial lr does not matter; the floor (the task's target) keeps float32 round-off far
  below the target from dominating the spread.
  """
  med = _per_lr_median(rows, lrs, floor)
  logs = np.log10(med[np.isfinite(med)])
  return float(logs.max() - logs.min()) if logs.size else math.nan


def best_final(rows, lrs) -> float:
  """Best (over lrs) median-over-seeds clipped final loss."""
  med = _per_lr_median(rows, lrs)
  return float(np.nanmin(med)) if np.any(np.isfinite(med)) else math.nan


def _summaries(rows, config) -> dict[str, float]:
  lrs = list(config.learning_rates)
  res: dict[str, float] = {}
  by = {}
  for r in rows:
    by.setdefault((r["task"], r["optimizer"]), []).append(r)
  headline = config.headline
  for task in config.tasks:
    opts = {o: by[(task, o)] for o in config.optimizers if (task, o) in by}

    def best_of(pred):
      cands = [(best_final(rs, lrs), o) for o, rs in opts.items() if pred(o)]
      cands = [c for c in cands if math.isfinite(c[0])]
      return min(cands) if cands else (math.nan, "")

    for label, pred in (("article", lambda o: family(o) == "article"), ("peer", lambda o: family(o) == "peer"),
                        ("base", lambda o: family(o) == "base")):
      v, o = best_of(pred)
      res[f"{task}/best_final_loss/{label}"] = v
      if o:
        res[f"{task}/best_final_loss/{label}_is/{o}"] = 1.0
    for o in ("adam", "sgd", headline, "eg_sgd"):
      if o in opts:
        res[f"{task}/best_final_loss/{o}"] = best_final(opts[o], lrs)
        res[f"{task}/lr_sensitivity/{o}"] = lr_sensitivity(opts[o], lrs, dict(config.targets)[task])
    res[f"{task}/diverged_fraction/{headline}"] = (
        float(np.mean([r["diverged"] for r in opts[headline]])) if headline in opts else math.nan)
    if "adam" in opts:
      res[f"{task}/diverged_fraction/adam"] = float(np.mean([r["diverged"] for r in opts["adam"]]))
  return res


# --------------------------------------------------------------------------------------------------
# Distribution shift: labels permuted at step `shift_step`


def _shift_schedule(config) -> tuple[int, int, int]:
  """(num_steps, shift_step, every) of the shift test: min(shift.num_steps, num_steps) steps, labels permuted
  at half of them, the full loss evaluated every min(shift.eval_every, shift_step) steps."""
  num_steps = int(config.shift.num_steps)
  if "num_steps" in config and config.num_steps < num_steps:
    num_steps = int(config.num_steps)
  shift_step = max(1, num_steps // 2)
  return num_steps, shift_step, max(1, min(int(config.shift.eval_every), shift_step))


def shift_experiment(config, workdir: str, store: UnitStore) -> dict[str, float]:
  """MLP on digits; labels permuted mid-training; steps (after the shift) to get back to the pre-shift loss
  (and to the fixed loss `config.shift.level`).

  Compared: adam (constant lr), adam with cosine decay, and the headline EG wrapper around each.
  A run that never recovers is counted as the remaining number of steps (censored) and flagged.
  The training (one compiled call) is the unit 'shift' of `store`.
  """
  num_steps, shift_step, every = _shift_schedule(config)
  x, y = _digits()
  task = classification_task("mlp_digits_shift", x, y, (64, 64, 10), batch_size=64, target=0.0,
                             shift_step=shift_step)
  lr = float(config.shift.lr)
  seeds = list(config.seeds)
  gnorm, snorm = _NORM_ARGS[config.headline.split("_")[3]]
  g = dict(config.gammas)[config.headline.split("_")[3]]

  def wrap(base):
    return eg_step_size_adaptation(base, gamma_gains=g, gamma_scale=g, normalize=gnorm, scale_normalize=snorm)

  cosine = optax.cosine_decay_schedule(1.0, num_steps)
  makers = {
      "adam": lambda l: optax.adam(l),
      "adam_cosine": lambda l: optax.adam(lambda t: l * cosine(t)),
      "eg_adam": lambda l: wrap(optax.adam(l)),
      "eg_adam_cosine": lambda l: wrap(optax.adam(lambda t: l * cosine(t))),
  }
  res: dict[str, float] = {}
  curves = {}
  outs = store.run("shift", train_grid_multi, task, makers, [lr], seeds, num_steps=num_steps, eval_every=every)
  for name, out in outs.items():
    steps = out["steps"]
    rec = []
    censored = 0
    for j in range(len(seeds)):
      curve = out["losses"][0, j]
      pre_idx = np.nonzero(steps <= shift_step)[0]
      pre = curve[pre_idx[-1]] if pre_idx.size else out["initial"][0, j]
      after = steps > shift_step
      hit = np.nonzero(after & np.isfinite(curve) & (curve <= pre))[0]
      if hit.size:
        rec.append(steps[hit[0]] - shift_step)
      else:
        rec.append(steps[-1] - shift_step)
        censored += 1
    res[f"shift/recovery_steps/{name}"] = float(np.mean(rec))
    level = float(config.shift.level)
    lv = [steps_to_target(np.where(steps > shift_step, out["losses"][0, j], np.nan), steps, level)
          for j in range(len(seeds))]
    res[f"shift/steps_to_{level:g}_after_shift/{name}"] = float(
        np.mean([v - shift_step if math.isfinite(v) else steps[-1] - shift_step for v in lv]))
    res[f"shift/not_recovered/{name}"] = float(censored)
    res[f"shift/final_loss/{name}"] = float(np.nanmedian(out["losses"][0, :, -1]))
    curves[name] = (steps, np.nanmedian(out["losses"][0], axis=0), out["stats"])
  res["shift/shift_step"] = float(shift_step)
  _safe_plot(_plot_shift, curves, shift_step, os.path.join(workdir, "shift.png"))
  return res


# --------------------------------------------------------------------------------------------------
# Figures


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _style(o):
  fam = family(o)
  return dict(ls="-" if fam == "article" else ("--" if fam == "base" else ":"),
              lw=2.0 if fam != "article" or o == "eg_sgd" else 1.0, marker="o", ms=3)


def _safe_plot(fn, *args) -> bool:
  """Draws a figure; a degenerate one (e.g. nothing positive on a log axis in a 2-step run) is skipped."""
  try:
    fn(*args)
    return True
  except ValueError:
    _plt().close("all")
    return False


def _plot_loss_vs_lr(rows, config, path):
  plt = _plt()
  tasks = list(config.tasks)
  fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.5), squeeze=False)
  lrs = list(config.learning_rates)
  for ax, task in zip(axes[0], tasks):
    for o in config.optimizers:
      rs = [r for r in rows if r["task"] == task and r["optimizer"] == o]
      if not rs:
        continue
      med = _per_lr_median(rs, lrs)
      if o in ("sgd", "sgdm", "adam", config.headline, "eg_sgd") or family(o) == "peer":
        ax.plot(lrs, med, label=o, **_style(o))
      else:
        ax.plot(lrs, med, color="0.75", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initial learning rate")
    ax.set_title(f"{task}: final loss (median over seeds; diverged = initial)")
  axes[0][0].set_ylabel("final training loss")
  axes[0][-1].legend(fontsize=6, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_steps_to_target(rows, config, path):
  plt = _plt()
  tasks, opts = list(config.tasks), list(config.optimizers)
  mat = np.full((len(opts), len(tasks)), np.nan)
  for i, o in enumerate(opts):
    for j, t in enumerate(tasks):
      s = [r["steps_to_target"] for r in rows if r["task"] == t and r["optimizer"] == o]
      s = [v for v in s if math.isfinite(v)]
      if s:
        mat[i, j] = min(s)
  fig, ax = plt.subplots(figsize=(2 + 1.6 * len(tasks), 0.28 * len(opts) + 1.5))
  im = ax.imshow(np.log10(mat), aspect="auto", cmap="viridis_r")
  ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=7)
  ax.set_yticks(range(len(opts)), opts, fontsize=6)
  for i in range(len(opts)):
    for j in range(len(tasks)):
      ax.text(j, i, "—" if not np.isfinite(mat[i, j]) else f"{int(mat[i, j])}", ha="center", va="center",
              fontsize=5, color="w")
  fig.colorbar(im, ax=ax, label="log10 steps to target (best lr & seed; — never)")
  ax.set_title("steps to target")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_trajectories(trajs, path):
  plt = _plt()
  if not trajs:
    return
  keys = sorted({k for _, st, _ in trajs.values() for k in st})
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
  for ax, k in zip(axes[0], keys):
    for name, (steps, st, lr) in trajs.items():
      if k in st:
        ax.plot(steps, st[k], label=f"{name} (lr {lr:g})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(k)
    ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_shift(curves, shift_step, path):
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, (steps, loss, stats) in curves.items():
    axes[0].plot(steps, loss, label=name)
    if "eg/effective_lr_multiplier" in stats:
      axes[1].plot(steps, np.median(stats["eg/effective_lr_multiplier"][0], axis=0), label=name)
  for ax in axes:
    ax.axvline(shift_step, color="k", lw=0.5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  axes[0].set_title("full training loss (labels permuted at the line)")
  axes[1].set_title("EG scale × median gain")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Runner


_GAMMA_KEYS = NORMS + ("eg_sgd", "hd_additive", "hd_multiplicative")


def _gamma_key(name: str) -> str | None:
  """The key of `config.gammas` that optimizer `name` reads (None: it reads none)."""
  if name == "eg_sgd":
    return "eg_sgd"
  if name.startswith("eg_"):
    parts = name.split("_")
    return parts[3] if len(parts) == 4 and parts[3] in NORMS else None
  return {"hd_sgd": "hd_additive", "hd_adam": "hd_multiplicative"}.get(name)


def _check_name(name: str, key: str) -> None:
  """`name` must be an optimizer name `make_optimizer` accepts (built with γ = 0: names only)."""
  try:
    make_optimizer(name, 1e-3, dict.fromkeys(_GAMMA_KEYS, 0.0))
  except ValueError as e:
    raise ConfigError(str(e).replace("`optimizer`", f"`{key}`", 1)) from None


def check_config(config) -> None:
  """Checks every key `run` reads, before anything is traced; raises ConfigError (a ValueError) naming
  the key (dotted path), what was expected and what was given."""
  for key in ("tasks", "optimizers", "learning_rates", "seeds", "num_steps", "eval_every", "gammas", "targets",
              "headline", "divergence_factor", "trajectory_task", "trajectory_lr"):
    require(key in config, key, "set in the config", "<missing>")
  tasks, opts = list(config.tasks), list(config.optimizers)
  require(len(tasks) > 0, "tasks", f"a non-empty list of names from {TASKS}", tasks)
  for t in tasks:
    if t not in TASKS:
      raise ConfigError(f"`task` must be one of {TASKS}; got {t!r}")
  require(len(opts) > 0 and all(isinstance(o, str) for o in opts), "optimizers",
          "a non-empty list of optimizer names", opts)
  lrs = list(config.learning_rates)
  if not lrs or not all(is_finite_real(v) and v > 0 for v in lrs):
    raise ConfigError(f"`learning_rates` must be a non-empty list of positive numbers; got {lrs!r}")
  seeds = list(config.seeds)
  if not seeds:
    raise ConfigError("`seeds` must be a non-empty list of ints; got []")
  require(all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in seeds), "seeds",
          "a non-empty list of integers >= 0", seeds)
  if not isinstance(config.num_steps, int) or isinstance(config.num_steps, bool) or config.num_steps < 1:
    raise ConfigError(f"`num_steps` must be a positive int; got {config.num_steps!r}")
  check_int(config.eval_every, "eval_every")
  # Training runs whole evaluation intervals: an interval that does not divide num_steps would train past it.
  require(config.num_steps % min(config.eval_every, config.num_steps) == 0, "eval_every",
          f"a divisor of num_steps ({config.num_steps}) or >= it", config.eval_every)
  if config.get("compile_group") is not None:
    check_int(config.compile_group, "compile_group")

  # γ per normalisation / rule: every entry finite >= 0 (the factories' range), every one read is set.
  gammas = check_real_dict(config.gammas, "gammas", _GAMMA_KEYS, "a finite number >= 0", lambda x: x >= 0)
  for o in opts:
    _check_name(o, "optimizers")
    g = _gamma_key(o)
    if g is not None:
      require(g in gammas, f"gammas.{g}", f"set (optimizer {o!r} reads it)", "<missing>")
    try:  # builds the optax transform with the configured γ: compiles nothing
      make_optimizer(o, 1e-3, gammas)
    except ValueError as e:
      key = f"gammas.{g}" if g is not None else "optimizers"
      raise ConfigError(f"`{key}` must be a value optimizer {o!r} accepts ({e}); "
                        f"got {gammas.get(g) if g else o!r}") from None

  targets = check_real_dict(config.targets, "targets", TASKS, "a finite number > 0 (a training loss to reach)",
                            lambda x: x > 0, what=f"a dict of task name -> target loss, names from {TASKS}")
  for t in tasks:
    require(t in targets, f"targets.{t}", f"set (task {t!r} is in `tasks`)", "<missing>")
  if "quadratic" in tasks or "quadratic_kappa" in config:
    check_real(config.get("quadratic_kappa"), "quadratic_kappa", "a finite number >= 1 (a condition number)",
                lambda x: x >= 1)
  check_real(config.divergence_factor, "divergence_factor",
              "a finite number >= 1 (a run diverged when its final loss > this × its initial loss)",
              lambda x: x >= 1)
  require(isinstance(config.headline, str), "headline", "an optimizer name such as 'eg_adam_both_mixed'",
          config.headline)
  _check_name(config.headline, "headline")
  require(config.trajectory_task in TASKS, "trajectory_task", f"one of {TASKS}", config.trajectory_task)
  check_real(config.trajectory_lr, "trajectory_lr", "a finite number > 0", lambda x: x > 0)

  shift = config.get("shift")
  if shift:
    enabled = shift.get("enabled", True)
    require(isinstance(enabled, bool), "shift.enabled", "a bool", enabled)
    if enabled:
      for key in ("num_steps", "eval_every", "lr", "level"):
        require(key in shift, f"shift.{key}", "set when shift.enabled", "<missing>")
      check_int(shift.num_steps, "shift.num_steps", minimum=2)  # labels change at num_steps // 2 >= 1
      check_int(shift.eval_every, "shift.eval_every")
      # The pre-shift loss is the last evaluation at or before the shift: one must fall on it, or an earlier
      # (higher) loss is the bar and recovery looks faster than it is.
      shift_steps, shift_step, every = _shift_schedule(config)
      require(shift_steps >= 2, "shift.num_steps", "min(shift.num_steps, num_steps) >= 2 (steps before and after "
              "the shift)", shift_steps)
      require(shift_step % every == 0, "shift.eval_every",
              f"a divisor of the shift step {shift_step} (min(shift.num_steps, num_steps) // 2) or >= it, so that "
              "the pre-shift loss is evaluated at the shift", shift.eval_every)
      require(shift_steps % every == 0, "shift.eval_every",
              f"a divisor of the shift test's {shift_steps} steps (min(shift.num_steps, num_steps)), so that it "
              "does not train past them", shift.eval_every)
      check_real(shift.lr, "shift.lr", "a finite number > 0", lambda x: x > 0)
      check_real(shift.level, "shift.level", "a finite number > 0 (a training loss to reach)",
                  lambda x: x > 0)
      parts = config.headline.split("_")
      require(len(parts) == 4 and parts[0] == "eg", "headline",
              "an EG wrapper name eg_<base>_<mode>_<norm> when shift.enabled (the shift test wraps Adam with "
              "its normalisation)", config.headline)
      require(parts[3] in gammas, f"gammas.{parts[3]}", "set (the shift test reads the headline's γ)",
              "<missing>")


def _train_group(store: UnitStore, task: Task, names: list[str], lrs, seeds, config, gammas
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
  """({name: `train_grid_multi` output}, {name: error}) for one group of optimizers on `task`.

  The group is one unit; if it raises, every optimizer is retried alone (one unit each), so that one bad
  optimizer spoils only itself. Units that raised are not saved; `UnitFault` (the test hook) propagates.
  """
  kw = dict(num_steps=config.num_steps, eval_every=config.eval_every)
  makers = {o: functools.partial(make_optimizer, o, gammas=gammas) for o in names}
  try:
    return store.run(f"grid/{task.name}/{'+'.join(names)}", train_grid_multi, task, makers, lrs, seeds,
                     **kw), {}
  except UnitFault:
    raise
  except Exception:  # noqa: BLE001 — retry one by one so that one bad optimizer spoils only itself
    pass
  outs, errors = {}, {}
  for o in names:
    try:
      outs[o] = store.run(f"grid/{task.name}/{o}/alone", train_grid, task, o, lrs, seeds, gammas=gammas, **kw)
    except UnitFault:
      raise
    except Exception as e:  # noqa: BLE001 — a failing pair is a result, not a crash of the grid
      errors[o] = f"{type(e).__name__}: {e}"[:300]
  return outs, errors


def run(config, workdir: str) -> dict[str, float]:
  """Runs the grid, the distribution-shift test, writes ablation.csv, figures and results.json.

  Resumable: finished units (module docstring) are restored from `workdir/units/` on a rerun.
  """
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  store = UnitStore(workdir, config)
  lrs, seeds = list(config.learning_rates), list(config.seeds)
  gammas = dict(config.gammas)
  rows: list[dict[str, Any]] = []
  trajs = {}
  t0 = time.time()
  for task_name in config.tasks:
    task = make_task(task_name, config)
    opts = list(config.optimizers)
    group = max(1, int(config.get("compile_group", 8)))
    for k in range(0, len(opts), group):
      names = opts[k:k + group]
      outs, errors = _train_group(store, task, names, lrs, seeds, config, gammas)
      for o in names:
        out = outs.get(o)
        rows += grid_rows(o, task, lrs, seeds, out, divergence_factor=config.divergence_factor,
                          error=errors.get(o, ""))
        if out is not None and task_name == config.trajectory_task and out["stats"]:
          i = int(np.argmin(np.abs(np.log(lrs) - math.log(config.trajectory_lr))))
          trajs[o] = (out["steps"], {k2: v[i, 0] for k2, v in out["stats"].items()}, lrs[i])
      if config.get("progress", False):
        print(f"[{time.time() - t0:6.1f}s] {task_name} {names}", flush=True)
  write_csv(rows, os.path.join(workdir, "ablation.csv"))
  results = _summaries(rows, config)
  results["grid/runs"] = float(len(rows))
  results["grid/diverged_runs"] = float(sum(r["diverged"] for r in rows))
  results["grid/failed_pairs"] = float(len({(r["task"], r["optimizer"]) for r in rows if r["error"]}))
  results["figures/failed"] = float(sum(not _safe_plot(f, *a) for f, *a in (
      (_plot_loss_vs_lr, rows, config, os.path.join(workdir, "loss_vs_lr.png")),
      (_plot_steps_to_target, rows, config, os.path.join(workdir, "steps_to_target.png")),
      (_plot_trajectories, trajs, os.path.join(workdir, "trajectories.png")))))
  if config.get("shift") and config.shift.get("enabled", True):
    results.update(shift_experiment(config, workdir, store))
  results["grid/seconds"] = time.time() - t0
  return write_results(workdir, results)
