"""bert4keras's optimizer wrappers as optax compositions (the parity list of anchors.md §3.5).

| bert4keras (v0.11)            | here                              | optax pieces                                |
|-------------------------------|-----------------------------------|---------------------------------------------|
| piecewise_linear_lr           | `piecewise_linear_lr`             | a schedule for any `learning_rate`          |
| weight_decay (exclude_from)   | `weight_decay`                    | decoupled −lr_t·rate·w, masked by name      |
| layer_adaptation              | `layer_adaptation`                | trust ratio lr_t·‖w‖/‖u‖ (LAMB-style)       |
| gradient_accumulation         | `gradient_accumulation`           | `optax.MultiSteps`                          |
| lookahead                     | `lookahead`                       | `optax.lookahead`                           |
| lazy_optimization             | `lazy_optimization`               | freeze rows whose gradient is all zero      |
| exponential_moving_average    | `exponential_moving_average`      | float32 EMA in the state, `ema_weights`     |
| parameter_wise_lr             | `parameter_wise_lr`               | per-leaf multipliers matched on the path    |

Names are matched as substrings of the '/'-joined pytree path (bert4keras matched variable names).
`learning_rate` of `weight_decay` and `layer_adaptation` is a number or an optax schedule of the step
count: bert4keras's v2 wrappers use the decayed lr_t of the step, so pass the same schedule as the
wrapped optimizer's.

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


def _matches(path, names: Sequence[str]) -> bool:
  """Whether the '/'-joined pytree path contains one of `names` (bert4keras's `string_matching`)."""
  return any(n in _path_name(path) for n in names)


class ScheduledState(NamedTuple):
  inner: Any        # the wrapped optimizer's state
  count: jax.Array  # int32 scalar: steps taken, the argument of the learning-rate schedule


def _as_schedule(learning_rate, *, strict):
  _checks.check_number("learning_rate", learning_rate, strict=strict)  # a schedule (callable) passes
  return learning_rate if callable(learning_rate) else (lambda count: learning_rate)


def _scheduled(optimizer, learning_rate, transform):
  """Wraps `optimizer`; `transform(path, u, w, lr_t)` edits each leaf's update with lr_t = lr(count)."""

  def init_fn(params):
    return ScheduledState(optimizer.init(params), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    u, inner = optimizer.update(updates, state.inner, params)
    lr_t = learning_rate(state.count)
    u = jax.tree_util.tree_map_with_path(lambda path, ui, w: transform(path, ui, w, lr_t), u, params)
    return u, ScheduledState(inner, optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def weight_decay(optimizer: optax.GradientTransformation, rate: float, learning_rate: Any, *,
                 exclude_from: Sequence[str] = ()) -> optax.GradientTransformation:
  """Decoupled weight decay −lr_t·rate·w added to `optimizer`'s update, except for excluded names.

  `learning_rate` is a number or a schedule (lr_t = learning_rate(step)), as the wrapped optimizer's;
  adam + weight_decay(rate, lr) is `optax.adamw(lr, weight_decay=rate)` (tested).
  """
  _check_optimizer(optimizer)
  _checks.check_number("rate", rate)
  lr = _as_schedule(learning_rate, strict=False)
  names = tuple(exclude_from)

  def decay(path, ui, w, lr_t):
    if _matches(path, names):
      return ui
    return (ui - lr_t * rate * w).astype(ui.dtype)
  return _scheduled(optimizer, lr, decay)


def layer_adaptation(optimizer: optax.GradientTransformation, learning_rate: Any, *,
                     exclude_from: Sequence[str] = ()) -> optax.GradientTransformation:
  """Per-leaf trust ratio: u ← u · lr_t‖w‖/‖u‖ (when both norms are positive), as bert4keras.

  bert4keras rescales the step of every non-excluded variable by ‖w‖/‖u/lr_t‖ with lr_t the step's
  decayed learning rate (floored at 1e-7), i.e. LAMB's trust ratio applied to any optimizer: each step
  has norm lr_t‖w‖. `learning_rate` is the number or schedule the wrapped `optimizer` uses.
  """
  _check_optimizer(optimizer)
  lr = _as_schedule(learning_rate, strict=True)
  names = tuple(exclude_from)

  def adapt(path, ui, w, lr_t):
    if _matches(path, names):
      return ui
    lr_t = jnp.maximum(lr_t, 1e-7)
    nw, nu = jnp.linalg.norm(w), jnp.linalg.norm(ui)
    ratio = jnp.where((nw > 0) & (nu > 0), lr_t * nw / jnp.where(nu > 0, nu, 1), 1.0)
    return (ui * ratio).astype(ui.dtype)
  return _scheduled(optimizer, lr, adapt)


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
  """Leave untouched every row whose gradient is exactly zero (e.g. unused embedding rows).

  bert4keras's lazy optimization: a row (the last axis) whose gradient is all zero must not move through
  momentum or decay; a row with any non-zero gradient takes the optimizer's whole update, zero-gradient
  coordinates included. A scalar leaf is its own row. `include_in` restricts it to leaves whose path
  contains one of the names; None (our default) means every leaf, whereas bert4keras's default empty
  list makes the wrapper do nothing. The optimizer's own state still advances (its moments decay), as
  in bert4keras.
  """
  _check_optimizer(optimizer)
  names = None if include_in is None else tuple(include_in)

  def update_fn(updates, state, params=None):
    u, state = optimizer.update(updates, state, params)

    def mask(path, ui, g):
      if names is not None and not _matches(path, names):
        return ui
      live = g != 0 if g.ndim == 0 else jnp.any(g != 0, axis=-1, keepdims=True)
      return jnp.where(live, ui, jnp.zeros_like(ui))
    return jax.tree_util.tree_map_with_path(mask, u, updates), state

  return optax.GradientTransformation(optimizer.init, update_fn)


class EMAState(NamedTuple):
  inner: Any              # the wrapped optimizer's state
  ema: Any                # pytree like params, >= float32: m·ema + (1 − m)·params after each step, from 0
  correction: jax.Array   # >= float32 scalar: the same average of the constant 1, i.e. 1 − m^t


def _wide(x):
  return jnp.asarray(x, jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def exponential_moving_average(optimizer: optax.GradientTransformation, momentum: float = 0.999
                               ) -> optax.GradientTransformation:
  """Keeps ema ← m·ema + (1 − m)·(params + update) in the state; the updates are unchanged.

  As bert4keras: the average starts at zero and is read with the bias correction 1/(1 − m^t)
  (`ema_weights(state)`; bert4keras's `apply_ema_weights`), which equals `optax.ema(m, debias=True)`
  of the parameter sequence (tested). The average is kept in float32 (or wider) even for bf16
  parameters, where 0.999·ema would round back to ema. Needs `params`.
  """
  _check_optimizer(optimizer)
  _checks.check_number("momentum", momentum, maximum=1.0)

  def init_fn(params):
    ema = jax.tree.map(lambda p: jnp.zeros_like(_wide(p)), params)
    return EMAState(optimizer.init(params), ema, jnp.zeros([], jnp.result_type(jnp.float32, *jax.tree.leaves(ema))))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    u, inner = optimizer.update(updates, state.inner, params)
    new = optax.apply_updates(params, u)  # the stored parameters (bf16 stays bf16), then averaged wide
    ema = jax.tree.map(lambda e, w: momentum * e + (1 - momentum) * w.astype(e.dtype), state.ema, new)
    correction = momentum * state.correction + (1 - momentum)
    return u, EMAState(inner, ema, correction)

  return optax.GradientTransformation(init_fn, update_fn)


def ema_weights(state: EMAState, *, bias_correction: bool = True) -> Any:
  """The averaged parameters from an `EMAState` (float32 or wider; cast them to the model's dtype).

  With `bias_correction` (bert4keras's default) ema/(1 − m^t): a proper weighted average of the
  parameters after steps 1..t. Before the first step both forms are zeros.
  """
  if not isinstance(state, EMAState):
    raise ValueError(f"`state` must be the EMAState of `exponential_moving_average`; got {type(state).__name__}")
  if not bias_correction:
    return state.ema
  c = state.correction
  return jax.tree.map(lambda e: jnp.where(c > 0, e / jnp.where(c > 0, c, 1), e), state.ema)


def parameter_wise_lr(optimizer: optax.GradientTransformation, multipliers: Mapping[str, float]
                      ) -> optax.GradientTransformation:
  """Multiplies the update of every leaf whose path contains a key of `multipliers` by its value.

  For optimizers whose update is linear in the learning rate (SGD, Adam, ...) this is a per-parameter
  learning rate, as bert4keras's `parameter_wise_lr`: the multipliers of every matching key multiply.
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
      m = 1.0
      for k, v in multipliers.items():
        if k in name:
          m *= v
      return ui if m == 1.0 else (ui * m).astype(ui.dtype)
    return jax.tree_util.tree_map_with_path(scale, u), state

  return optax.GradientTransformation(optimizer.init, update_fn)
