"""A GAN on a ring of 8 Gaussians: what generator EMA, the zero-centred penalty and L2-on-D do (spec §4.6).

Article: 从动力学角度看优化算法（四）：GAN的第三个阶段 (https://kexue.fm/archives/6583).

The Dirac GAN of `kexue_jax.optim.dirac_gan` shows the dynamics on one point; this is the same question on
a real (small) GAN. Generator G: z ∈ ℝ^{z_dim} ~ N(0, I) → 2×`hidden` ReLU MLP → ℝ²; discriminator D:
ℝ² → 2×`hidden` ReLU MLP → logit. Both are plain pytrees of arrays (dicts of 'w', 'b' per layer). Losses,
both minimised (the non-saturating GAN of the article's "vanilla" row):

  L_D = E softplus(−D(x_real)) + E softplus(D(G(z))) + w_gp E‖∇_x D(x_real)‖²   (zero-centred, "R1")
  L_G = E softplus(−D(G(z)))

L2 on D is weight decay (w_l2/2)‖φ‖² added to D's gradient before Adam (`optax.add_decayed_weights`);
the article's "light L2 penalty on the discriminator weights". The generator EMA θ_ema ← δθ_ema + (1−δ)θ is
kept after every step and does not change the trajectory (the article: the most powerful trick, applied
to the generator), so one training gives both the raw and the EMA generator.

Metrics (Srivastava et al. 2017 / Metz et al. 2017 convention, as the spec states them): a sample is
"high quality" when it lies within 3σ (Euclidean) of some mode centre, σ the per-coordinate std of the
modes; a mode is "covered" when more than 1% of all samples are high-quality samples of that mode (the
nearest centre). The energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ (V-statistics, so identical samples give
exactly 0; `kexue_jax.diffusion.metrics.energy_distance`) compares samples with held-out data, next to the
same statistic between two independent data samples of the same sizes.

The training step is data-parallel: the real batch and the latent batch are sharded over the mesh's batch
axes with a NamedSharding, the parameters and optimizer states are replicated, and one `jax.jit` with
in/out shardings does both players' updates (simultaneous: both gradients at the old point; alternating:
D first, then G against the new D). 8 simulated devices give the losses of one (tests/optim/test_ring_gan.py).

`run` is resumable job by job (`kexue_jax.core.units.UnitStore`, saved under `workdir/units/`): each
training 'train/<regulariser>/seed<k>' is a unit (its per-step losses, coverage evaluations, final raw and
EMA samples and its training time). Rerun the same command with the same --workdir: finished trainings are
restored instead of recomputed, so a killed run loses at most the training in progress and the resumed
results equal an uninterrupted run's, except '<reg>/train_seconds', which keeps the time measured when
the training was computed. Resuming with a different config is a ConfigError.

References:
  https://kexue.fm/archives/6583
  Mescheder, Geiger, Nowozin, "Which Training Methods for GANs do actually Converge?", ICML 2018
    (arXiv:1801.04406) -- the zero-centred penalty R1.
  Metz, Poole, Pfau, Sohl-Dickstein, "Unrolled Generative Adversarial Networks", ICLR 2017
    (arXiv:1611.02163) -- the ring of 8 Gaussians and the 3σ quality / mode metrics.
  Yazıcı et al., "The Unusual Effectiveness of Averaging in GAN Training", ICLR 2019 (arXiv:1806.04498).
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.core import sharding
from kexue_jax.core.metrics import MetricWriter, write_results
from kexue_jax.core.units import UnitStore
from kexue_jax.diffusion.metrics import energy_distance as _energy_distance
from kexue_jax.optim import _checks

__all__ = ["DATASETS", "SCHEMES", "REGULARISERS", "ring_centres", "sample_ring", "ring_data", "mode_statistics",
           "energy_distance", "init_mlp", "mlp", "zero_centred_gradient_penalty", "gan_losses",
           "make_train_step", "train", "run"]

DATASETS = ("8gaussians", "ring")
SCHEMES = ("simultaneous", "alternating")
REGULARISERS = ("none", "zero_gp", "l2")


# ------------------------------------------------------------------------------------------------- data

def ring_centres(num_modes: int, radius: float) -> np.ndarray:
  """The mode centres radius·(cos 2πk/K, sin 2πk/K), k = 0..K−1, float64 [K, 2]."""
  if not isinstance(num_modes, int) or num_modes < 1:
    raise ValueError(f"`num_modes` must be a positive int; got {num_modes!r}")
  _checks.check_number("radius", radius, strict=True)
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_ring(n: int, *, num_modes: int, radius: float, std: float, seed) -> np.ndarray:
  """n points of the ring mixture (1/K) Σ_k N(c_k, std² I), float32 [n, 2]."""
  _checks.check_number("std", std, strict=True)
  centres = ring_centres(num_modes, radius)
  rng = np.random.default_rng(seed)
  k = rng.integers(0, num_modes, size=n)
  return (centres[k] + std * rng.standard_normal((n, 2))).astype(np.float32)


def ring_data(config, split: str) -> tuple[np.ndarray, np.ndarray, float]:
  """(points float32 [n, 2], centres float64 [K, 2], per-coordinate std σ) of the configured ring.

  '8gaussians' is `kexue_jax.data.load('8gaussians', split)` (centres 4/1.414 ≈ 2.83 from 0 at multiples
  of 45°, σ = 0.5/1.414 ≈ 0.354; 10 000 train / 2 000 test points); 'ring' is `sample_ring` with
  `config.radius`, `config.std`, 8 modes and `config.ring_size[split]` points.
  """
  if config.data == "8gaussians":
    from kexue_jax import data
    from kexue_jax.data import toy
    x = data.load("8gaussians", split).arrays["x"]
    return (np.asarray(x, np.float32), toy.eight_gaussian_centres(),
            toy.EIGHT_GAUSSIANS_STD / toy.EIGHT_GAUSSIANS_DIVISOR)
  n = int(dict(config.ring_size)[split])
  x = sample_ring(n, num_modes=8, radius=config.radius, std=config.std, seed=[config.data_seed, split == "test"])
  return x, ring_centres(8, config.radius), float(config.std)


# ---------------------------------------------------------------------------------------------- metrics

def mode_statistics(samples, centres, std: float, *, num_std: float = 3.0,
                    min_fraction: float = 0.01) -> dict[str, float]:
  """Mode coverage and the high-quality fraction of `samples` [n, 2] against mode `centres` [K, 2].

  A sample is high quality when its distance to the nearest centre is ≤ num_std·std. Mode k is covered
  when the high-quality samples whose nearest centre is k are more than `min_fraction` of all n samples.

  Returns:
    {'mode_coverage': covered modes (0..K), 'high_quality_fraction': in [0, 1],
     'mode_fraction_min': smallest per-mode share of all samples (0 when a mode is missed)}.
  """
  x = np.asarray(samples, np.float64)
  c = np.asarray(centres, np.float64)
  _checks.check_number("std", std, strict=True)
  if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1] or len(x) < 1:
    raise ValueError(f"`samples` and `centres` must be [n >= 1, d] and [K, d]; got {x.shape} and {c.shape}")
  dist = np.sqrt(np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=-1))  # [n, K]
  nearest = np.argmin(dist, axis=1)
  good = dist[np.arange(len(x)), nearest] <= num_std * std
  share = np.bincount(nearest[good], minlength=len(c)) / len(x)  # [K]
  return {"mode_coverage": float(np.sum(share > min_fraction)), "high_quality_fraction": float(good.mean()),
          "mode_fraction_min": float(share.min())}


def energy_distance(x, y) -> float:
  """2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ over the empirical distributions (V-statistics): ≥ 0, and exactly
  0 when the two samples are the same multiset. Reuses `kexue_jax.diffusion.metrics.energy_distance`."""
  return _energy_distance(x, y, unbiased=False)


# ----------------------------------------------------------------------------------------------- models

def init_mlp(key, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
  """He-normal weights and zero biases for the layers sizes[0] → sizes[1] → … (a list of {'w', 'b'})."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [dict(w=jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), b=jnp.zeros(b))
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x):
  """ReLU MLP: x [b, sizes[0]] -> [b, sizes[-1]] (no activation on the last layer)."""
  for i, layer in enumerate(params):
    x = x @ layer["w"] + layer["b"][None, :]
    if i < len(params) - 1:
      x = jax.nn.relu(x)
  return x


