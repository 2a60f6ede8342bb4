"""Dirac-GAN dynamics (https://kexue.fm/archives/6583): fields vs autodiff, eigenvalues, stability."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

from kexue_jax import optim as ko

PHI0, THETA0 = np.array([0.1, 0.2]), np.array([0.2, 0.1])  # the author's gan_numeric.py start


def _jacobian(field, d=2):
  f = lambda z: jnp.concatenate(field(z[:d], z[d:]))  # noqa: E731
  return np.asarray(jax.jacfwd(f)(jnp.zeros(2 * d)))


@pytest.mark.parametrize("variant,kw", [("vanilla", {}), ("wgan", {}), ("wgan_gp", dict(lam=0.3, c=0.0)),
                                        ("wgan_gp", dict(lam=0.3, c=1.0)), ("gan_qp", dict(lam=1.0))])
def test_fields_are_minus_loss_gradients(variant, kw):
  with jax.enable_x64(True):
    d_loss, g_loss = ko.dirac_gan_losses(variant, **kw)
    field = ko.dirac_gan_field(variant, **kw)
    rng = np.random.default_rng(0)
    for _ in range(3):
      phi, theta = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3))
      dphi, dtheta = field(phi, theta)
      np.testing.assert_allclose(dphi, -jax.grad(d_loss)(phi, theta), rtol=1e-12, atol=1e-14)
      np.testing.assert_allclose(dtheta, -jax.grad(g_loss, argnums=1)(phi, theta), rtol=1e-12, atol=1e-14)


def test_linearisation_eigenvalues():
  with jax.enable_x64(True):
    j = _jacobian(ko.dirac_gan_field("vanilla"))
    np.testing.assert_allclose(j, np.block([[np.zeros((2, 2)), -0.5 * np.eye(2)],
                                            [0.5 * np.eye(2), np.zeros((2, 2))]]), atol=1e-15)
    ev = np.sort_complex(np.linalg.eigvals(j))
    np.testing.assert_allclose(ev, np.array([-0.5j, -0.5j, 0.5j, 0.5j]), atol=1e-12)
    lam = 0.1
    ev = np.linalg.eigvals(_jacobian(ko.dirac_gan_field("wgan_gp", lam=lam, c=0.0)))
    want = -lam + np.sqrt(complex(lam ** 2 - 1)) * np.array([1, 1, -1, -1])
    np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(want), atol=1e-12)
    assert np.all(ev.real < 0)


# (variant, kwargs, T, convergent?) with the author's settings (bojone/gan gan_numeric.py).
AUTHOR = [("vanilla", {}, 100.0, False), ("wgan", {}, 10.0, False),
          ("wgan_gp", dict(lam=0.1, c=0.0), 40.0, True), ("wgan_gp", dict(lam=0.1, c=1.0), 40.0, False),
          ("gan_qp", dict(lam=1.0), 40.0, False), ("gan_qp", dict(lam=1.0, l2=0.1), 70.0, True)]


def test_continuous_time_behaviour_matches_author_settings_and_scipy():
  with jax.enable_x64(True):
    for variant, kw, horizon, converges in AUTHOR:
      field = ko.dirac_gan_field(variant, **kw)
      dt = 0.005
      _, theta, norms = jax.jit(lambda p, t: ko.integrate_field(field, p, t, dt=dt,
                                                                num_steps=int(horizon / dt)))(PHI0, THETA0)
      f = jax.jit(lambda z: jnp.concatenate(field(z[:2], z[2:])))
      sol = scipy.integrate.solve_ivp(lambda t, z: np.asarray(f(jnp.asarray(z))), (0, horizon),
                                      np.concatenate([PHI0, THETA0]), method="RK45", rtol=1e-10,
                                      atol=1e-12)
      np.testing.assert_allclose(theta, sol.y[2:, -1], atol=1e-6, err_msg=variant)
      final = float(norms[-1])
      if converges:
        assert final < 0.02, (variant, kw, final)
      else:
        assert final > 0.08, (variant, kw, final)


def test_simultaneous_euler_stable_iff_h_below_two_lambda():
  lam = 0.1
  with jax.enable_x64(True):
    field = ko.dirac_gan_field("wgan_gp", lam=lam, c=0.0)
    j = _jacobian(field)
    for h in (0.19, 0.21):
      rho = np.max(np.abs(np.linalg.eigvals(np.eye(4) + h * j)))
      assert rho == pytest.approx(np.sqrt(1 - 2 * h * lam + h * h), rel=1e-12)
      assert (rho < 1) == (h < 2 * lam)
    run = jax.jit(lambda h: ko.train_dirac_gan(field, PHI0, THETA0, d_optimizer=optax.sgd(h),
                                               g_optimizer=optax.sgd(h), num_steps=4000)["theta_norm"][-1])
    assert float(run(0.1)) < 1e-6
    assert float(run(0.3)) > 1e3


def test_training_schemes_and_ema():
  with jax.enable_x64(True):
    field = ko.dirac_gan_field("vanilla")
    h = 0.1

    def run(scheme, d_opt=None, g_opt=None, ema=None, steps=5000):
      return ko.train_dirac_gan(field, PHI0, THETA0, d_optimizer=d_opt or optax.sgd(h),
                                g_optimizer=g_opt or optax.sgd(h), num_steps=steps, scheme=scheme,
                                ema_decay=ema)
    # Simultaneous Euler spirals out of the centre (|1 ± ih/2| > 1); alternating stays bounded.
    sim, alt = run("simultaneous"), run("alternating")
    assert float(sim["theta_norm"][-1]) > 2 * float(sim["theta_norm"][0])
    assert float(jnp.max(alt["theta_norm"])) < 0.3
    # 'optimistic' with SGD is optax's optimistic gradient descent (α = β = 1).
    opt_ours = run("optimistic", steps=50)
    opt_optax = run("simultaneous", optax.optimistic_gradient_descent(h), optax.optimistic_gradient_descent(h),
                    steps=50)
    np.testing.assert_allclose(opt_ours["theta"], opt_optax["theta"], rtol=1e-12)
    # EMA of the oscillating generator estimates the centre (0) far better than the last iterate.
    ema = run("alternating", ema=0.999, steps=20000)
    assert float(ema["theta_ema_norm"][-1]) < 0.3 * float(ema["theta_norm"][-1])
    np.testing.assert_allclose(ema["theta_norm"], run("alternating", steps=20000)["theta_norm"], rtol=1e-12)


def test_regularisers_add_the_documented_terms():
  with jax.enable_x64(True):
    phi, theta = jnp.array([0.3, -0.2]), jnp.array([0.5, 0.1])
    base = ko.dirac_gan_field("vanilla")
    bphi, btheta = base(phi, theta)
    rphi, _ = ko.dirac_gan_field("vanilla", zero_gp=0.5, l2=0.2)(phi, theta)
    np.testing.assert_allclose(rphi, bphi - (2 * 0.5 + 0.2) * phi, rtol=1e-13)
    d_loss, g_loss = ko.dirac_gan_losses("vanilla")
    nk = ko.dirac_gan_field("vanilla", nk=0.3)(phi, theta)[1]
    pen = lambda t: g_loss(phi, t) + 0.3 * jnp.sum(jnp.square(jax.grad(d_loss)(phi, t)))  # noqa: E731
    np.testing.assert_allclose(nk, -jax.grad(pen)(theta), rtol=1e-12)
    cphi, ctheta = ko.dirac_gan_field("vanilla", consensus=0.7)(phi, theta)
    sq = lambda p, t: 0.5 * sum(jnp.sum(x ** 2) for x in base(p, t))  # noqa: E731
    gp, gt = jax.grad(sq, argnums=(0, 1))(phi, theta)
    np.testing.assert_allclose(cphi, bphi - 0.7 * gp, rtol=1e-12)
    np.testing.assert_allclose(ctheta, btheta - 0.7 * gt, rtol=1e-12)
    # Consensus makes the centre attracting: the Jacobian's eigenvalues get negative real parts.
    ev = np.linalg.eigvals(_jacobian(ko.dirac_gan_field("vanilla", consensus=0.7)))
    assert np.all(ev.real < 0)


def test_nk_penalty_differentiates_the_regularised_discriminator_loss():
  """With l2 = 0.2 and zero_gp = 0.5 the NK generator penalty is η‖∇_φ L_D‖² of L_D WITH the D regularisers
  (the docstring): L_D + (l2/2)‖φ‖² + zero_gp‖φ‖², written here. θ̇ = −∇_θ(L_G + η‖∇_φ L_D‖²), φ̇ = −∇_φ L_D;
  autodiff of those losses, rtol 1e-12. The penalty of the bare L_D differs, so the check tells them apart."""
  with jax.enable_x64(True):
    phi, theta = jnp.array([0.3, -0.2]), jnp.array([0.5, 0.1])
    l2, zero_gp, eta = 0.2, 0.5, 0.3
    d_loss, g_loss = ko.dirac_gan_losses("vanilla")
    d_reg = lambda p, t: d_loss(p, t) + 0.5 * l2 * jnp.sum(p ** 2) + zero_gp * jnp.sum(p ** 2)  # noqa: E731
    gen = lambda d, t: g_loss(phi, t) + eta * jnp.sum(jnp.square(jax.grad(d)(phi, t)))  # noqa: E731
    dphi, dtheta = ko.dirac_gan_field("vanilla", l2=l2, zero_gp=zero_gp, nk=eta)(phi, theta)
    np.testing.assert_allclose(dphi, -jax.grad(d_reg)(phi, theta), rtol=1e-12)
    want = -jax.grad(lambda t: gen(d_reg, t))(theta)
    np.testing.assert_allclose(dtheta, want, rtol=1e-12)
    bare = -jax.grad(lambda t: gen(d_loss, t))(theta)
    assert np.linalg.norm(bare - want) > 1e-3 * np.linalg.norm(want)


@pytest.mark.parametrize("scheme", ["simultaneous", "alternating"])
def test_generator_ema_averages_the_new_iterates(scheme):
  """Three SGD steps (h = 0.1) of the vanilla Dirac GAN with ema_decay δ = 0.7 against a NumPy loop of the
  article's field φ̇ = −σ(θ·φ)θ, θ̇ = (1 − σ(θ·φ))φ (alternating: θ̇ at the new φ) and the EMA
  e_0 = θ_0, e_t = δ e_{t−1} + (1 − δ) θ_t of the NEW iterates; float64, rtol 1e-12."""
  h, decay = 0.1, 0.7
  sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
  phi, theta = np.array([0.6, -0.4]), np.array([0.5, 0.8])
  ema, thetas, emas = theta.copy(), [theta], [theta]
  for _ in range(3):
    new_phi = phi - h * sig(theta @ phi) * theta
    p = new_phi if scheme == "alternating" else phi
    theta = theta + h * (1 - sig(theta @ p)) * p
    phi = new_phi
    ema = decay * ema + (1 - decay) * theta
    thetas.append(theta)
    emas.append(ema)
  with jax.enable_x64(True):
    out = ko.train_dirac_gan(ko.dirac_gan_field("vanilla"), jnp.array([0.6, -0.4]), jnp.array([0.5, 0.8]),
                             d_optimizer=optax.sgd(h), g_optimizer=optax.sgd(h), num_steps=3, scheme=scheme,
                             ema_decay=decay)
    np.testing.assert_allclose(out["theta"], thetas[-1], rtol=1e-12)
    np.testing.assert_allclose(out["theta_ema"], emas[-1], rtol=1e-12)
    np.testing.assert_allclose(out["theta_norm"], [np.linalg.norm(t) for t in thetas], rtol=1e-12)
    np.testing.assert_allclose(out["theta_ema_norm"], [np.linalg.norm(e) for e in emas], rtol=1e-12)
  # An EMA of the old iterates (one step behind) would differ by far more than the tolerance.
  lagged = decay ** 3 * thetas[0] + (1 - decay) * sum(decay ** (2 - k) * thetas[k] for k in range(3))
  assert np.linalg.norm(lagged - emas[-1]) > 1e-6 * np.linalg.norm(emas[-1])


BAD = [
    (lambda: ko.dirac_gan_field("lsgan"), r"`variant` must be one of \('vanilla', 'wgan', 'wgan_gp', 'gan_qp'\)"),
    (lambda: ko.dirac_gan_field("wgan_gp", lam=0.0), "`lam` must be a finite number > 0.0; got 0.0"),
    (lambda: ko.dirac_gan_field("vanilla", consensus=-1.0), "`consensus` must be a finite number >= 0.0"),
    (lambda: ko.train_dirac_gan(ko.dirac_gan_field("vanilla"), PHI0, THETA0, d_optimizer=optax.sgd(0.1),
                                g_optimizer=optax.sgd(0.1), num_steps=10, scheme="extragradient"),
     r"`scheme` must be one of \('simultaneous', 'alternating', 'optimistic'\)"),
]


@pytest.mark.parametrize("build,message", BAD)
def test_bad_inputs(build, message):
  with pytest.raises(ValueError, match=message):
    build()
