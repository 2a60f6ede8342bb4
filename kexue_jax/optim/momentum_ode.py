"""Momentum as a discretised damped ODE, and SGD as a stochastic differential equation.

Article: 从动力学角度看优化算法（一）：从SGD到动量加速 (https://kexue.fm/archives/5655).

Heavy ball is the leapfrog (staggered-grid) discretisation with time step γ of

    θ̈ + λ θ̇ = −∇L(θ),      i.e.   θ̇ = η,  η̇ = −λη − ∇L(θ),

    v_{n+1} = β v_n − α ∇L(θ_n),  θ_{n+1} = θ_n + v_{n+1},
    β = (1 − λγ/2) / (1 + λγ/2),   α = γ² / (1 + λγ/2)          (article eq. 15, v = γ η_{n+1/2}).

Symplectic Euler gives β = 1 − λγ, α = γ²; the article's Nesterov variant (eq. 20) evaluates the
gradient at the midpoint estimate θ_n + (β/2) v_n with the same α, β. optax/PyTorch write momentum as
m ← g + βm, θ ← θ − αm (v = −αm): identical at constant α, different when α changes (state convention).

SGD with Gaussian gradient noise of variance σ², θ ← θ − γ(∇L + σξ), has on L = k θ²/2 the exact
stationary variance γσ²/(2k − γk²), i.e. temperature γσ²/2 (spec §3.1: the article's exp(−L/σ²) is off
by a factor 2).

References:
  https://kexue.fm/archives/5655
  Polyak, "Some methods of speeding up the convergence of iteration methods" (1964).
  Smith, Kindermans, Ying, Le, "Don't decay the learning rate, increase the batch size", ICLR 2018.
"""
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kexue_jax.optim import _checks

SCHEMES = ("leapfrog", "symplectic_euler", "nesterov", "nesterov_midpoint")


def _check_dt_friction(dt, friction):
  _checks.check_number("dt", dt, strict=True)
  _checks.check_number("friction", friction)


def momentum_coefficients(dt: Any, friction: Any, scheme: str = "leapfrog") -> tuple[Any, Any]:
  """Maps the ODE time step γ and friction λ to (learning_rate α, momentum β).

  Args:
    dt: γ > 0.
    friction: λ ≥ 0.
    scheme: 'leapfrog' (β = (1−λγ/2)/(1+λγ/2), α = γ²/(1+λγ/2)); 'symplectic_euler', 'nesterov' and
      'nesterov_midpoint' (β = 1 − λγ, α = γ²).

  Returns:
    (α, β), the `optax.sgd(α, momentum=β)` coefficients.
  """
  _check_dt_friction(dt, friction)
  _checks.check_choice("scheme", scheme, SCHEMES)
  if scheme == "leapfrog":
    half = 1 + friction * dt / 2
    return dt * dt / half, (1 - friction * dt / 2) / half
  return dt * dt, 1 - friction * dt


def ode_from_momentum(learning_rate: Any, momentum: Any, scheme: str = "leapfrog") -> tuple[Any, Any]:
  """Inverse of `momentum_coefficients`: (α, β) -> (γ, λ).

  Leapfrog: γ = √(2α/(1+β)), λ = 2(1−β)/((1+β)γ). The others: γ = √α, λ = (1−β)/γ.
  """
  _checks.check_number("learning_rate", learning_rate, strict=True)
  _checks.check_number("momentum", momentum, minimum=-1.0, strict=True, maximum=1.0)
  _checks.check_choice("scheme", scheme, SCHEMES)
  if scheme == "leapfrog":
    dt = (2 * learning_rate / (1 + momentum)) ** 0.5
    return dt, 2 * (1 - momentum) / ((1 + momentum) * dt)
  dt = learning_rate ** 0.5
  return dt, (1 - momentum) / dt


def beta_for_new_lr(beta: Any, ratio: Any) -> Any:
  """Momentum to use when the learning rate is multiplied by `ratio` at fixed friction.

  1 − β ≈ λ√α, so α → rα needs β → 1 − (1 − β)√r (article: β = 0.9, r = 0.1 gives ≈ 0.968).
  """
  _checks.check_number("beta", beta, maximum=1.0)
  _checks.check_number("ratio", ratio)
  return 1 - (1 - beta) * ratio ** 0.5


