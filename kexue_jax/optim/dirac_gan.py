"""Dirac-GAN dynamics: vector fields, regularisers, two-player optax training and generator EMA.

Article: 从动力学角度看优化算法（四）：GAN的第三个阶段 (https://kexue.fm/archives/6583).

Real data is the point 0, the fake sample is θ ∈ ℝᵈ and the critic is linear, D(x) = φ·x. Training
approximates φ̇ = −∇_φ L_D, θ̇ = −∇_θ L_G. The article's fields (d = 2 in the article; any d here):

  vanilla (non-saturating):  φ̇ = −σ(θ·φ) θ,                        θ̇ = (1 − σ(θ·φ)) φ
  wgan (hard ‖φ‖ = 1 critic): φ̇ = −θ/‖φ‖ + (θ·φ) φ/‖φ‖³,            θ̇ = φ/‖φ‖
  wgan_gp, λ(‖∇D‖ − c)²:     φ̇ = −θ − 2λ(1 − c/‖φ‖) φ,              θ̇ = φ
  gan_qp:                    φ̇ = −θ − (θ·φ) θ/(λ‖θ‖),              θ̇ = φ

GAN-QP follows the article's equation (divide by ‖θ‖ = ‖x_f − x_r‖); the author's gan_numeric.py
divides by ‖φ‖ instead (spec §4.3). Near 0, vanilla linearises to [[0, −I/2], [I/2, 0]] (eigenvalues
±i/2: a centre) and wgan_gp(c=0) to [[−2λI, −I], [I, 0]] (eigenvalues −λ ± √(λ² − 1): converges).

Regularisers: zero-centred gradient penalty w‖∇_x D‖² = w‖φ‖² on D; L2 weight decay (w/2)‖φ‖² on D;
consensus optimisation v ← v − γ∇½‖v‖² (Mescheder et al. 2017); the Nagarajan–Kolter generator
penalty L_G + η‖∇_φ L_D‖².

References:
  https://kexue.fm/archives/6583
  Mescheder, Geiger, Nowozin, "Which Training Methods for GANs do actually Converge?", ICML 2018
    (arXiv:1801.04406).
  Mescheder, Nowozin, Geiger, "The Numerics of GANs", NeurIPS 2017 (arXiv:1705.10461).
  Nagarajan, Kolter, "Gradient descent GAN optimization is locally stable", NeurIPS 2017
    (arXiv:1706.04156).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from kexue_jax.optim import _checks

VARIANTS = ("vanilla", "wgan", "wgan_gp", "gan_qp")
SCHEMES = ("simultaneous", "alternating", "optimistic")

Field = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _check_variant(variant, lam, c):
  _checks.check_choice("variant", variant, VARIANTS)
  if variant in ("wgan_gp", "gan_qp"):
    _checks.check_number("lam", lam, strict=True)
  if variant == "wgan_gp":
    _checks.check_number("c", c)


def dirac_gan_losses(variant: str, *, lam: float = 0.1, c: float = 0.0
                     ) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
  """The two players' losses (L_D(φ, θ), L_G(φ, θ)), both minimised, whose negative gradients are the
  fields of `dirac_gan_field` (without regularisers).

  vanilla: L_D = softplus(φ·θ) + log 2, L_G = softplus(−φ·θ); wgan: L_D = θ·φ/‖φ‖, L_G = −L_D;
  wgan_gp: L_D = φ·θ + λ(‖φ‖ − c)², L_G = −φ·θ; gan_qp: L_D = φ·θ + (φ·θ)²/(2λ‖θ‖), L_G = −φ·θ.
  `lam` defaults to the author's 0.1 (WGAN-GP); use 1.0 for his GAN-QP runs.
  """
  _check_variant(variant, lam, c)
  if variant == "vanilla":
    return (lambda phi, theta: jax.nn.softplus(phi @ theta) + jnp.log(2.0),
            lambda phi, theta: jax.nn.softplus(-(phi @ theta)))
  if variant == "wgan":
    return (lambda phi, theta: theta @ phi / jnp.linalg.norm(phi),
            lambda phi, theta: -(theta @ phi) / jnp.linalg.norm(phi))
  if variant == "wgan_gp":
    return (lambda phi, theta: phi @ theta + lam * (jnp.linalg.norm(phi) - c) ** 2,
            lambda phi, theta: -(phi @ theta))
  return (lambda phi, theta: phi @ theta + (phi @ theta) ** 2 / (2 * lam * jnp.linalg.norm(theta)),
          lambda phi, theta: -(phi @ theta))


def _base_field(variant, lam, c) -> Field:
  if variant == "vanilla":
    def field(phi, theta):
      s = jax.nn.sigmoid(theta @ phi)
      return -s * theta, (1 - s) * phi
  elif variant == "wgan":
    def field(phi, theta):
      n = jnp.linalg.norm(phi)
      return -theta / n + (theta @ phi) * phi / n ** 3, phi / n
  elif variant == "wgan_gp":
    def field(phi, theta):
      # c = 0 is written without 1/‖φ‖ so that the field (and its Jacobian) is defined at φ = 0.
      shrink = 2 * lam if c == 0 else 2 * lam * (1 - c / jnp.linalg.norm(phi))
      return -theta - shrink * phi, phi
  else:
    def field(phi, theta):
      return -theta - (theta @ phi) * theta / (lam * jnp.linalg.norm(theta)), phi
  return field


def dirac_gan_field(variant: str, *, lam: float = 0.1, c: float = 0.0, l2: float = 0.0,
                    zero_gp: float = 0.0, consensus: float = 0.0, nk: float = 0.0) -> Field:
  """The Dirac-GAN vector field (φ, θ) -> (φ̇, θ̇) of `variant` with optional regularisers.

  Args:
    variant: 'vanilla' | 'wgan' | 'wgan_gp' | 'gan_qp' (module docstring has the equations).
    lam: λ > 0 of wgan_gp (gradient-penalty weight) and gan_qp (the quadratic term's scale).
    c: the gradient-penalty centre of wgan_gp (0: zero-centred, WGAN-div; 1: WGAN-GP).
    l2: weight w ≥ 0 of (w/2)‖φ‖² on D (the author adds −0.1φ to φ̇).
    zero_gp: weight w ≥ 0 of the zero-centred penalty w‖∇_x D‖² = w‖φ‖² on D.
    consensus: γ ≥ 0 of consensus optimisation, v ← v − γ ∇_{(φ,θ)} ½‖v‖².
    nk: η ≥ 0 of the Nagarajan–Kolter generator penalty η‖∇_φ L_D‖² (L_D with the D regularisers).

  Returns:
    field(phi[d], theta[d]) -> (phi_dot[d], theta_dot[d]), a pure jit-able function.
  """
  _check_variant(variant, lam, c)
  for name, w in (("l2", l2), ("zero_gp", zero_gp), ("consensus", consensus), ("nk", nk)):
    _checks.check_number(name, w)
  base = _base_field(variant, lam, c)

  def with_d_regs(phi, theta):
    dphi, dtheta = base(phi, theta)
    return dphi - (l2 + 2 * zero_gp) * phi, dtheta

  def with_nk(phi, theta):
    dphi, dtheta = with_d_regs(phi, theta)
    if nk:
      # ∇_φ L_D = −φ̇, so the penalty is η‖φ̇‖², minimised by the generator only.
      pen = jax.grad(lambda th: jnp.sum(jnp.square(with_d_regs(phi, th)[0])))(theta)
      dtheta = dtheta - nk * pen
    return dphi, dtheta

  def field(phi, theta):
    dphi, dtheta = with_nk(phi, theta)
    if consensus:
      half_sq = lambda p, t: 0.5 * sum(jnp.sum(jnp.square(x)) for x in with_nk(p, t))  # noqa: E731
      gp, gt = jax.grad(half_sq, argnums=(0, 1))(phi, theta)
      dphi, dtheta = dphi - consensus * gp, dtheta - consensus * gt
    return dphi, dtheta

  return field


def integrate_field(field: Field, phi0: jax.Array, theta0: jax.Array, *, dt: float, num_steps: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fixed-step RK4 of (φ̇, θ̇) = field(φ, θ) for the continuous-time pictures.

  Returns:
    (φ_T[d], θ_T[d], ‖θ_n‖ for n = 0..N [N+1]).
  """
  _checks.check_number("dt", dt, strict=True)
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}")

  def f(z):
    return jnp.concatenate(field(z[: phi0.shape[0]], z[phi0.shape[0]:]))

  def body(z, _):
    k1 = f(z)
    k2 = f(z + dt / 2 * k1)
    k3 = f(z + dt / 2 * k2)
    k4 = f(z + dt * k3)
    z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z, jnp.linalg.norm(z[phi0.shape[0]:])

  z, norms = jax.lax.scan(body, jnp.concatenate([phi0, theta0]), None, length=num_steps)
  norms = jnp.concatenate([jnp.linalg.norm(theta0)[None], norms])
  return z[: phi0.shape[0]], z[phi0.shape[0]:], norms


