"""Momentum as a damped ODE: the shallow-minimum escape picture and κ vs √κ iteration counts (spec §3.5).

Article: 从动力学角度看优化算法（一）：从SGD到动量加速 (https://kexue.fm/archives/5655).

`run(config, workdir)` is the runner of experiments/optim/momentum_ode.py.

1. Escape: L(x) = x⁴/4 − x²/2 + 0.3x from x₀ = 2 (local minimum x ≈ 0.786, global x ≈ −1.125, barrier
   top x ≈ 0.338). Heavy ball `optax.sgd(α, momentum=β)` over an (α, β) grid; β = 0 is plain GD. A run
   ends in the global basin when its final x is left of the barrier top.
2. Acceleration: ½ xᵀ diag(λ) x with λ log-spaced in [1, κ] (d = `kappa_dim`). GD at its best constant
   step 2/(L + μ), heavy ball at Polyak's optimal α = 4/(√L + √μ)², β = ((√κ − 1)/(√κ + 1))², and Nesterov
   with α = 1/L, β = (√κ − 1)/(√κ + 1). Counted: iterations until ‖x_t‖ ≤ `tol` ‖x₀‖; the slope of
   log(iterations) against log κ is ≈ 1 for GD and ≈ 1/2 for the momentum methods.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.core.metrics import write_results


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


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def run(config, workdir: str) -> dict[str, float]:
  os.makedirs(workdir, exist_ok=True)
  res: dict[str, float] = {}
  crit = _critical_points()
  x_glob, x_top, x_loc = crit
  res["escape/global_min_x"] = float(x_glob)
  res["escape/global_min_L"] = float(double_well(x_glob))
  res["escape/local_min_x"] = float(x_loc)
  res["escape/local_min_L"] = float(double_well(x_loc))

  alphas, betas = list(config.alphas), list(config.betas)
  xf, traj = escape_grid(alphas, betas, num_steps=int(config.escape_steps))
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
  iters = {m: [iterations_to_tol(m, k, dim=config.kappa_dim, tol=config.tol, max_iters=config.max_iters)
               for k in kappas] for m in ("gd", "heavy_ball", "nesterov")}
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

  return write_results(workdir, res)