def zero_centred_gradient_penalty(d_fn: Callable, d_params, x) -> jax.Array:
  """E_x ‖∇_x D(x)‖² over the batch x [b, 2] (the zero-centred penalty R1 when x is real data).

  `d_fn(d_params, x [b, 2]) -> [b]` must treat the rows independently (no batch statistics), so the
  gradient of Σ_i D(x_i) with respect to x holds every row's ∇_x D(x_i) in one backward pass.
  """
  grads = jax.grad(lambda xx: jnp.sum(d_fn(d_params, xx)))(x)  # [b, 2]
  return jnp.mean(jnp.sum(jnp.square(grads), axis=-1))


def _d_fn(d_params, x):
  return mlp(d_params, x)[:, 0]


def gan_losses(d_params, g_params, x_real, z, *, zero_gp: float = 0.0
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """(L_D, L_G, parts) of the non-saturating GAN with the optional zero-centred penalty on real data.

  Args:
    d_params, g_params: the `init_mlp` pytrees of D (2 → … → 1) and G (z_dim → … → 2).
    x_real: [b, 2] real points; z: [b, z_dim] latents.
    zero_gp: weight w ≥ 0 of w·E‖∇_x D(x_real)‖².
  """
  fake = mlp(g_params, z)
  d_real, d_fake = _d_fn(d_params, x_real), _d_fn(d_params, fake)
  gp = zero_centred_gradient_penalty(_d_fn, d_params, x_real)
  loss_d = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake)) + zero_gp * gp
  loss_g = jnp.mean(jax.nn.softplus(-d_fake))
  return loss_d, loss_g, {"grad_penalty": gp}