def momentum_schedule(learning_rate_schedule: Callable[[Any], Any], beta: float, *,
                      reference_learning_rate: Any = None) -> Callable[[Any], Any]:
  """β(step) = `beta_for_new_lr`(β₀, lr(step)/lr_ref): couples momentum to a decaying lr schedule.

  `reference_learning_rate` is the rate at which the momentum is β₀ (default lr(0)); give it for a
  schedule with a warm-up from 0, where lr(0) cannot be the reference.
  """
  _checks.check_number("beta", beta, maximum=1.0)
  if not callable(learning_rate_schedule):
    raise ValueError(f"`learning_rate_schedule` must be callable; got {learning_rate_schedule!r}")
  if reference_learning_rate is None:
    lr0 = learning_rate_schedule(0)
    try:
      v = float(lr0)
    except (TypeError, jax.errors.ConcretizationTypeError):  # a traced schedule: nothing to check
      v = None
    if v is not None and not v > 0:
      raise ValueError(f"`learning_rate_schedule(0)` must be > 0 to be the reference rate; got {v!r} "
                       "(pass `reference_learning_rate=` for a schedule that warms up from 0)")
  else:
    _checks.check_number("reference_learning_rate", reference_learning_rate, strict=True)
    lr0 = reference_learning_rate

  def schedule(step):
    return 1 - (1 - beta) * jnp.sqrt(learning_rate_schedule(step) / lr0)
  return schedule


class ShiftedMomentumState(NamedTuple):
  count: jax.Array  # int32 scalar
  velocity: Any     # pytree like params: v_n (Keras convention, learning rate inside)


def scale_by_shifted_momentum(learning_rate: Any, momentum: Any, shift: Any
                              ) -> optax.GradientTransformationExtraArgs:
  """Heavy ball with the gradient taken at a shifted point, in the shifted variable Θ = θ + c·v.

  The iteration v_{n+1} = β v_n − α ∇L(θ_n + c v_n), θ_{n+1} = θ_n + v_{n+1} is run on the
  parameters Θ_n = θ_n + c v_n (so the gradient optax receives is the one needed):
  Θ_{n+1} − Θ_n = (1 + c) v_{n+1} − c v_n. c = β is standard Nesterov (= `optax.sgd(α, β,
  nesterov=True)`); c = β/2 is the article's midpoint form (eq. 20).

  Args:
    learning_rate: α ≥ 0.
    momentum: β in [0, 1].
    shift: c ≥ 0.

  Returns:
    An optax transform with `ShiftedMomentumState`.
  """
  _checks.check_number("learning_rate", learning_rate)
  _checks.check_number("momentum", momentum, maximum=1.0)
  _checks.check_number("shift", shift)

  def init_fn(params):
    return ShiftedMomentumState(count=jnp.zeros([], jnp.int32), velocity=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    v_new = jax.tree.map(lambda v, g: momentum * v - learning_rate * g, state.velocity, updates)
    new_updates = jax.tree.map(lambda vn, v: (1 + shift) * vn - shift * v, v_new, state.velocity)
    return new_updates, ShiftedMomentumState(optax.safe_increment(state.count), v_new)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def heavy_ball_ode(dt: Any, friction: Any, scheme: str = "leapfrog") -> optax.GradientTransformation:
  """The optax optimizer that integrates θ̈ + λθ̇ = −∇L with time step γ by `scheme`.

  'leapfrog' and 'symplectic_euler' -> `optax.sgd(α, momentum=β)`; 'nesterov' ->
  `optax.sgd(α, momentum=β, nesterov=True)` (Θ = θ + βv variables); 'nesterov_midpoint' -> the
  article's β/2 form, `scale_by_shifted_momentum(α, β, β/2)` (Θ = θ + (β/2)v variables).

  References:
    https://kexue.fm/archives/5655
  """
  alpha, beta = momentum_coefficients(dt, friction, scheme)
  if _checks.concrete_number(beta) is not None and not -1.0 < beta <= 1.0:
    raise ValueError(f"`friction` must give momentum in (-1, 1]; got friction={friction!r}, dt={dt!r} "
                     f"(momentum {beta!r})")
  if scheme in ("leapfrog", "symplectic_euler"):
    return optax.sgd(alpha, momentum=beta)
  if scheme == "nesterov":
    return optax.sgd(alpha, momentum=beta, nesterov=True)
  return scale_by_shifted_momentum(alpha, beta, beta / 2)


def integrate_damped_oscillator(grad_fn: Callable[[jax.Array], jax.Array], theta0: jax.Array,
                                velocity0: jax.Array, *, dt: float, friction: float, num_steps: int,
                                scheme: str = "leapfrog") -> jax.Array:
  """Integrates θ̈ + λθ̇ = −∇L(θ) from (θ₀, θ̇₀) for `num_steps` steps of size γ; returns θ(Nγ).

  'leapfrog' is the article's staggered scheme with the half-step velocity started at
  η_{−1/2} = η₀ − (γ/2)(−λη₀ − ∇L(θ₀)) (starting at η_{−1/2} = 0 would make the error first order);
  'euler' is explicit Euler on the first-order system (θ, η), for comparison.

  Args:
    grad_fn: θ -> ∇L(θ), same shape as θ.
    theta0, velocity0: arrays of one shape.
    dt, friction, num_steps: γ > 0, λ ≥ 0, N ≥ 1.
    scheme: 'leapfrog' or 'euler'.

  Returns:
    θ after N steps, shape of `theta0`.
  """
  _check_dt_friction(dt, friction)
  _checks.check_choice("scheme", scheme, ("leapfrog", "euler"))
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}")

  if scheme == "leapfrog":
    eta_half = velocity0 - dt / 2 * (-friction * velocity0 - grad_fn(theta0))

    def body(carry, _):
      theta, eta = carry
      # (η_{n+1/2} − η_{n−1/2})/γ = −λ(η_{n+1/2} + η_{n−1/2})/2 − ∇L(θ_n), solved for η_{n+1/2}.
      eta = ((1 - friction * dt / 2) * eta - dt * grad_fn(theta)) / (1 + friction * dt / 2)
      return (theta + dt * eta, eta), None
  else:
    eta_half = velocity0

    def body(carry, _):
      theta, eta = carry
      return (theta + dt * eta, eta + dt * (-friction * eta - grad_fn(theta))), None

  (theta, _), _ = jax.lax.scan(body, (theta0, eta_half), None, length=num_steps)
  return theta


