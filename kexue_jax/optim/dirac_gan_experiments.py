"""Dirac-GAN dynamics grid: variant × training scheme × regulariser, final ‖θ‖ heatmap (spec §4.6).

Article: 从动力学角度看优化算法（四）：GAN的第三个阶段 (https://kexue.fm/archives/6583).

`run(config, workdir)` is the runner of experiments/optim/dirac_gan.py. Real data is the point 0, so
‖θ‖ is the generator's distance to the equilibrium: ≪ ‖θ₀‖ means convergence, ≈ ‖θ₀‖ an orbit, ≫ a
spiral out. Each cell trains both players with `optax.sgd(lr)` for `num_steps` steps from the
author's start (φ, θ) = ((0.1, 0.2), (0.2, 0.1)) (bojone/gan, gan_numeric.py). Column 'ema' is the plain
run read through the generator EMA (`ema_decay`), which does not change the trajectory.
A second figure integrates the continuous-time fields with RK4 (the article's pictures).

Resumable job by job (`kexue_jax.core.units.UnitStore`, saved under `workdir/units/`): the units are
the heatmap rows 'grid/<variant>/<scheme>' (every regulariser's training of that row) and the RK4 curves
'ode/<variant>' ('ode/gan_qp_l2' with L2). Rerun the same command with the same --workdir: finished units
are restored instead of recomputed, so a killed run loses at most the job in progress and the resumed
results equal an uninterrupted run's. Resuming with a different config is a ConfigError.
"""
from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.optim.dirac_gan import dirac_gan_field, integrate_field, train_dirac_gan
from kexue_jax.core.config import ConfigError, check_int, check_real, check_real_dict, require
from kexue_jax.core.metrics import write_results
from kexue_jax.core.units import UnitStore

# name -> (variant, kwargs of dirac_gan_field); λ and c as in the author's gan_numeric.py.
VARIANTS = {
    "vanilla": ("vanilla", {}),
    "wgan": ("wgan", {}),
    "wgan_gp_c1": ("wgan_gp", dict(lam=0.1, c=1.0)),
    "wgan_gp_c0": ("wgan_gp", dict(lam=0.1, c=0.0)),
    "gan_qp": ("gan_qp", dict(lam=1.0)),
}
SCHEMES = ("simultaneous", "alternating", "optimistic")
REGULARISERS = ("none", "l2", "zero_gp", "consensus", "nk", "ema")


WEIGHTS = ("l2", "zero_gp", "consensus", "nk")


def _check_names(config, key: str, choices) -> list[str]:
  names = config[key]
  require(isinstance(names, (list, tuple)) and len(names) > 0, key,
          f"a non-empty list of names from {choices}", names)
  for n in names:
    if n not in choices:
      raise ConfigError(f"`{key}` must be a non-empty list of names from {choices}; got an entry {n!r}")
  return list(names)


def check_config(config) -> None:
  """Checks every key `run` reads, before anything is traced; raises ConfigError (a ValueError) naming
  the key (dotted path), what was expected and what was given."""
  for key in ("variants", "schemes", "regularisers", "weights", "lr", "num_steps", "ema_decay", "ode_dt",
              "ode_steps"):
    require(key in config, key, "set in the config", "<missing>")
  variants = _check_names(config, "variants", tuple(VARIANTS))
  _check_names(config, "schemes", SCHEMES)
  regs = _check_names(config, "regularisers", REGULARISERS)
  weights = check_real_dict(config.weights, "weights", WEIGHTS, "a finite number >= 0", lambda x: x >= 0)
  for name in WEIGHTS:
    if name in regs:
      require(name in weights, f"weights.{name}", f"set (regulariser {name!r} is in `regularisers`)",
              "<missing>")
  if "gan_qp" in variants:
    require("l2" in weights, "weights.l2", "set (the ODE figure draws gan_qp + L2)", "<missing>")
  check_real(config.lr, "lr", "a finite number > 0", lambda x: x > 0)
  check_int(config.num_steps, "num_steps")
  check_real(config.ema_decay, "ema_decay", "a number in [0, 1)", lambda x: 0 <= x < 1)
  check_real(config.ode_dt, "ode_dt", "a finite number > 0", lambda x: x > 0)
  check_int(config.ode_steps, "ode_steps")