# ------------------------------------------------------------------------------------------------ train

def _check_config(config) -> None:
  _checks.check_choice("data", config.data, DATASETS)
  _checks.check_choice("scheme", config.scheme, SCHEMES)
  for k in ("num_steps", "batch_size", "hidden", "z_dim", "num_eval_samples", "eval_every"):
    v = config[k]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"`{k}` must be a positive int; got {v!r}")
  if config.num_eval_samples < 2:
    raise ValueError(f"`num_eval_samples` must be >= 2; got {config.num_eval_samples}")
  for name in config.regularisers:
    _checks.check_choice("regularisers entry", name, REGULARISERS)
  for k in ("d_learning_rate", "g_learning_rate"):
    _checks.check_number(k, config[k], strict=True)
  _checks.check_number("zero_gp", config.zero_gp)
  _checks.check_number("l2", config.l2)
  _checks.check_number("ema_decay", config.ema_decay, maximum=1.0, strict_max=True)
  _checks.check_number("adam_b1", config.adam_b1, maximum=1.0, strict_max=True)
  if config.data == "ring":
    _checks.check_number("radius", config.radius, strict=True)
    _checks.check_number("std", config.std, strict=True)


def make_train_step(config, regulariser: str, mesh):
  """(init(key) -> state, step(state, x_real, z) -> (state, metrics)) for one regulariser on `mesh`.

  state = (d_params, g_params, d_opt_state, g_opt_state, g_ema), all replicated; x_real [b, 2] and
  z [b, z_dim] are sharded over the batch axes. metrics: 'loss_d', 'loss_g', 'grad_penalty' (scalars).
  """
  zero_gp = float(config.zero_gp) if regulariser == "zero_gp" else 0.0
  l2 = float(config.l2) if regulariser == "l2" else 0.0
  adam = functools.partial(optax.adam, b1=config.adam_b1, b2=0.999)
  # L2 on D is a gradient term (w/2)‖φ‖² seen by Adam, as a loss term would be (not decoupled decay).
  d_tx = optax.chain(optax.add_decayed_weights(l2), adam(config.d_learning_rate)) if l2 else adam(
      config.d_learning_rate)
  g_tx = adam(config.g_learning_rate)
  decay = float(config.ema_decay)
  h = config.hidden

  def init(key):
    kd, kg = jax.random.split(key)
    d = init_mlp(kd, (2, h, h, 1))
    g = init_mlp(kg, (config.z_dim, h, h, 2))
    return d, g, d_tx.init(d), g_tx.init(g), g

  def step(state, x_real, z):
    d, g, sd, sg, ema = state
    (loss_d, parts), gd = jax.value_and_grad(
        lambda dp: (lambda ld, lg, p: (ld, p))(*gan_losses(dp, g, x_real, z, zero_gp=zero_gp)), has_aux=True)(d)
    ud, sd = d_tx.update(gd, sd, d)
    new_d = optax.apply_updates(d, ud)
    d_for_g = new_d if config.scheme == "alternating" else d
    loss_g, gg = jax.value_and_grad(lambda gp: gan_losses(d_for_g, gp, x_real, z)[1])(g)
    ug, sg = g_tx.update(gg, sg, g)
    new_g = optax.apply_updates(g, ug)
    ema = optax.incremental_update(new_g, ema, 1.0 - decay)
    return (new_d, new_g, sd, sg, ema), {"loss_d": loss_d, "loss_g": loss_g, **parts}

  rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  step = jax.jit(step, in_shardings=(rep, bsh, bsh), out_shardings=(rep, rep), donate_argnums=(0,))
  init = jax.jit(init, out_shardings=rep)
  return init, step


