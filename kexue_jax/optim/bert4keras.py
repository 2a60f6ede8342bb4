"""bert4keras's optimizer wrappers as optax compositions (the parity list of anchors.md §3.5).

| bert4keras (v0.11)            | here                              | optax pieces                                |
|-------------------------------|-----------------------------------|---------------------------------------------|
| piecewise_linear_lr           | `piecewise_linear_lr`             | a schedule for any `learning_rate`          |
| weight_decay (exclude_from)   | `weight_decay`                    | decoupled −lr·rate·w, masked by name        |
| layer_adaptation              | `layer_adaptation`                | trust ratio lr·‖w‖/‖u‖ (LAMB-style)         |
| gradient_accumulation         | `gradient_accumulation`           | `optax.MultiSteps`                          |
| lookahead                     | `lookahead`                       | `optax.lookahead`                           |
| lazy_optimization             | `lazy_optimization`               | zero the update where the gradient is zero  |
| exponential_moving_average    | `exponential_moving_average`      | EMA of the parameters kept in the state     |
| parameter_wise_lr             | `parameter_wise_lr`               | per-leaf multipliers matched on the path    |

Names are matched as substrings of the '/'-joined pytree path (bert4keras matched variable names).

References:
  https://kexue.fm/archives/8968 (the optimizer family these wrap)
  bojone/bert4keras, bert4keras/optimizers.py (v0.11.5).
  Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019.
  You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020.
"""
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.optim import _checks


def _path_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _check_optimizer(optimizer):
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(f"`optimizer` must be an optax.GradientTransformation; got {optimizer!r}")


def piecewise_linear_lr(learning_rate: float, schedule: Mapping[int, float], *, from_zero: bool = True
                        ) -> Callable[[Any], jax.Array]:
  """lr(t) = learning_rate × the piecewise-linear interpolation of `{step: multiplier}`.

  As bert4keras: with `from_zero` the curve starts at (0, 0) unless step 0 is given; after the last
  step the last multiplier is held. `{1000: 1, 2000: 0.1}` is 1000 warm-up steps then a linear decay.
  """
  _checks.check_number("learning_rate", learning_rate)
  if not isinstance(schedule, Mapping) or not schedule:
    raise ValueError(f"`schedule` must be a non-empty dict {{step: multiplier}}; got {schedule!r}")
  for k, v in schedule.items():
    if not isinstance(k, (int, np.integer)) or k < 0:
      raise ValueError(f"`schedule` keys must be non-negative ints; got {k!r}")
    _checks.check_number(f"schedule[{k}]", v)
  items = sorted(schedule.items())
  if from_zero and items[0][0] != 0:
    items = [(0, 0.0)] + items
  steps = jnp.asarray([k for k, _ in items], jnp.float32)
  mults = jnp.asarray([v for _, v in items], jnp.float32)

  def lr(count):
    return learning_rate * jnp.interp(jnp.asarray(count, jnp.float32), steps, mults)
  return lr


def _name_mask(params, names: Sequence[str], *, match: bool):
  def f(path, _):
    hit = any(n in _path_name(path) for n in names)
    return hit if match else not hit
  return jax.tree_util.tree_map_with_path(f, params)


def weight_decay(optimizer: optax.GradientTransformation, rate: float, learning_rate: float, *,
                 exclude_from: Sequence[str] = ()) -> optax.GradientTransformation:
  """Decoupled weight decay −lr·rate·w added to `optimizer`'s update, except for excluded names."""
  _check_optimizer(optimizer)
  _checks.check_number("rate", rate)
  _checks.check_number("learning_rate", learning_rate)
  names = tuple(exclude_from)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    u, state = optimizer.update(updates, state, params)

    def decay(path, ui, w):
      if any(n in _path_name(path) for n in names):
        return ui
      return (ui - learning_rate * rate * w).astype(ui.dtype)
    return jax.tree_util.tree_map_with_path(decay, u, params), state

  return optax.GradientTransformation(optimizer.init, update_fn)


