"""`optimizer_stats`: the per-step scalars of the kexue_jax optimizers, ready for a metrics writer.

Answers the most requested optax feature (optax#206, flax#4320): read the effective learning rate and
the internal step-size state without knowing where it sits in a chain. Works under `jit`.

References:
  https://kexue.fm/archives/8968
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kexue_jax.optim.exponentiated_gradient import EGSGDState, EGStepSizeState
from kexue_jax.optim.hypergradient import HypergradientState

_QUANTILES = (0.05, 0.5, 0.95)
_KNOWN = (EGStepSizeState, EGSGDState, HypergradientState, optax.InjectHyperparamsState,
          optax.InjectStatefulHyperparamsState)


def _gain_summary(prefix: str, gains: Any) -> dict[str, jax.Array]:
  leaves = jax.tree.leaves(gains)
  if not leaves:
    return {}
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  out = {f"{prefix}gain_min": jnp.min(flat), f"{prefix}gain_max": jnp.max(flat),
         f"{prefix}gain_mean": jnp.mean(flat)}
  for q, v in zip(_QUANTILES, jnp.quantile(flat, jnp.asarray(_QUANTILES, jnp.float32))):
    out[f"{prefix}gain_q{int(round(q * 100)):02d}"] = v
  return out


def optimizer_stats(opt_state: Any) -> dict[str, jax.Array]:
  """Scalars describing the step-size state found anywhere inside `opt_state`.

  Recognised: `EGStepSizeState` (scale s, gain quantiles, `effective_lr_multiplier` = s · median p),
  `EGSGDState` (gain quantiles of ν), `HypergradientState` (the learning rate α), and
  `optax.inject_hyperparams` states (every numeric hyperparameter, under `hyperparams/<name>`).
  When several are present, later keys get a `<i>/` prefix with their order of appearance.

  Args:
    opt_state: any optax state pytree (chains, `MultiSteps`, `inject_hyperparams` nest fine).

  Returns:
    dict name -> scalar jax array (float32 or wider). Empty when nothing is recognised.
  """
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _KNOWN))
           if isinstance(x, _KNOWN)]
  stats: dict[str, jax.Array] = {}
  for i, st in enumerate(found):
    pre = "" if i == 0 else f"{i}/"
    if isinstance(st, EGStepSizeState):
      stats[f"{pre}eg/scale"] = st.scale
      g = _gain_summary(f"{pre}eg/", st.gains)
      stats.update(g)
      med = g.get(f"{pre}eg/gain_q50", jnp.ones([], st.scale.dtype))
      stats[f"{pre}eg/effective_lr_multiplier"] = st.scale * med
      stats[f"{pre}eg/count"] = st.count
      # The base state is searched too (an inject_hyperparams base exposes its learning rate).
      for k, v in optimizer_stats(st.base_state).items():
        stats[f"{pre}eg/base/{k}"] = v
    elif isinstance(st, EGSGDState):
      stats.update(_gain_summary(f"{pre}eg_sgd/", st.gains))
      stats[f"{pre}eg_sgd/count"] = st.count
    elif isinstance(st, HypergradientState):
      stats[f"{pre}hd/learning_rate"] = st.learning_rate
      stats[f"{pre}hd/count"] = st.count
    else:
      for k, v in st.hyperparams.items():
        if isinstance(v, jax.Array) and v.ndim == 0:
          stats[f"{pre}hyperparams/{k}"] = v
      for k, v in optimizer_stats(st.inner_state).items():
        stats[f"{pre}{k}"] = v
  return stats