def train(config, regulariser: str, seed: int, mesh, x_train: np.ndarray, *,
          on_eval: Callable | None = None) -> tuple[tuple, dict[str, np.ndarray]]:
  """Trains one GAN; returns (final state, per-step metrics as float arrays [num_steps]).

  Batch s (real indices and latents) is drawn from numpy's generator seeded by (seed, s) alone, so the
  data do not depend on the device count. `on_eval(step, state)` is called every `eval_every` steps.
  """
  init, step = make_train_step(config, regulariser, mesh)
  bsh = sharding.batch_sharding(mesh)
  state = init(jax.random.key(seed))
  rows = []
  for s in range(config.num_steps):
    rng = np.random.default_rng([seed, 7, s])
    idx = rng.integers(0, len(x_train), size=config.batch_size)
    z = rng.standard_normal((config.batch_size, config.z_dim)).astype(np.float32)
    batch = sharding.put_batch(dict(x=x_train[idx], z=z), bsh)
    state, m = step(state, batch["x"], batch["z"])
    rows.append(m)
    if (s + 1) % 16 == 0:  # block regularly: simulated CPU devices can deadlock on long async queues
      jax.block_until_ready(m)
    if on_eval is not None and ((s + 1) % config.eval_every == 0 or s + 1 == config.num_steps):
      on_eval(s + 1, state)
  metrics = {k: np.asarray(jax.device_get(jnp.stack([r[k] for r in rows]))) for k in rows[0]}
  return state, metrics


def _generate(g_params, z):
  return mlp(g_params, z)


