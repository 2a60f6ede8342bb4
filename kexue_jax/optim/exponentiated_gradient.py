"""Exponentiated gradient (EGU, EG on the simplex, EG±) and EG-adapted step sizes as optax transforms.

Article: 指数梯度下降 + 元学习 = 自适应学习率 (https://kexue.fm/archives/8968).

EGU keeps a positive parameter positive by a multiplicative step,

    θ_{t+1} = θ_t ⊙ exp(−η ∇L(θ_t)),

EG additionally renormalises onto the probability simplex (the exact KL-prox / mirror-descent step),
and EG± writes a signed parameter as w = w⁺ − w⁻ with an ℓ1 budget U = Σ(w⁺ + w⁻).

The article's step-size rule (plain SGD with a per-coordinate gain ν, itself learned by EG):

    ν_{t+1} = ν_t ⊙ exp(γ g_{t−1} ⊙ g_t),    θ_{t+1} = θ_t − η ν_{t+1} ⊙ g_t,    ν_0 = 1,

is `eg_sgd`. `eg_step_size_adaptation` generalises it to any optax optimizer with per-coordinate gains p
and a global scale s (spec optim_math.md §2.3): with b_t the base optimizer's update,

    θ_{t+1} = θ_t + s_{t+1} p_{t+1} ⊙ b_t,
    p_{t+2} = p_{t+1} ⊙ exp(γ_p a_t ⊙ g_{t+1}),   s_{t+2} = s_{t+1} exp(γ_s ⟨p_{t+1} ⊙ a_t, g_{t+1}⟩),

where a_t = −b_t gives the exact one-step hypergradients −∂L(θ_{t+1})/∂p and −∂L(θ_{t+1})/∂s (up to the
positive factor s). The paper body of Amid et al. (2022) could not be read (spec §0.2): the choices of
`average`, `normalize`, bounds and exponent clipping, and every default below, are ours.

Multiplicative transforms read `params` and return `new_params − params`; put them last in a chain.

References:
  https://kexue.fm/archives/8968
  Amid, Anil, Fifty, Warmuth, "Step-size Adaptation Using Exponentiated Gradient Updates",
    arXiv:2202.00145 (2022).
  Kivinen, Warmuth, "Exponentiated gradient versus gradient descent for linear predictors",
    Information and Computation 132 (1997).
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.optim import _checks

_AVERAGES = ("prev_update", "ema_update", "prev_grad", "ema_grad")
_GAIN_NORMALIZE = ("none", "rms", "cosine")


def _state_dtype(dtype) -> jnp.dtype:
  # Gains and scales stay at least float32 under bf16 params (spec §2.3, numerical safety).
  return jnp.promote_types(dtype, jnp.float32)


def _check_positive_params(params: Any, what: str) -> None:
  for leaf in jax.tree.leaves(params):
    if isinstance(leaf, jax.core.Tracer):
      continue
    arr = np.asarray(jax.device_get(leaf), dtype=np.float64)
    if arr.size and not np.all(arr > 0):
      raise ValueError(f"`params` must be strictly positive for {what}; got minimum {float(arr.min())!r}")


# --------------------------------------------------------------------------------------------------
# EGU / EG on the simplex


class ExponentiatedGradientState(NamedTuple):
  count: jax.Array  # int32 scalar: number of steps taken


def scale_by_exponentiated_gradient(learning_rate: Any, *, normalize: bool = False
                                    ) -> optax.GradientTransformationExtraArgs:
  """EGU step θ ⊙ exp(−η g) (or EG: the same divided by its sum, per leaf) as an additive update.

  Args:
    learning_rate: η ≥ 0, a number or a schedule of the step count.
    normalize: False for EGU (θ > 0 unconstrained); True for EG, where each leaf is one probability
      vector: w_{t+1} = w_t e^{−ηg} / Σ_j w_{t,j} e^{−ηg_j}, the argmin over the simplex of
      η⟨g, w⟩ + KL(w ‖ w_t).

  Returns:
    A transform whose update is `new_params − params` (it needs `params`; put it last in a chain).
    Zero coordinates stay zero forever, so parameters must start strictly positive (checked in `init`
    when the parameters are concrete).
  """
  _checks.check_number("learning_rate", learning_rate)
  if not isinstance(normalize, bool):
    raise ValueError(f"`normalize` must be a bool; got {normalize!r}")

  def init_fn(params):
    _check_positive_params(params, "exponentiated gradient")
    return ExponentiatedGradientState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def step(g, w):
      dt = _state_dtype(w.dtype)
      g32, w32 = g.astype(dt), w.astype(dt)
      if normalize:
        # logsumexp keeps the simplex step finite for large η g.
        logits = jnp.log(w32) - eta * g32
        new_w = jnp.exp(logits - jax.nn.logsumexp(logits))
        return (new_w - w32).astype(w.dtype)
      # expm1 keeps the small-step update accurate: w (e^{−ηg} − 1) = new_w − w.
      return (w32 * jnp.expm1(-eta * g32)).astype(w.dtype)

    new_updates = jax.tree.map(step, updates, params)
    return new_updates, ExponentiatedGradientState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def exponentiated_gradient(learning_rate: Any, *, normalize: bool = False
                           ) -> optax.GradientTransformationExtraArgs:
  """EGU (θ ← θ e^{−ηg}) or, with `normalize=True`, EG on the simplex (each leaf sums to one).

  See `scale_by_exponentiated_gradient`; the learning rate lives inside the exponent, so this
  optimizer is that transform alone.

  References:
    https://kexue.fm/archives/8968
    Kivinen & Warmuth (1997).
  """
  return scale_by_exponentiated_gradient(learning_rate, normalize=normalize)


# --------------------------------------------------------------------------------------------------
# EG± for signed parameters


class EGPlusMinusState(NamedTuple):
  count: jax.Array  # int32 scalar
  w_plus: Any       # pytree like params, >= float32: positive part w⁺ > 0
  w_minus: Any      # pytree like params, >= float32: negative part w⁻ > 0; params = w⁺ − w⁻


def eg_plus_minus(learning_rate: Any, *, u_scaling: float, normalize: bool = True
                  ) -> optax.GradientTransformationExtraArgs:
  """EG± (normalised) or EGU± for signed parameters w = w⁺ − w⁻.

  Each step w⁺ ← w⁺ e^{−ηg}, w⁻ ← w⁻ e^{+ηg}; with `normalize=True` both are then rescaled jointly so
  that Σ(w⁺ + w⁻) = U per leaf (the ℓ1 budget). `init` uses the "bootstrap" split
  w^± = (U/n ± w)/2 (n = leaf size), which reproduces the given parameters and needs |w| < U/n.
  The budget is per leaf here (KellerJordan's PyTorch EG± normalises per neuron).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    u_scaling: U > 0, the ℓ1 budget per leaf.
    normalize: True for EG± (budget kept), False for EGU±.

  Returns:
    A transform whose update is (w⁺ − w⁻)_{new} − params; the state is the source of truth.

  References:
    https://kexue.fm/archives/8968
    Kivinen & Warmuth (1997); Amid & Warmuth, "Reparameterizing mirror descent as gradient descent",
    NeurIPS 2020.
  """
  _checks.check_number("learning_rate", learning_rate)
  _checks.check_number("u_scaling", u_scaling, strict=True)
  if not isinstance(normalize, bool):
    raise ValueError(f"`normalize` must be a bool; got {normalize!r}")

  def init_fn(params):
    for leaf in jax.tree.leaves(params):
      if isinstance(leaf, jax.core.Tracer) or not isinstance(u_scaling, (int, float)):
        continue
      arr = np.asarray(jax.device_get(leaf), dtype=np.float64)
      if arr.size and np.abs(arr).max() >= u_scaling / arr.size:
        raise ValueError(f"`u_scaling` must exceed size * max|w| = {float(arr.size * np.abs(arr).max())!r} "
                         f"for the bootstrap split; got {u_scaling!r}")

    def split(sign):
      def f(w):
        dt = _state_dtype(w.dtype)
        return (u_scaling / w.size + sign * w.astype(dt)) / 2
      return jax.tree.map(f, params)

    return EGPlusMinusState(count=jnp.zeros([], jnp.int32), w_plus=split(1.0), w_minus=split(-1.0))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def step(g, wp, wm):
      g32 = g.astype(wp.dtype)
      wp, wm = wp * jnp.exp(-eta * g32), wm * jnp.exp(eta * g32)
      if normalize:
        z = u_scaling / (jnp.sum(wp) + jnp.sum(wm))
        wp, wm = wp * z, wm * z
      return wp, wm

    pairs = jax.tree.map(step, updates, state.w_plus, state.w_minus)
    treedef = jax.tree.structure(updates)
    flat = treedef.flatten_up_to(pairs)
    w_plus = treedef.unflatten([p[0] for p in flat])
    w_minus = treedef.unflatten([p[1] for p in flat])
    new_updates = jax.tree.map(lambda wp, wm, w: (wp - wm - w.astype(wp.dtype)).astype(w.dtype),
                               w_plus, w_minus, params)
    return new_updates, EGPlusMinusState(optax.safe_increment(state.count), w_plus, w_minus)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# The article's rule: SGD with EG-learned per-coordinate gains


class EGSGDState(NamedTuple):
  count: jax.Array  # int32 scalar
  gains: Any        # pytree like params, >= float32: ν (init 1)
  prev_grad: Any    # pytree like params, >= float32: g_{t−1} (init 0)


def eg_sgd(learning_rate: Any, gamma: Any) -> optax.GradientTransformationExtraArgs:
  """The article's rule exactly: ν ← ν ⊙ exp(γ g_{t−1} ⊙ g_t), update = −η ν ⊙ g_t, ν₀ = 1, g_{−1} = 0.

  Unrolled, ν_{t+1} = exp(γ Σ_{k=1}^{t} g_{k−1} ⊙ g_k). With γ = 0 it is bit-identical to
  `optax.sgd(η)` for float32 parameters; under bf16 it multiplies in float32 and rounds once, where
  optax rounds η to bf16 first, so the two can differ in the last bf16 bit. No clipping: the article has none (use `eg_step_size_adaptation` for a box).

  Args:
    learning_rate: η ≥ 0 or a schedule.
    gamma: γ ≥ 0 (γη of the derivation, absorbed as in the article).

  Returns:
    An optax transform with `EGSGDState`.

  References:
    https://kexue.fm/archives/8968
    Amid et al., arXiv:2202.00145 (2022).
  """
  _checks.check_number("learning_rate", learning_rate)
  _checks.check_number("gamma", gamma)

  def init_fn(params):
    return EGSGDState(
        count=jnp.zeros([], jnp.int32),
        gains=jax.tree.map(lambda p: jnp.ones_like(p, dtype=_state_dtype(p.dtype)), params),
        prev_grad=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_state_dtype(p.dtype)), params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
    gains = jax.tree.map(lambda nu, gp, g: nu * jnp.exp(gamma * (gp * g.astype(gp.dtype))),
                         state.gains, state.prev_grad, updates)
    # (−η) * (ν g): the same multiplication order as optax.sgd, so ν = 1 is bit-identical to it.
    new_updates = jax.tree.map(lambda nu, g: (-eta * (nu * g)).astype(g.dtype), gains, updates)
    prev = jax.tree.map(lambda gp, g: g.astype(gp.dtype), state.prev_grad, updates)
    return new_updates, EGSGDState(optax.safe_increment(state.count), gains, prev)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# Gains and global scale on top of any optimizer (configurable reconstruction of Amid et al.)


class EGStepSizeState(NamedTuple):
  count: jax.Array    # int32 scalar: steps taken
  gains: Any          # pytree like params, >= float32: p (init 1); () when gains are off
  signal: Any         # pytree like params, >= float32: a_{t−1}, correlated with the next gradient
  gain_rms: Any       # pytree like params: running mean of (a ⊙ g)² for normalize='rms', else ()
  scale: jax.Array    # >= float32 scalar: s (init s_init)
  scale_rms: jax.Array  # >= float32 scalar: running mean of ⟨p ⊙ a, g⟩² for scale_normalize='rms'
  base_state: Any     # the wrapped optimizer's state


def _leaf_rms(x):
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def _eg_adaptation(base, *, gamma_gains, gamma_scale, adapt_gains, adapt_scale, average, beta,
                   normalize, scale_normalize, gain_bounds, scale_bounds, max_exponent, rms_decay,
                   renormalize_mean, scale_init, eps, direction_sign):
  """Shared core. `direction_sign` maps the base output b to the descent direction d (d = sign·b)."""
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    dtypes = [_state_dtype(p.dtype) for p in jax.tree.leaves(params)] or [jnp.float32]
    sdt = jnp.result_type(*dtypes)
    ones = lambda p: jnp.ones_like(p, dtype=_state_dtype(p.dtype))  # noqa: E731
    zeros = lambda p: jnp.zeros_like(p, dtype=_state_dtype(p.dtype))  # noqa: E731
    return EGStepSizeState(
        count=jnp.zeros([], jnp.int32),
        gains=jax.tree.map(ones, params) if adapt_gains else (),
        signal=jax.tree.map(zeros, params),
        gain_rms=jax.tree.map(zeros, params) if adapt_gains and normalize == "rms" else (),
        scale=jnp.asarray(scale_init, sdt),
        scale_rms=jnp.zeros([], sdt),
        base_state=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    grads = updates
    t = state.count
    # Only steps t >= 1 see a nonzero stored signal; the RMS averages are bias-corrected over those.
    seen = t > 0
    corr = lambda dtype: 1.0 - rms_decay ** jnp.maximum(t, 1).astype(dtype)  # noqa: E731

    gains, gain_rms = state.gains, state.gain_rms
    if adapt_gains:
      def gain_exponent(a, g, r):
        x = a * g.astype(a.dtype)
        if normalize == "rms":
          r = jnp.where(seen, rms_decay * r + (1 - rms_decay) * jnp.square(x), r)
          x = x / (jnp.sqrt(r / corr(r.dtype)) + eps)
        elif normalize == "cosine":
          x = x / (_leaf_rms(a) * _leaf_rms(g.astype(a.dtype)) + eps)
        e = gamma_gains * x
        if max_exponent is not None:
          e = jnp.clip(e, -max_exponent, max_exponent)
        return e, r

      rms_in = gain_rms if normalize == "rms" else jax.tree.map(jnp.zeros_like, state.signal)
      pairs = jax.tree.map(gain_exponent, state.signal, grads, rms_in)
      treedef = jax.tree.structure(state.signal)
      flat = treedef.flatten_up_to(pairs)
      exponents = treedef.unflatten([x[0] for x in flat])
      if normalize == "rms":
        gain_rms = treedef.unflatten([x[1] for x in flat])

    if adapt_scale:
      # Correlation of the stored signal with the new gradient, through the gains that were applied.
      pa = state.signal if not adapt_gains else jax.tree.map(jnp.multiply, state.gains, state.signal)
      y = sum(jnp.vdot(x, g.astype(x.dtype)) for x, g in zip(jax.tree.leaves(pa), jax.tree.leaves(grads)))
      scale_rms = state.scale_rms
      if scale_normalize == "rms":
        scale_rms = jnp.where(seen, rms_decay * scale_rms + (1 - rms_decay) * jnp.square(y), scale_rms)
        y = y / (jnp.sqrt(scale_rms / corr(scale_rms.dtype)) + eps)
      elif scale_normalize == "cosine":
        na = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(pa)))
        ng = jnp.sqrt(sum(jnp.vdot(g, g).astype(na.dtype) for g in jax.tree.leaves(grads)))
        y = y / (na * ng + eps)
      e = gamma_scale * y
      if max_exponent is not None:
        e = jnp.clip(e, -max_exponent, max_exponent)
      scale = state.scale * jnp.exp(e)
      if scale_bounds is not None:
        scale = jnp.clip(scale, *scale_bounds)
    else:
      scale, scale_rms = state.scale, state.scale_rms

    if adapt_gains:
      def new_gain(p, e):
        p = p * jnp.exp(e)
        if gain_bounds is not None:
          p = jnp.clip(p, *gain_bounds)
        if renormalize_mean:
          p = p / jnp.mean(p)
          if gain_bounds is not None:  # again, so the box holds (spec §2.5.7); the mean is 1 unless it binds
            p = jnp.clip(p, *gain_bounds)
        return p
      gains = jax.tree.map(new_gain, state.gains, exponents)

    base_updates, base_state = base.update(grads, state.base_state, params, **extra_args)

    if adapt_gains:
      out = jax.tree.map(lambda p, b: (scale * (p * b)).astype(b.dtype), gains, base_updates)
    else:
      out = jax.tree.map(lambda b: (scale * b).astype(b.dtype), base_updates)

    def new_signal(a, g, b):
      src = g if average in ("prev_grad", "ema_grad") else direction_sign * b
      src = src.astype(a.dtype)
      if average in ("ema_grad", "ema_update"):
        return beta * a + (1 - beta) * src
      return src
    signal = jax.tree.map(new_signal, state.signal, grads, base_updates)

    return out, EGStepSizeState(optax.safe_increment(t), gains, signal, gain_rms, scale, scale_rms,
                                base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _validate_adaptation(*, gamma_gains, gamma_scale, average, beta, normalize, scale_normalize,
                         gain_bounds, scale_bounds, max_exponent, rms_decay, scale_init, eps):
  _checks.check_number("gamma_gains", gamma_gains)
  _checks.check_number("gamma_scale", gamma_scale)
  _checks.check_choice("average", average, _AVERAGES)
  _checks.check_number("beta", beta, maximum=1.0, strict_max=True)
  _checks.check_choice("normalize", normalize, _GAIN_NORMALIZE)
  _checks.check_choice("scale_normalize", scale_normalize, _GAIN_NORMALIZE)
  gain_bounds = _checks.check_bounds("gain_bounds", gain_bounds)
  scale_bounds = _checks.check_bounds("scale_bounds", scale_bounds)
  if max_exponent is not None:
    _checks.check_number("max_exponent", max_exponent, strict=True)
  _checks.check_number("rms_decay", rms_decay, maximum=1.0, strict_max=True)
  _checks.check_number("scale_init", scale_init, strict=True)
  _checks.check_number("eps", eps)
  return gain_bounds, scale_bounds


def eg_step_size_adaptation(
    base_optimizer: optax.GradientTransformation,
    *,
    gamma_gains: Any,
    gamma_scale: Any,
    average: str = "prev_update",
    beta: Any = 0.9,
    normalize: str = "none",
    scale_normalize: str = "none",
    gain_bounds: tuple[float, float] | None = (1e-3, 1e3),
    scale_bounds: tuple[float, float] | None = (1e-3, 1e3),
    max_exponent: float | None = 1.0,
    rms_decay: Any = 0.99,
    renormalize_mean: bool = False,
    scale_init: Any = 1.0,
    eps: Any = 1e-20,
) -> optax.GradientTransformationExtraArgs:
  """Per-coordinate gains p and a global scale s, both learned by EG, on top of any optax optimizer.

  Per step (spec §2.3 order): (1) receive g_t; (2) with the stored signal a_{t−1} and the gains p
  applied last step,
      p ← clip(p ⊙ exp(clip(γ_p · N(a_{t−1} ⊙ g_t)))),   s ← clip(s · exp(clip(γ_s · N(⟨p ⊙ a_{t−1}, g_t⟩))));
  (3) b_t = base_optimizer update of g_t; (4) output s · p ⊙ b_t; (5) store a_t (see `average`).
  On the first step a = 0, so nothing moves. With γ_p = γ_s = 0 the output is bit-identical to
  `base_optimizer` (p = s = 1 exactly).

  With `average='prev_update'`, `normalize='none'` and no clipping active the exponents are exactly
  −γ_p ∂L/∂p / s and −γ_s ∂L/∂s of L(θ_t + s p ⊙ b_t) (tested with `jax.grad`). With
  `average='prev_grad'` around `optax.sgd(η)` and no bounds it is the article's rule `eg_sgd(η, γ_p)`.

  All defaults are ours (the paper's are unknown, spec §0.2).

  Args:
    base_optimizer: any optax transform producing the additive update b_t (learning rate included).
    gamma_gains: γ_p ≥ 0 (0 disables the gains).
    gamma_scale: γ_s ≥ 0 (0 disables the scale).
    average: the signal a: 'prev_update' (a_t = −b_t, the pure hypergradient), 'ema_update'
      (EMA of −b_t with `beta`), 'prev_grad' (a_t = g_t, Su's form), 'ema_grad' (EMA of g_t, "average
      gradient" of the abstract).
    beta: EMA decay in [0, 1) for the 'ema_*' signals.
    normalize: gain correlation normalisation: 'none' (raw product, units of gradient²), 'rms'
      (divided by the running RMS of the product, decay `rms_decay`, bias-corrected), 'cosine'
      (divided by rms(a)·rms(g) per leaf, so the mean exponent per leaf is γ_p·cos(a, g)).
    scale_normalize: 'none', 'rms' (running RMS of the scalar correlation) or 'cosine'.
    gain_bounds: box (low, high) for p, or None.
    scale_bounds: box (low, high) for s, or None.
    max_exponent: clip of each exponent per step, or None.
    rms_decay: decay in [0, 1) of the 'rms' normalisers.
    renormalize_mean: divide p by its mean per leaf after each update (gains redistribute, s scales),
      then clip to `gain_bounds` again: p stays in the box, and its mean is 1 unless the box binds.
    scale_init: s_0 > 0.
    eps: added to the normalisers' denominators.

  Returns:
    An optax transform with `EGStepSizeState`; the state keeps two parameter-sized buffers besides the
    base state (gains and signal), three with normalize='rms'.

  References:
    https://kexue.fm/archives/8968
    Amid, Anil, Fifty, Warmuth, arXiv:2202.00145 (2022).
  """
  if not isinstance(base_optimizer, optax.GradientTransformation):
    raise ValueError(f"`base_optimizer` must be an optax.GradientTransformation; got {base_optimizer!r}")
  gain_bounds, scale_bounds = _validate_adaptation(
      gamma_gains=gamma_gains, gamma_scale=gamma_scale, average=average, beta=beta, normalize=normalize,
      scale_normalize=scale_normalize, gain_bounds=gain_bounds, scale_bounds=scale_bounds,
      max_exponent=max_exponent, rms_decay=rms_decay, scale_init=scale_init, eps=eps)
  return _eg_adaptation(
      base_optimizer, gamma_gains=gamma_gains, gamma_scale=gamma_scale, adapt_gains=True,
      adapt_scale=True, average=average, beta=beta, normalize=normalize, scale_normalize=scale_normalize,
      gain_bounds=gain_bounds, scale_bounds=scale_bounds, max_exponent=max_exponent,
      rms_decay=rms_decay, renormalize_mean=renormalize_mean, scale_init=scale_init, eps=eps,
      direction_sign=-1.0)


def eg_gains(gamma: Any, *, average: str = "prev_grad", beta: Any = 0.9, normalize: str = "none",
             gain_bounds: tuple[float, float] | None = (1e-3, 1e3), max_exponent: float | None = 1.0,
             rms_decay: Any = 0.99, renormalize_mean: bool = False, eps: Any = 1e-20
             ) -> optax.GradientTransformationExtraArgs:
  """Per-coordinate EG gains as a chain element: output p ⊙ u, p ← p ⊙ exp(γ N(a_{t−1} ⊙ u_t)).

  The incoming updates u_t play the gradient's role (the transform cannot see the raw gradient).
  Placed first, before `optax.scale_by_learning_rate(η)`, on raw gradients, with no bounds,
  `average='prev_grad'` and `normalize='none'`, this is exactly `eg_sgd(η, γ)`. After a base direction
  (e.g. `scale_by_adam`) it correlates successive directions; for the exact hypergradient use
  `eg_step_size_adaptation`. Here the signal is a descent direction (positive updates, before the
  learning rate), so 'prev_update' means a_t = p-free output u_t. Defaults are ours.

  Args: as `eg_step_size_adaptation` (`gamma` is γ_p).

  References:
    https://kexue.fm/archives/8968
    Amid et al., arXiv:2202.00145 (2022).
  """
  gain_bounds, _ = _validate_adaptation(
      gamma_gains=gamma, gamma_scale=0.0, average=average, beta=beta, normalize=normalize,
      scale_normalize="none", gain_bounds=gain_bounds, scale_bounds=None, max_exponent=max_exponent,
      rms_decay=rms_decay, scale_init=1.0, eps=eps)
  return _eg_adaptation(
      optax.identity(), gamma_gains=gamma, gamma_scale=0.0, adapt_gains=True, adapt_scale=False,
      average=average, beta=beta, normalize=normalize, scale_normalize="none", gain_bounds=gain_bounds,
      scale_bounds=None, max_exponent=max_exponent, rms_decay=rms_decay,
      renormalize_mean=renormalize_mean, scale_init=1.0, eps=eps, direction_sign=1.0)


def eg_global_scale(gamma: Any, *, average: str = "prev_grad", beta: Any = 0.9,
                    normalize: str = "cosine", scale_bounds: tuple[float, float] | None = (1e-3, 1e3),
                    max_exponent: float | None = 1.0, rms_decay: Any = 0.99, scale_init: Any = 1.0,
                    eps: Any = 1e-20) -> optax.GradientTransformationExtraArgs:
  """A global EG scale as a chain element: output s·u, s ← s·exp(γ N(⟨a_{t−1}, u_t⟩)).

  As `eg_gains`, the incoming updates play the gradient's role; place it before the learning rate.
  Default normalisation 'cosine' (ours): the exponent is γ·cos(a_{t−1}, u_t), unit-free.

  Args: as `eg_step_size_adaptation` (`gamma` is γ_s, `normalize` is its `scale_normalize`).

  References:
    https://kexue.fm/archives/8968
    Amid et al., arXiv:2202.00145 (2022).
  """
  _, scale_bounds = _validate_adaptation(
      gamma_gains=0.0, gamma_scale=gamma, average=average, beta=beta, normalize="none",
      scale_normalize=normalize, gain_bounds=None, scale_bounds=scale_bounds, max_exponent=max_exponent,
      rms_decay=rms_decay, scale_init=scale_init, eps=eps)
  return _eg_adaptation(
      optax.identity(), gamma_gains=0.0, gamma_scale=gamma, adapt_gains=False, adapt_scale=True,
      average=average, beta=beta, normalize="none", scale_normalize=normalize, gain_bounds=None,
      scale_bounds=scale_bounds, max_exponent=max_exponent, rms_decay=rms_decay,
      renormalize_mean=False, scale_init=scale_init, eps=eps, direction_sign=1.0)
