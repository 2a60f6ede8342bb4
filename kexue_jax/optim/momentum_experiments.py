"""Momentum as a damped ODE: escape, κ vs √κ, β-rule ablation, lr/B temperature (spec §3.5).

Article: 从动力学角度看优化算法（一）：从SGD到动量加速 (https://kexue.fm/archives/5655).

`run(config, workdir)` is the runner of experiments/optim/momentum_ode.py.

1. Escape: L(x) = x⁴/4 − x²/2 + 0.3x from x₀ = 2 (local minimum x ≈ 0.786, global x ≈ −1.125, barrier
   top x ≈ 0.338). Heavy ball `optax.sgd(α, momentum=β)` over an (α, β) grid; β = 0 is plain GD. A run
   ends in the global basin when its final x is left of the barrier top.
2. Acceleration: ½ xᵀ diag(λ) x with λ log-spaced in [1, κ] (d = `kappa_dim`). GD at its best constant
   step 2/(L + μ), heavy ball at Polyak's optimal α = 4/(√L + √μ)², β = ((√κ − 1)/(√κ + 1))², and Nesterov
   with α = 1/L, β = (√κ − 1)/(√κ + 1). Counted: iterations until ‖x_t‖ ≤ `tol` ‖x₀‖; the slope of
   log(iterations) against log κ is ≈ 1 for GD and ≈ 1/2 for the momentum methods.
3. β-rule ablation: a 64-`beta_rule_hidden`-10 tanh MLP on digits, minibatch heavy ball
   `optax.sgd(α(t), momentum=β(t))` (optax convention m ← g + βm, θ ← θ − α m) with α step-decayed ×r at
   mid-training; β fixed at β₀ vs β(t) = `momentum_schedule` (β₀ → 1 − (1 − β₀)√r, 0.9 → 0.968). Paired:
   both arms share each seed's initialisation and batch sequence.
4. Temperature lr/B: minibatch SGD (sampling with replacement) on L2-regularised softmax regression on
   digits, a grid of (lr, B), many independent chains from θ = 0, each run for the same ODE time
   t = lr·steps. Measured per cell: the final full-batch training loss (mean over chains) and the weight
   noise variance (across-chain variance of the final weights, averaged over the weights). The SDE view
   says both depend on lr/B (the temperature); compared: the mismatch over pairs of cells with equal lr/B
   against pairs with equal lr.

Resumable job by job (`kexue_jax.core.units.UnitStore`, saved under `workdir/units/`): the units are
'escape' (the (α, β) grid, one compiled call), 'kappa/<method>' (the iteration counts of one method over
the κ list), 'beta_rule/<arm>' (one arm, all seeds) and 'temperature/lr<lr>_B<B>' (one cell's chains).
Rerun the same command with the same --workdir: finished units are restored instead of recomputed, so a
killed run loses at most the job in progress and the resumed results equal an uninterrupted run's.
Resuming with a different config is a ConfigError.
"""
from __future__ import annotations

import functools
import math
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.core.config import check_int, check_real, is_finite_real, require
from kexue_jax.core.metrics import write_results
from kexue_jax.core.units import UnitStore
from kexue_jax.optim.momentum_ode import momentum_schedule


def double_well(x):
  return x ** 4 / 4 - x ** 2 / 2 + 0.3 * x


def _critical_points() -> np.ndarray:
  return np.sort(np.roots([1.0, 0.0, -1.0, 0.3]).real)  # L'(x) = x³ − x + 0.3


def escape_grid(alphas, betas, *, num_steps: int, x0: float = 2.0):
  """Final x and the x trajectory of heavy ball for every (α, β); arrays [A, B] and [A, B, num_steps]."""
  grad = jax.grad(double_well)

  def single(alpha, beta):
    opt = optax.sgd(alpha, momentum=beta)
    x = jnp.asarray(x0, jnp.float32)

    def step(carry, _):
      x, s = carry
      u, s = opt.update(grad(x), s, x)
      x = optax.apply_updates(x, u)
      return (x, s), x

    (x, _), traj = jax.lax.scan(step, (x, opt.init(x)), None, length=num_steps)
    return x, traj

  fn = jax.jit(jax.vmap(jax.vmap(single, (None, 0)), (0, None)))
  x, traj = fn(jnp.asarray(alphas, jnp.float32), jnp.asarray(betas, jnp.float32))
  return np.asarray(x, np.float64), np.asarray(traj, np.float64)