def _field(variant: str, reg: str, weights: dict[str, float]):
  base, kw = VARIANTS[variant]
  kw = dict(kw)
  if reg in ("l2", "zero_gp", "consensus", "nk"):
    kw[reg] = weights[reg]
  return dirac_gan_field(base, **kw)


def _grid_row(variant: str, scheme: str, regs: list[str], phi0, theta0, config) -> dict[str, float]:
  """{regulariser: final ‖θ‖} of one heatmap row; 'ema' reads the plain run's generator EMA."""
  weights = dict(config.weights)
  norms: dict[str, float] = {}
  plain = None
  for r in regs:
    if r == "ema" and plain is not None:
      out = plain
    else:
      out = train_dirac_gan(_field(variant, r, weights), phi0, theta0, d_optimizer=optax.sgd(config.lr),
                            g_optimizer=optax.sgd(config.lr), num_steps=int(config.num_steps),
                            scheme=scheme, ema_decay=config.ema_decay)
      if r in ("none", "ema"):
        plain = out
    norms[r] = float(out["theta_ema_norm"][-1] if r == "ema" else out["theta_norm"][-1])
  return norms


def _ode_norms(field, phi0, theta0, config) -> np.ndarray:
  """‖θ(t)‖ of the RK4 integration of `field`, t = 0, dt, …, ode_steps·dt."""
  _, _, norms = integrate_field(field, phi0, theta0, dt=config.ode_dt, num_steps=int(config.ode_steps))
  return np.asarray(norms)


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def run(config, workdir: str) -> dict[str, float]:
  """The heatmap and ODE figures and results.json; finished units are restored on a rerun (module doc)."""
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  store = UnitStore(workdir, config)
  phi0, theta0 = jnp.array([0.1, 0.2]), jnp.array([0.2, 0.1])
  weights = dict(config.weights)
  variants, schemes, regs = list(config.variants), list(config.schemes), list(config.regularisers)
  res: dict[str, float] = {"theta0_norm": float(jnp.linalg.norm(theta0))}
  mat = np.full((len(variants) * len(schemes), len(regs)), np.nan)
  for i, v in enumerate(variants):
    for j, s in enumerate(schemes):
      norms = store.run(f"grid/{v}/{s}", _grid_row, v, s, regs, phi0, theta0, config)
      for k, r in enumerate(regs):
        norm = norms[r]
        # A spiral that overflows is reported as inf (finite cap would hide it).
        res[f"{v}/{s}/{r}/theta_norm"] = norm if math.isfinite(norm) else math.inf
        mat[i * len(schemes) + j, k] = norm

  plt = _plt()
  fig, ax = plt.subplots(figsize=(1.3 * len(regs) + 3, 0.4 * mat.shape[0] + 1.5))
  shown = np.log10(np.clip(np.where(np.isfinite(mat), mat, 1e6), 1e-8, 1e6))
  im = ax.imshow(shown, cmap="coolwarm", vmin=-4, vmax=4, aspect="auto")
  ax.set_xticks(range(len(regs)), regs)
  ax.set_yticks(range(mat.shape[0]), [f"{v} / {s}" for v in variants for s in schemes], fontsize=7)
  for a in range(mat.shape[0]):
    for b in range(len(regs)):
      ax.text(b, a, f"{mat[a, b]:.2g}", ha="center", va="center", fontsize=6)
  fig.colorbar(im, ax=ax, label="log10 final ‖θ‖ (‖θ₀‖ = 0.22)")
  ax.set_title(f"Dirac GAN: final ‖θ‖ after {config.num_steps} steps of sgd({config.lr:g})")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "dirac_gan_heatmap.png"), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for v in variants:
    for extra in ({}, dict(l2=weights["l2"])) if v == "gan_qp" else ({},):
      base, kw = VARIANTS[v]
      norms = store.run(f"ode/{v}{'_l2' if extra else ''}", _ode_norms, dirac_gan_field(base, **kw, **extra),
                        phi0, theta0, config)
      t = config.ode_dt * np.arange(len(norms))
      ax.plot(t, norms, label=v + (" + L2" if extra else ""))
      res[f"ode/{v}{'_l2' if extra else ''}/final_theta_norm"] = float(norms[-1])
  ax.set_yscale("log")
  ax.set_xlabel("time")
  ax.set_ylabel("‖θ(t)‖")
  ax.set_title("continuous-time Dirac GAN (RK4)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "dirac_gan_ode.png"), dpi=110)
  plt.close(fig)

  return write_results(workdir, res)
