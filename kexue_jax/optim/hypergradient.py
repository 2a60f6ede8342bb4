"""Hypergradient descent (Baydin et al. 2018): the nearest published peer of the EG step-size rule.

Article: https://kexue.fm/archives/8968 (a reader points to this method as the earliest of its kind).

With a base descent direction d_t (d = g for SGD, the momentum buffer, Adam's m̂/(√v̂+ε), ...) the
applied step is θ_{t+1} = θ_t − α_{t+1} d_t and the one-step hypergradient is
∂L(θ_t)/∂α_t = −⟨g_t, d_{t−1}⟩. The learning rate moves before the step:

    additive:       α_{t+1} = α_t + β ⟨g_t, d_{t−1}⟩
    multiplicative: α_{t+1} = α_t (1 + β cos(g_t, d_{t−1}))

The multiplicative form is the normalised rule as we understand Baydin et al. §5 (we could not
re-check the paper text here; treat the exact normalisation as ours). α is clipped to
[min_learning_rate, max_learning_rate]; the default floor 0 is ours (gbaydin/hypergradient-descent
issue #4: the additive rule can drive α negative).

References:
  https://kexue.fm/archives/8968
  Baydin, Cornish, Martínez Rubio, Schmidt, Wood, "Online Learning Rate Adaptation with Hypergradient
    Descent", ICLR 2018 (arXiv:1703.04782).
"""
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kexue_jax.optim import _checks

_MODES = ("additive", "multiplicative")


class HypergradientState(NamedTuple):
  count: jax.Array          # int32 scalar
  learning_rate: jax.Array  # >= float32 scalar: α_t
  prev_direction: Any       # pytree like params, >= float32: d_{t−1} (init 0)
  base_state: Any           # state of the base direction transform


def hypergradient_descent(learning_rate: Any, hypergrad_lr: Any, *,
                          base_direction: optax.GradientTransformation | None = None,
                          mode: str = "additive", min_learning_rate: Any = 0.0,
                          max_learning_rate: Any = math.inf, eps: Any = 1e-20
                          ) -> optax.GradientTransformationExtraArgs:
  """SGD-HD / SGDM-HD / Adam-HD: a scalar learning rate adapted online by its hypergradient.

  Args:
    learning_rate: α_0 ≥ 0, the initial value of the learning rate the state carries (α_t lives in
      `HypergradientState.learning_rate` and adapts from there; it is read once, in `init`, so under
      `optax.inject_hyperparams` set the state's `learning_rate`, not `hyperparams['learning_rate']`).
    hypergrad_lr: β ≥ 0 (Baydin et al.'s README suggests ~1e-6 for SGD-HD, ~1e-8 for Adam-HD with the
      additive rule; the multiplicative rule is unit-free).
    base_direction: an optax transform giving the descent direction d_t from g_t, without learning
      rate (e.g. `optax.trace(0.9)`, `optax.scale_by_adam()`); None means d_t = g_t (SGD-HD).
    mode: 'additive' or 'multiplicative'.
    min_learning_rate, max_learning_rate: the clip box for α.
    eps: added to the cosine's denominator.

  Returns:
    An optax transform with `HypergradientState`; the update is −α_{t+1} d_t.

  References:
    https://kexue.fm/archives/8968
    Baydin et al., ICLR 2018, arXiv:1703.04782.
  """
  _checks.check_number("learning_rate", learning_rate)
  _checks.check_number("hypergrad_lr", hypergrad_lr)
  _checks.check_choice("mode", mode, _MODES)
  _checks.check_number("min_learning_rate", min_learning_rate, minimum=None)
  if _checks.concrete_number(max_learning_rate) != math.inf:
    _checks.check_number("max_learning_rate", max_learning_rate, minimum=None)
  _checks.check_number("eps", eps)
  base = optax.with_extra_args_support(base_direction if base_direction is not None
                                       else optax.identity())

  def init_fn(params):
    dts = [jnp.promote_types(p.dtype, jnp.float32) for p in jax.tree.leaves(params)] or [jnp.float32]
    return HypergradientState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=jnp.asarray(learning_rate, jnp.result_type(*dts)),
        prev_direction=jax.tree.map(
            lambda p: jnp.zeros_like(p, dtype=jnp.promote_types(p.dtype, jnp.float32)), params),
        base_state=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    grads = updates
    leaves_d = jax.tree.leaves(state.prev_direction)
    leaves_g = [g.astype(d.dtype) for g, d in zip(jax.tree.leaves(grads), leaves_d)]
    h = sum(jnp.vdot(g, d) for g, d in zip(leaves_g, leaves_d))
    alpha = state.learning_rate
    if mode == "additive":
      alpha = alpha + hypergrad_lr * h
    else:
      norm_g = jnp.sqrt(sum(jnp.vdot(g, g) for g in leaves_g))
      norm_d = jnp.sqrt(sum(jnp.vdot(d, d) for d in leaves_d))
      alpha = alpha * (1 + hypergrad_lr * h / (norm_g * norm_d + eps))
    alpha = jnp.clip(alpha, min_learning_rate, max_learning_rate).astype(state.learning_rate.dtype)
    direction, base_state = base.update(grads, state.base_state, params, **extra_args)
    new_updates = jax.tree.map(lambda d, g: (-alpha * d).astype(g.dtype), direction, grads)
    prev = jax.tree.map(lambda d, p: d.astype(p.dtype), direction, state.prev_direction)
    return new_updates, HypergradientState(optax.safe_increment(state.count), alpha, prev, base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