def iterations_to_tol(method: str, kappa: float, *, dim: int, tol: float, max_iters: int) -> int:
  """Iterations of `method` ('gd', 'heavy_ball', 'nesterov') on the κ-quadratic until ‖x‖ ≤ tol‖x₀‖."""
  lam = jnp.asarray(np.geomspace(1.0, kappa, dim), jnp.float32)
  mu, big_l = 1.0, float(kappa)
  x0 = jnp.asarray(np.random.default_rng(0).normal(size=dim), jnp.float32)
  sk = np.sqrt(kappa)
  if method == "gd":
    alpha, beta, nesterov = 2 / (big_l + mu), 0.0, False
  elif method == "heavy_ball":
    alpha, beta, nesterov = 4 / (np.sqrt(big_l) + np.sqrt(mu)) ** 2, ((sk - 1) / (sk + 1)) ** 2, False
  elif method == "nesterov":
    alpha, beta, nesterov = 1 / big_l, (sk - 1) / (sk + 1), True
  else:
    raise ValueError(f"`method` must be one of ('gd', 'heavy_ball', 'nesterov'); got {method!r}")
  opt = optax.sgd(alpha, momentum=beta if beta else None, nesterov=nesterov)
  bound = tol * jnp.linalg.norm(x0)

  def cond(c):
    x, _, n = c
    return (jnp.linalg.norm(x) > bound) & (n < max_iters)

  def body(c):
    x, s, n = c
    u, s = opt.update(lam * x, s, x)
    return optax.apply_updates(x, u), s, n + 1

  _, _, n = jax.jit(lambda: jax.lax.while_loop(cond, body, (x0, opt.init(x0), jnp.int32(0))))()
  return int(n)


def kappa_curve(method: str, kappas, *, dim: int, tol: float, max_iters: int) -> list[int]:
  """`iterations_to_tol` of `method` for every κ of `kappas`."""
  return [iterations_to_tol(method, k, dim=dim, tol=tol, max_iters=max_iters) for k in kappas]


def _digits():
  from kexue_jax import data
  out = []
  for split in ("train", "test"):
    ds = data.load("digits", split)
    x = ds.arrays["image"].reshape(len(ds.arrays["label"]), 64).astype(np.float32) / 16.0  # [n, 64]
    out += [jnp.asarray(x), jnp.asarray(ds.arrays["label"])]
  return out


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def beta_rule_ablation(*, seeds, num_steps: int, batch_size: int, learning_rate: float, beta: float,
                       decay_at: int, decay_factor: float, hidden: int,
                       arms=("fixed_beta", "beta_rule")) -> dict[str, np.ndarray]:
  """Trains the digits MLP with β fixed and with the β-rule; returns per-seed arrays [S] per arm:
  '<arm>/train_loss', '<arm>/test_loss', '<arm>/test_accuracy' (final full-split values) and the
  full-batch training loss curve '<arm>/curve' [S, num_steps // 50]. `arms` selects which arms to train
  (each arm is its own compiled call; the result of an arm does not depend on the other)."""
  x, y, xt, yt = _digits()
  lr = optax.piecewise_constant_schedule(learning_rate, {int(decay_at): float(decay_factor)})
  opts = {"fixed_beta": optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=beta),
          "beta_rule": optax.inject_hyperparams(optax.sgd)(learning_rate=lr,
                                                           momentum=momentum_schedule(lr, beta))}

  def apply(p, xb):
    return jnp.tanh(xb @ p["w1"] + p["b1"][None, :]) @ p["w2"] + p["b2"][None, :]

  def one(seed, opt):
    k1, k2, kb = jax.random.split(jax.random.key(seed), 3)
    p = dict(w1=jax.random.normal(k1, (64, hidden)) / 8.0, b1=jnp.zeros(hidden),
             w2=jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), b2=jnp.zeros(10))

    def step(carry, t):
      p, s = carry
      idx = jax.random.randint(jax.random.fold_in(kb, t), (batch_size,), 0, x.shape[0])
      g = jax.grad(lambda q: _xent(apply(q, x[idx]), y[idx]))(p)
      u, s = opt.update(g, s, p)
      p = optax.apply_updates(p, u)
      return (p, s), _xent(apply(p, x), y)

    (p, _), curve = jax.lax.scan(step, (p, opt.init(p)), jnp.arange(num_steps))
    lt = apply(p, xt)
    return dict(train_loss=_xent(apply(p, x), y), test_loss=_xent(lt, yt),
                test_accuracy=jnp.mean(lt.argmax(-1) == yt), curve=curve[::50])

  out = {}
  for arm in arms:
    opt = opts[arm]
    res = jax.jit(jax.vmap(lambda sd, o=opt: one(sd, o)))(jnp.asarray(list(seeds)))
    out.update({f"{arm}/{k}": np.asarray(v, np.float64) for k, v in res.items()})
  return out