def layer_adaptation(optimizer: optax.GradientTransformation, learning_rate: float, *,
                     exclude_from: Sequence[str] = ()) -> optax.GradientTransformation:
  """Per-leaf trust ratio: u ← u · lr‖w‖/‖u‖ (when both norms are positive), as bert4keras.

  bert4keras rescales the learning rate by ‖w‖/‖u/lr‖ for every non-excluded variable, i.e. LAMB's
  trust ratio applied to any optimizer (`optimizer` includes its learning rate `learning_rate`).
  """
  _check_optimizer(optimizer)
  _checks.check_number("learning_rate", learning_rate, strict=True)
  names = tuple(exclude_from)

  def init_fn(params):
    return optimizer.init(params)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    u, state = optimizer.update(updates, state, params)

    def adapt(path, ui, w):
      if any(n in _path_name(path) for n in names):
        return ui
      nw, nu = jnp.linalg.norm(w), jnp.linalg.norm(ui)
      ratio = jnp.where((nw > 0) & (nu > 0), learning_rate * nw / jnp.where(nu > 0, nu, 1), 1.0)
      return (ui * ratio).astype(ui.dtype)
    return jax.tree_util.tree_map_with_path(adapt, u, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def gradient_accumulation(optimizer: optax.GradientTransformation, grad_accum_steps: int
                          ) -> optax.MultiSteps:
  """Apply `optimizer` to the mean gradient of every `grad_accum_steps` micro-batches (optax.MultiSteps)."""
  _check_optimizer(optimizer)
  if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
    raise ValueError(f"`grad_accum_steps` must be a positive int; got {grad_accum_steps!r}")
  return optax.MultiSteps(optimizer, every_k_schedule=grad_accum_steps)


def lookahead(optimizer: optax.GradientTransformation, steps: int = 5, alpha: float = 0.5
              ) -> optax.GradientTransformation:
  """Lookahead with bert4keras's defaults (k = 5, α = 0.5): every k fast steps, slow += α(fast − slow).

  Params must be `optax.LookaheadParams(fast=..., slow=...)` (see `optax.lookahead`).
  """
  _check_optimizer(optimizer)
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"`steps` must be a positive int; got {steps!r}")
  _checks.check_number("alpha", alpha, maximum=1.0)
  return optax.lookahead(optimizer, sync_period=steps, slow_step_size=alpha)


def lazy_optimization(optimizer: optax.GradientTransformation, *, include_in: Sequence[str] | None = None
                      ) -> optax.GradientTransformation:
  """Leave untouched every coordinate whose gradient is exactly zero (e.g. unused embedding rows).

  bert4keras's lazy optimization: a sparse gradient must not move a row through momentum or decay.
  `include_in` restricts it to leaves whose path contains one of the names (None: all leaves). The
  optimizer's own state still advances (its moments decay), as in bert4keras.
  """
  _check_optimizer(optimizer)
  names = None if include_in is None else tuple(include_in)

  def update_fn(updates, state, params=None):
    u, state = optimizer.update(updates, state, params)

    def mask(path, ui, g):
      if names is not None and not any(n in _path_name(path) for n in names):
        return ui
      return jnp.where(g != 0, ui, jnp.zeros_like(ui))
    return jax.tree_util.tree_map_with_path(mask, u, updates), state

  return optax.GradientTransformation(optimizer.init, update_fn)


class EMAState(NamedTuple):
  inner: Any  # the wrapped optimizer's state
  ema: Any    # pytree like params: the moving average of the parameters after each step


def exponential_moving_average(optimizer: optax.GradientTransformation, momentum: float = 0.999
                               ) -> optax.GradientTransformation:
  """Keeps ema ← m·ema + (1 − m)·(params + update) in the state; the updates are unchanged.

  The EMA starts at the initial parameters (bert4keras's `ema_initialize`); read it from
  `state.ema` for evaluation. Needs `params`.
  """
  _check_optimizer(optimizer)
  _checks.check_number("momentum", momentum, maximum=1.0)

  def init_fn(params):
    return EMAState(optimizer.init(params), jax.tree.map(jnp.asarray, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    u, inner = optimizer.update(updates, state.inner, params)
    ema = optax.incremental_update(optax.apply_updates(params, u), state.ema, 1 - momentum)
    return u, EMAState(inner, ema)

  return optax.GradientTransformation(init_fn, update_fn)


def parameter_wise_lr(optimizer: optax.GradientTransformation, multipliers: Mapping[str, float]
                      ) -> optax.GradientTransformation:
  """Multiplies the update of every leaf whose path contains a key of `multipliers` by its value.

  For optimizers whose update is linear in the learning rate (SGD, Adam, ...) this is a per-parameter
  learning rate, as bert4keras's `parameter_wise_lr`. The first matching key wins.
  """
  _check_optimizer(optimizer)
  if not isinstance(multipliers, Mapping):
    raise ValueError(f"`multipliers` must be a dict {{name: multiplier}}; got {multipliers!r}")
  for k, v in multipliers.items():
    _checks.check_number(f"multipliers[{k!r}]", v)

  def update_fn(updates, state, params=None):
    u, state = optimizer.update(updates, state, params)

    def scale(path, ui):
      name = _path_name(path)
      for k, m in multipliers.items():
        if k in name:
          return (ui * m).astype(ui.dtype)
      return ui
    return jax.tree_util.tree_map_with_path(scale, u), state

  return optax.GradientTransformation(optimizer.init, update_fn)