def run(config, workdir: str) -> dict[str, float]:
  """Trains every (regulariser, seed); scores the raw and the EMA generator; writes results.json + figures.

  Keys: '<reg>/<gen>/<metric>' (mean over seeds) and '<reg>/<gen>/<metric>/seed<k>', reg in
  config.regularisers, gen in ('raw', 'ema'), metric in (mode_coverage, high_quality_fraction,
  energy_distance, mode_fraction_min, coverage_last_half_mean, coverage_last_half_min); 'data/energy_distance'
  is the data-vs-data reference; '<reg>/final_loss_d', '<reg>/final_loss_g'. Per-step losses (every
  step when num_steps ≤ 500, else 500 rows per training) go to workdir/metrics.jsonl as
  '<reg>/seed<k>/loss_d' etc. Each training is a unit: a rerun in the same workdir restores the finished ones
  (module docstring); '<reg>/train_seconds' is then the time measured when the training was computed.
  """
  _check_config(config)
  os.makedirs(workdir, exist_ok=True)
  store = UnitStore(workdir, config)
  mesh = sharding.make_mesh(config.get("mesh"))
  x_train, centres, std = ring_data(config, "train")
  x_test = ring_data(config, "test")[0]
  n_eval = int(config.num_eval_samples)
  held_out = x_test[:n_eval]
  # The data-vs-data reference: training points (as many as the samples) against the same held-out set.
  ref_rng = np.random.default_rng([config.data_seed, 99])
  data_sample = x_train[ref_rng.choice(len(x_train), size=min(n_eval, len(x_train)), replace=False)]
  res: dict[str, float] = {"data/energy_distance": energy_distance(data_sample, held_out)}
  res.update({f"data/{k}": v for k, v in mode_statistics(data_sample, centres, std).items()})
  gen = jax.jit(_generate)
  z_eval = jnp.asarray(np.random.default_rng([config.data_seed, 5]).standard_normal((n_eval, config.z_dim)),
                       jnp.float32)
  shown: dict[str, np.ndarray] = {}
  writer = MetricWriter(workdir, resume_step=0)  # a rerun in the same workdir starts the file afresh
  curves: dict[str, list] = {}
  per_seed: dict[str, list[float]] = {}

  def add(key, value):
    per_seed.setdefault(key, []).append(float(value))

  def train_and_sample(reg, seed):
    """One training as host values: per-step metrics, coverage evaluations, final samples, seconds."""
    t0 = time.perf_counter()
    cov = {"raw": [], "ema": []}

    def on_eval(step, state):
      for name, g in (("raw", state[1]), ("ema", state[4])):
        s = np.asarray(gen(g, z_eval))
        cov[name].append((step, mode_statistics(s, centres, std)["mode_coverage"]))

    state, m = train(config, reg, seed, mesh, x_train, on_eval=on_eval)
    samples = {name: np.asarray(gen(g, z_eval)) for name, g in (("raw", state[1]), ("ema", state[4]))}
    return dict(metrics=m, coverage=cov, samples=samples, seconds=time.perf_counter() - t0)

  for reg in config.regularisers:
    for seed in config.seeds:
      out = store.run(f"train/{reg}/seed{seed}", train_and_sample, reg, seed)
      m, cov = out["metrics"], out["coverage"]
      stride = max(1, config.num_steps // 500)
      for i in range(stride - 1, config.num_steps, stride):
        writer.write(i + 1, {f"{reg}/seed{seed}/{k}": v[i] for k, v in m.items()})
      tail = max(1, config.num_steps // 10)
      add(f"{reg}/final_loss_d", m["loss_d"][-tail:].mean())
      add(f"{reg}/final_loss_g", m["loss_g"][-tail:].mean())
      add(f"{reg}/train_seconds", out["seconds"])
      for name in ("raw", "ema"):
        s = out["samples"][name]
        if not np.all(np.isfinite(s)):
          s = np.nan_to_num(s, nan=1e6, posinf=1e6, neginf=-1e6)
        for k, v in mode_statistics(s, centres, std).items():
          add(f"{reg}/{name}/{k}", v)
        add(f"{reg}/{name}/energy_distance", energy_distance(s, held_out))
        later = [c for st, c in cov[name] if st > config.num_steps // 2] or [cov[name][-1][1]]
        add(f"{reg}/{name}/coverage_last_half_mean", np.mean(later))
        add(f"{reg}/{name}/coverage_last_half_min", np.min(later))
        if seed == config.seeds[0]:
          shown[f"{reg}/{name}"] = s
          curves[f"{reg}/{name}"] = cov[name]
  for k, vals in per_seed.items():
    res[k] = float(np.mean(vals))
    for seed, v in zip(config.seeds, vals):
      res[f"{k}/seed{seed}"] = v

  _figures(workdir, config, shown, curves, held_out, centres, std, res)
  return write_results(workdir, res)


def _figures(workdir, config, shown, curves, held_out, centres, std, res) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(shown)
  cols = len(names) // 2 if len(names) > 1 else 1
  fig, axes = plt.subplots(2, cols + 1, figsize=(3 * (cols + 1), 6), squeeze=False)
  lim = 1.35 * float(np.max(np.linalg.norm(centres, axis=1)))
  t = np.linspace(0, 2 * np.pi, 60)
  panels = [("data (held out)", held_out, None)] + [(n, shown[n], n) for n in names]
  order = [(0, 0), (1, 0)] + [(r, c + 1) for c in range(cols) for r in (0, 1)]
  axes[1, 0].axis("off")
  for (title, pts, key), (r, c) in zip(panels, order[:1] + order[2:]):
    ax = axes[r, c]
    ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
    for cx, cy in centres:
      ax.plot(cx + 3 * std * np.cos(t), cy + 3 * std * np.sin(t), "r-", lw=0.5)
    if key is not None:
      title = (f"{key}\ncov {res[f'{key}/mode_coverage/seed{config.seeds[0]}']:.0f}, "
               f"hq {res[f'{key}/high_quality_fraction/seed{config.seeds[0]}']:.2f}, "
               f"ED {res[f'{key}/energy_distance/seed{config.seeds[0]}']:.3f}")
    ax.set_title(title, fontsize=8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
  fig.suptitle(f"ring GAN, seed {config.seeds[0]}, {config.num_steps} steps (red: 3σ circles)", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "ring_gan_samples.png"), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, cv in curves.items():
    if cv:
      ax.plot([a for a, _ in cv], [b for _, b in cv], ".-" if "ema" in name else "-", label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("modes covered")
  ax.set_ylim(-0.3, 8.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "ring_gan_coverage.png"), dpi=110)
  plt.close(fig)