def sgd_chains(loss_fn, params0, x, y, *, key, num_chains: int, learning_rate: float, batch_size: int,
               num_steps: int):
  """`num_chains` independent minibatch-SGD chains from `params0` on the data (x [n, ...], y [n]).

  Each step draws `batch_size` indices uniformly with replacement (so the minibatch gradient has the
  full-batch mean and 1/B times the per-example covariance) and does θ ← θ − lr ∇ loss_fn(θ, x_b, y_b).

  Returns:
    the final parameters, every leaf with a leading chain axis [num_chains, ...].
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}")
  grad = jax.grad(loss_fn)

  def chain(k):
    def step(p, t):
      idx = jax.random.randint(jax.random.fold_in(k, t), (batch_size,), 0, x.shape[0])
      g = grad(p, x[idx], y[idx])
      return jax.tree.map(lambda a, b: a - learning_rate * b, p, g), None
    return jax.lax.scan(step, params0, jnp.arange(num_steps))[0]

  return jax.jit(jax.vmap(chain))(jax.random.split(key, num_chains))


def weight_noise_variance(chains) -> float:
  """Across-chain variance of every weight (ddof 0), averaged over all weights of the pytree."""
  leaves = [np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in jax.tree.leaves(chains)]
  return float(np.mean(np.concatenate([np.var(a, axis=0) for a in leaves])))


def pair_mismatch(table: dict, group, distance) -> float:
  """Mean of distance(table[a], table[b]) over all unordered pairs of keys a ≠ b with group(a) == group(b)."""
  keys = list(table)
  ds = [distance(table[a], table[b]) for i, a in enumerate(keys) for b in keys[i + 1:] if group(a) == group(b)]
  if not ds:
    raise ValueError("`table` has no two keys in the same group")
  return float(np.mean(ds))


@functools.lru_cache(maxsize=None)
def _temperature_problem(weight_decay: float):
  """(loss(p, x_b, y_b), θ₀, jitted full-batch loss of a chain axis, x, y): built once, shared by the cells."""
  x, y, _, _ = _digits()

  def loss(p, xb, yb):
    return _xent(xb @ p["w"] + p["b"][None, :], yb) + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

  p0 = dict(w=jnp.zeros((64, 10)), b=jnp.zeros(10))
  return loss, p0, jax.jit(jax.vmap(lambda p: loss(p, x, y))), x, y


def temperature_cell(learning_rate: float, batch_size: int, *, time: float, num_chains: int,
                     weight_decay: float, seed: int = 0) -> tuple[float, float]:
  """(final training loss averaged over chains, weight noise variance) of one (lr, B) cell of
  `temperature_grid`: softmax regression on digits with L2 `weight_decay`/2·‖W‖², round(time/lr) steps."""
  loss, p0, full, x, y = _temperature_problem(float(weight_decay))
  ch = sgd_chains(loss, p0, x, y, key=jax.random.key(seed), num_chains=num_chains, learning_rate=learning_rate,
                  batch_size=int(batch_size), num_steps=int(round(time / learning_rate)))
  return float(jnp.mean(full(ch))), weight_noise_variance(ch)


def temperature_grid(*, learning_rates, batch_sizes, time: float, num_chains: int, weight_decay: float,
                     seed: int = 0) -> dict[tuple[float, int], tuple[float, float]]:
  """{(lr, B): (final training loss averaged over chains, weight noise variance)} for softmax regression on
  digits with L2 `weight_decay`/2·‖W‖², every cell run for round(time/lr) steps (`temperature_cell`)."""
  return {(float(lr), int(b)): temperature_cell(lr, b, time=time, num_chains=num_chains,
                                                 weight_decay=weight_decay, seed=seed)
          for lr in learning_rates for b in batch_sizes}


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _check_list(config, key: str, expected: str, ok) -> list:
  """config[key] must be a non-empty list whose every entry passes ok (reals are finite)."""
  values = config[key]
  good = isinstance(values, (list, tuple)) and len(values) > 0 and all(
      is_finite_real(v) and ok(v) for v in values)
  require(good, key, f"a non-empty list of {expected}", values)
  return list(values)


def _enabled(config, key: str) -> bool:
  """A study runs when its switch key is truthy (0 / None skip it), exactly as `run` reads it (NaN runs)."""
  return bool(config.get(key))


def check_config(config) -> None:
  """Checks every key `run` reads (of the studies it runs), before anything is traced; raises ConfigError
  (a ValueError) naming the key, what was expected and what was given."""
  for key in ("alphas", "betas", "show_alpha", "show_beta", "escape_steps", "kappas", "kappa_dim", "tol",
              "max_iters"):
    require(key in config, key, "set in the config", "<missing>")
  # 1. escape: heavy ball optax.sgd(α, momentum=β); β = 0 (plain GD) is read as the baseline.
  _check_list(config, "alphas", "learning rates > 0", lambda x: x > 0)
  betas = _check_list(config, "betas", "momenta in [0, 1) including 0.0 (plain GD)", lambda x: 0 <= x < 1)
  require(0.0 in betas, "betas", "a non-empty list of momenta in [0, 1) including 0.0 (plain GD)", betas)
  check_real(config.show_alpha, "show_alpha", "a finite number > 0 (the nearest of `alphas` is shown)",
              lambda x: x > 0)
  check_real(config.show_beta, "show_beta", "a number in [0, 1) (the nearest of `betas` is shown)",
              lambda x: 0 <= x < 1)
  check_int(config.escape_steps, "escape_steps")
  # 2. κ scaling: λ log-spaced in [1, κ]; the slope is a fit of log(iterations) against log κ.
  kappas = _check_list(config, "kappas", "at least 2 distinct condition numbers >= 1", lambda x: x >= 1)
  require(len(set(kappas)) >= 2, "kappas", "a non-empty list of at least 2 distinct condition numbers >= 1",
          kappas)
  check_int(config.kappa_dim, "kappa_dim", minimum=2)  # λ spans [1, κ] only with 2 or more entries
  check_real(config.tol, "tol", "a number in (0, 1) (stop at ‖x‖ <= tol ‖x₀‖)", lambda x: 0 < x < 1)
  check_int(config.max_iters, "max_iters")
  require(config.max_iters < 2 ** 31, "max_iters", "an integer < 2**31 (an int32 counter)", config.max_iters)
  # 3. β rule (skipped when beta_rule_steps is 0 / None).
  if _enabled(config, "beta_rule_steps"):
    v = config.beta_rule_steps  # the lr decays at step beta_rule_steps // 2, which must be >= 1
    require(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 2, "beta_rule_steps",
            "an integer >= 2, or 0 to skip the β-rule study", v)
    _check_list(config, "beta_rule_seeds", "integer seeds >= 0",
                lambda x: isinstance(x, numbers.Integral) and x >= 0)
    check_int(config.beta_rule_batch, "beta_rule_batch")
    check_real(config.beta_rule_lr, "beta_rule_lr", "a finite number > 0", lambda x: x > 0)
    check_real(config.beta_rule_beta, "beta_rule_beta", "a number in [0, 1)", lambda x: 0 <= x < 1)
    check_real(config.beta_rule_decay, "beta_rule_decay",
                "a number in (0, 1] (the lr factor at mid-training; the rule's β = 1 − (1 − β₀)√r)",
                lambda x: 0 < x <= 1)
    check_int(config.beta_rule_hidden, "beta_rule_hidden")
  # 4. temperature (skipped when temperature_time is 0 / None).
  if _enabled(config, "temperature_time"):
    check_real(config.temperature_time, "temperature_time",
                "a finite number > 0 (the ODE time lr·steps), or 0 to skip the temperature study", lambda x: x > 0)
    lrs = _check_list(config, "temperature_lrs", "learning rates > 0", lambda x: x > 0)
    batches = _check_list(config, "temperature_batches", "integer batch sizes >= 1",
                          lambda x: isinstance(x, numbers.Integral) and x >= 1)
    check_int(config.temperature_chains, "temperature_chains", minimum=2)  # a variance across chains
    check_real(config.temperature_weight_decay, "temperature_weight_decay", "a finite number >= 0",
                lambda x: x >= 0)
    for lr in lrs:
      require(round(config.temperature_time / lr) >= 1, "temperature_time",
              f"large enough for round(temperature_time / lr) >= 1 step at every lr of temperature_lrs "
              f"(lr {lr!r})",
              config.temperature_time)
    cells = {(float(lr), int(b)) for lr in lrs for b in batches}
    ratios = [round(lr / b, 12) for lr, b in cells]
    require(len(set(batches)) >= 2, "temperature_batches", "at least 2 distinct batch sizes (cells of equal lr "
            "are compared)", batches)
    require(len(set(ratios)) < len(ratios), "temperature_lrs",
            "learning rates that, with `temperature_batches`, give two cells of equal lr/B (they are compared)",
            lrs)


def run(config, workdir: str) -> dict[str, float]:
  """The four studies, figures and results.json; finished units are restored on a rerun (module doc)."""
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  store = UnitStore(workdir, config)
  res: dict[str, float] = {}
  crit = _critical_points()
  x_glob, x_top, x_loc = crit
  res["escape/global_min_x"] = float(x_glob)
  res["escape/global_min_L"] = float(double_well(x_glob))
  res["escape/local_min_x"] = float(x_loc)
  res["escape/local_min_L"] = float(double_well(x_loc))

  alphas, betas = list(config.alphas), list(config.betas)
  xf, traj = store.run("escape", escape_grid, alphas, betas, num_steps=int(config.escape_steps))
  glob = np.isfinite(xf) & (xf < x_top)
  res["escape/fraction_global"] = float(glob.mean())
  res["escape/fraction_global_gd"] = float(glob[:, [j for j, b in enumerate(betas) if b == 0.0]].mean())
  ia = int(np.argmin(np.abs(np.asarray(alphas) - config.show_alpha)))
  for j, b in enumerate(betas):
    res[f"escape/final_x/alpha{alphas[ia]:g}_beta{b:g}"] = float(xf[ia, j])
  jb = int(np.argmin(np.abs(np.asarray(betas) - config.show_beta)))
  res["escape/gd_final_L"] = float(double_well(xf[ia, betas.index(0.0)]))
  res["escape/hb_final_L"] = float(double_well(xf[ia, jb]))

  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  im = axes[0].imshow(np.where(glob, 1.0, 0.0), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
  axes[0].set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
  axes[0].set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
  axes[0].set_xlabel("momentum β")
  axes[0].set_ylabel("learning rate α")
  for i in range(len(alphas)):
    for j in range(len(betas)):
      axes[0].text(j, i, f"{xf[i, j]:.2f}", ha="center", va="center", fontsize=6)
  axes[0].set_title("final x from x₀=2 (green: global basin x<0.34)")
  fig.colorbar(im, ax=axes[0])
  xs = np.linspace(-1.6, 2.1, 400)
  axes[1].plot(xs, double_well(xs), "k", lw=1)
  for j in sorted({betas.index(0.0), jb, len(betas) - 1}):
    tr = traj[ia, j]
    axes[1].plot(tr, double_well(tr), ".-", ms=2, lw=0.5, label=f"α={alphas[ia]:g}, β={betas[j]:g}")
  axes[1].set_ylim(-0.8, 3)
  axes[1].set_xlabel("x")
  axes[1].set_title("L(x) = x⁴/4 − x²/2 + 0.3x and trajectories")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "escape.png"), dpi=110)
  plt.close(fig)

  kappas = list(config.kappas)
  iters = {m: store.run(f"kappa/{m}", kappa_curve, m, kappas, dim=config.kappa_dim, tol=config.tol,
                        max_iters=config.max_iters) for m in ("gd", "heavy_ball", "nesterov")}
  for m, ns in iters.items():
    for k, n in zip(kappas, ns):
      res[f"kappa/iterations/{m}/kappa{k:g}"] = float(n)
    res[f"kappa/slope/{m}"] = float(np.polyfit(np.log(kappas), np.log(ns), 1)[0])
    res[f"kappa/hit_max_iters/{m}"] = float(sum(n >= config.max_iters for n in ns))
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for m, ns in iters.items():
    ax.loglog(kappas, ns, "o-", label=f"{m} (slope {res[f'kappa/slope/{m}']:.2f})")
  ax.loglog(kappas, np.asarray(kappas) * iters["gd"][0] / kappas[0], "k:", lw=0.7, label="∝ κ")
  ax.loglog(kappas, np.sqrt(kappas) * iters["heavy_ball"][0] / np.sqrt(kappas[0]), "k--", lw=0.7,
            label="∝ √κ")
  ax.set_xlabel("condition number κ")
  ax.set_ylabel(f"iterations to ‖x‖ ≤ {config.tol:g}‖x₀‖")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "kappa_scaling.png"), dpi=110)
  plt.close(fig)

  if config.get("beta_rule_steps"):
    _beta_rule(config, workdir, res, plt, store)
  if config.get("temperature_time"):
    _temperature(config, workdir, res, plt, store)
  return write_results(workdir, res)


def _beta_rule(config, workdir, res, plt, store):
  n = int(config.beta_rule_steps)
  out = {}
  for arm in ("fixed_beta", "beta_rule"):
    out.update(store.run(f"beta_rule/{arm}", beta_rule_ablation, seeds=list(config.beta_rule_seeds), num_steps=n,
                         batch_size=config.beta_rule_batch, learning_rate=config.beta_rule_lr,
                         beta=config.beta_rule_beta, decay_at=n // 2, decay_factor=config.beta_rule_decay,
                         hidden=config.beta_rule_hidden, arms=(arm,)))
  res["beta_rule/beta_after_decay"] = 1 - (1 - config.beta_rule_beta) * np.sqrt(config.beta_rule_decay)
  for arm in ("fixed_beta", "beta_rule"):
    for k in ("train_loss", "test_loss", "test_accuracy"):
      v = out[f"{arm}/{k}"]
      res[f"beta_rule/{arm}/{k}"] = float(v.mean())
      res[f"beta_rule/{arm}/{k}_std"] = float(v.std())
  for k in ("train_loss", "test_loss", "test_accuracy"):
    d = out[f"beta_rule/{k}"] - out[f"fixed_beta/{k}"]  # paired: same seed, same init and batches
    res[f"beta_rule/diff/{k}"] = float(d.mean())
    res[f"beta_rule/diff/{k}_sem"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for arm in ("fixed_beta", "beta_rule"):
    c = out[f"{arm}/curve"]
    ax.semilogy(50 * np.arange(c.shape[1]) + 1, c.mean(0), label=arm)
  ax.axvline(n // 2, color="k", lw=0.5)
  ax.set_xlabel("step")
  ax.set_ylabel("full-batch training loss (mean over seeds)")
  ax.set_title(f"digits MLP, lr ×{config.beta_rule_decay:g} at step {n // 2}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "beta_rule.png"), dpi=110)
  plt.close(fig)


def _temperature(config, workdir, res, plt, store):
  table = {}
  for lr in config.temperature_lrs:
    for b in config.temperature_batches:
      table[(float(lr), int(b))] = store.run(
          f"temperature/lr{lr:g}_B{b}", temperature_cell, lr, b, time=config.temperature_time,
          num_chains=config.temperature_chains, weight_decay=config.temperature_weight_decay)
  for (lr, b), (loss, var) in table.items():
    res[f"temperature/loss/lr{lr:g}_B{b}"] = loss
    res[f"temperature/variance/lr{lr:g}_B{b}"] = var
  ratio = lambda k: round(k[0] / k[1], 12)  # noqa: E731
  lr_of = lambda k: k[0]  # noqa: E731
  var = {k: v[1] for k, v in table.items()}
  loss = {k: v[0] for k, v in table.items()}
  log_gap = lambda a, b: abs(np.log(a / b))  # noqa: E731
  abs_gap = lambda a, b: abs(a - b)  # noqa: E731
  res["temperature/variance_log_gap/equal_ratio"] = pair_mismatch(var, ratio, log_gap)
  res["temperature/variance_log_gap/equal_lr"] = pair_mismatch(var, lr_of, log_gap)
  res["temperature/loss_gap/equal_ratio"] = pair_mismatch(loss, ratio, abs_gap)
  res["temperature/loss_gap/equal_lr"] = pair_mismatch(loss, lr_of, abs_gap)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for lr in config.temperature_lrs:
    ks = [k for k in table if k[0] == float(lr)]
    for ax, i in zip(axes, (1, 0)):
      ax.loglog([k[0] / k[1] for k in ks], [table[k][i] for k in ks], "o-", label=f"lr {lr:g}")
  axes[0].set_ylabel("weight noise variance (across chains)")
  axes[1].set_ylabel("final training loss")
  for ax in axes:
    ax.set_xlabel("lr / B")
    ax.legend(fontsize=7)
  fig.suptitle(f"softmax regression on digits, SGD with replacement, time lr·steps = {config.temperature_time:g}")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "temperature.png"), dpi=110)
  plt.close(fig)