def simulate_sgd_sde(key: jax.Array, grad_fn: Callable[[jax.Array], jax.Array], theta0: jax.Array, *,
                     learning_rate: float, noise_std: float, num_steps: int) -> jax.Array:
  """SGD with explicit Gaussian gradient noise: θ ← θ − γ(∇L(θ) + σ ξ), ξ ~ N(0, I) fresh each step.

  Vectorise over independent chains by giving `theta0` a leading chain axis (and an elementwise
  `grad_fn`). Returns θ after `num_steps` steps, shape of `theta0`.
  """
  _checks.check_number("learning_rate", learning_rate, strict=True)
  _checks.check_number("noise_std", noise_std)
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}")

  def body(theta, k):
    xi = jax.random.normal(k, theta.shape, theta.dtype)
    return theta - learning_rate * (grad_fn(theta) + noise_std * xi), None

  theta, _ = jax.lax.scan(body, theta0, jax.random.split(key, num_steps))
  return theta


def sgd_stationary_variance(learning_rate: float, noise_std: float, curvature: float) -> float:
  """Exact stationary variance of noisy SGD on L = kθ²/2: γσ²/(2k − γk²) (needs 0 < γk < 2).

  The AR(1) recursion θ' = (1 − γk)θ − γσξ has Var = γ²σ²/(1 − (1 − γk)²). Small γ: the Gibbs law
  exp(−2L/(γσ²)) (spec §3.1, correcting the article's exp(−L/σ²)).
  """
  _checks.check_number("learning_rate", learning_rate, strict=True)
  _checks.check_number("noise_std", noise_std)
  _checks.check_number("curvature", curvature, strict=True)
  if not learning_rate * curvature < 2:
    raise ValueError(f"`learning_rate` must be < 2/curvature for a stationary law; got {learning_rate!r}")
  return learning_rate * noise_std ** 2 / (2 * curvature - learning_rate * curvature ** 2)


def damped_oscillator_exact(x0: float, v0: float, *, friction: float, stiffness: float, t: float
                            ) -> float:
  """x(t) of ẍ + λẋ + kx = 0 via the matrix exponential of the first-order system (a test oracle)."""
  a = jnp.array([[0.0, 1.0], [-stiffness, -friction]])
  return float((jax.scipy.linalg.expm(a * t) @ jnp.array([x0, v0]))[0])


__all__ = ["SCHEMES", "momentum_coefficients", "ode_from_momentum", "beta_for_new_lr",
           "momentum_schedule", "scale_by_shifted_momentum", "ShiftedMomentumState", "heavy_ball_ode",
           "integrate_damped_oscillator", "simulate_sgd_sde", "sgd_stationary_variance",
           "damped_oscillator_exact"]