def train_dirac_gan(field: Field, phi0: jax.Array, theta0: jax.Array, *,
                    d_optimizer: optax.GradientTransformation, g_optimizer: optax.GradientTransformation,
                    num_steps: int, scheme: str = "simultaneous", ema_decay: float | None = None
                    ) -> dict[str, jax.Array]:
  """Discrete two-player training: each player descends its own loss with its own optax optimizer.

  The players' gradients are −φ̇ and −θ̇ of `field`. Schemes: 'simultaneous' (both at the old point);
  'alternating' (D steps first, then G at the new φ); 'optimistic' (each player feeds 2g_t − g_{t−1}
  to its optimizer, g_{−1} = g_0, as `optax.optimistic_gradient_descent` with α = β = 1 does).
  `ema_decay` keeps θ_ema ← δθ_ema + (1 − δ)θ after every step (generator EMA; it does not change
  the trajectory).

  Returns:
    dict with 'phi', 'theta', 'theta_ema' (final values, [d]) and 'theta_norm', 'theta_ema_norm'
    ([num_steps + 1], index 0 is the start).
  """
  _checks.check_choice("scheme", scheme, SCHEMES)
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}")
  if ema_decay is not None:
    _checks.check_number("ema_decay", ema_decay, maximum=1.0)
  decay = 0.0 if ema_decay is None else ema_decay

  def step(carry, _):
    phi, theta, sd, sg, prev, ema = carry
    gphi, gtheta = (-x for x in field(phi, theta))
    if scheme == "optimistic":
      pphi, ptheta, first = prev
      pphi = jnp.where(first, gphi, pphi)
      ptheta = jnp.where(first, gtheta, ptheta)
      prev = (gphi, gtheta, jnp.zeros_like(first))
      gphi, gtheta = 2 * gphi - pphi, 2 * gtheta - ptheta
    ud, sd = sd_update(gphi, sd, phi)
    new_phi = optax.apply_updates(phi, ud)
    if scheme == "alternating":
      gtheta = -field(new_phi, theta)[1]
    ug, sg = sg_update(gtheta, sg, theta)
    new_theta = optax.apply_updates(theta, ug)
    ema = optax.incremental_update(new_theta, ema, 1 - decay)
    return (new_phi, new_theta, sd, sg, prev, ema), (jnp.linalg.norm(new_theta), jnp.linalg.norm(ema))

  sd_update, sg_update = d_optimizer.update, g_optimizer.update
  prev0 = (jnp.zeros_like(phi0), jnp.zeros_like(theta0), jnp.ones([], bool))
  carry = (phi0, theta0, d_optimizer.init(phi0), g_optimizer.init(theta0), prev0, theta0)
  (phi, theta, _, _, _, ema), (norms, ema_norms) = jax.lax.scan(step, carry, None, length=num_steps)
  n0 = jnp.linalg.norm(theta0)[None]
  return dict(phi=phi, theta=theta, theta_ema=ema, theta_norm=jnp.concatenate([n0, norms]),
              theta_ema_norm=jnp.concatenate([n0, ema_norms]))
