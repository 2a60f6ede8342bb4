"""Momentum as an ODE, SGD as an SDE (https://kexue.fm/archives/5655): optax equality, order, variance."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kexue_jax import optim as ko

A_DIAG = np.array([1.0, 10.0, 100.0])


def _run_optax(opt, theta0, steps):
  grad = lambda th: jnp.asarray(A_DIAG) * th  # noqa: E731
  th, s = theta0, opt.init(theta0)
  out = []
  for _ in range(steps):
    u, s = opt.update(grad(th), s, th)
    th = th + u
    out.append(np.asarray(th))
  return np.stack(out)


def test_leapfrog_equals_optax_sgd_momentum_for_200_steps():
  # Su's staggered scheme in (θ, η) variables, NumPy, vs heavy_ball_ode and optax.sgd(α, β).
  gamma, lam = 0.05, 2.0
  alpha, beta = ko.momentum_coefficients(gamma, lam, "leapfrog")
  assert alpha == pytest.approx(0.00238095238, rel=1e-9) and beta == pytest.approx(0.9047619048, rel=1e-9)
  theta = np.array([1.0, -1.0, 0.5])
  eta = np.zeros(3)
  ref = []
  for _ in range(200):
    eta = ((1 - lam * gamma / 2) * eta - gamma * A_DIAG * theta) / (1 + lam * gamma / 2)
    theta = theta + gamma * eta
    ref.append(theta)
  ref = np.stack(ref)
  with jax.enable_x64(True):
    th0 = jnp.array([1.0, -1.0, 0.5])
    got = _run_optax(ko.heavy_ball_ode(gamma, lam), th0, 200)
    plain = _run_optax(optax.sgd(alpha, momentum=beta), th0, 200)
  assert np.max(np.abs(got - ref)) < 1e-12
  assert np.max(np.abs(plain - ref)) < 1e-12


def test_symplectic_euler_equals_its_direct_iteration_in_ode_variables():
  # η_{n+1} = η_n − γ(λη_n + ∇L(θ_n)), θ_{n+1} = θ_n + γη_{n+1}, written in (θ, η) without any (α, β).
  gamma, lam = 0.05, 2.0
  theta, eta = np.array([1.0, -1.0, 0.5]), np.zeros(3)
  ref = []
  for _ in range(200):
    eta = eta - gamma * (lam * eta + A_DIAG * theta)
    theta = theta + gamma * eta
    ref.append(theta)
  with jax.enable_x64(True):
    got = _run_optax(ko.heavy_ball_ode(gamma, lam, "symplectic_euler"), jnp.array([1.0, -1.0, 0.5]), 200)
  assert np.max(np.abs(got - np.stack(ref))) < 1e-12
  for scheme in ("symplectic_euler", "nesterov", "nesterov_midpoint"):  # the same (α, β) = (γ², 1 − λγ)
    alpha, beta = ko.momentum_coefficients(gamma, lam, scheme)
    assert alpha == pytest.approx(0.0025, rel=1e-12) and beta == pytest.approx(0.9, rel=1e-12)


def test_nesterov_schemes_match_their_direct_iterations():
  gamma, lam = 0.05, 2.0
  alpha, beta = ko.momentum_coefficients(gamma, lam, "nesterov")
  grad = lambda th: A_DIAG * th  # noqa: E731
  with jax.enable_x64(True):
    th0 = jnp.array([1.0, -1.0, 0.5])
    for shift, opt in [(beta, ko.heavy_ball_ode(gamma, lam, "nesterov")),
                       (beta / 2, ko.heavy_ball_ode(gamma, lam, "nesterov_midpoint")),
                       (beta, ko.scale_by_shifted_momentum(alpha, beta, beta))]:
      # Direct form: v' = βv − α∇L(θ + c v), θ' = θ + v'; optax runs on Θ = θ + c v.
      theta, v = np.array([1.0, -1.0, 0.5]), np.zeros(3)
      big = []
      for _ in range(100):
        v = beta * v - alpha * grad(theta + shift * v)
        theta = theta + v
        big.append(theta + shift * v)
      got = _run_optax(opt, th0, 100)
      assert np.max(np.abs(got - np.stack(big))) < 1e-12
    # The standard Θ form is optax's Nesterov, step for step.
    a = _run_optax(ko.scale_by_shifted_momentum(alpha, beta, beta), th0, 100)
    b = _run_optax(optax.sgd(alpha, momentum=beta, nesterov=True), th0, 100)
    assert np.max(np.abs(a - b)) < 1e-12


def test_leapfrog_is_second_order_and_euler_first_order():
  # ẍ + 0.5ẋ + x = 0, x(0)=1, v(0)=0, T=5; errors vs the matrix exponential.
  with jax.enable_x64(True):
    exact = ko.damped_oscillator_exact(1.0, 0.0, friction=0.5, stiffness=1.0, t=5.0)
    errs = {}
    for scheme in ("leapfrog", "euler"):
      errs[scheme] = [abs(float(ko.integrate_damped_oscillator(
          lambda x: x, jnp.array(1.0), jnp.array(0.0), dt=h, friction=0.5, num_steps=int(round(5 / h)),
          scheme=scheme)) - exact) for h in (0.1, 0.05, 0.025)]
  lf, eu = errs["leapfrog"], errs["euler"]
  assert lf[0] == pytest.approx(1.05e-3, rel=0.05)  # spec §3.4 [proto] 1.05e-3
  for e0, e1 in zip(lf, lf[1:]):
    assert 3.8 < e0 / e1 < 4.2
  for e0, e1 in zip(eu, eu[1:]):
    assert 1.8 < e0 / e1 < 2.2


def test_inverse_maps_and_beta_rule():
  for scheme in ("leapfrog", "symplectic_euler"):
    a, b = ko.momentum_coefficients(0.07, 1.3, scheme)
    dt, lam = ko.ode_from_momentum(a, b, scheme)
    assert dt == pytest.approx(0.07, rel=1e-12) and lam == pytest.approx(1.3, rel=1e-12)
  assert ko.beta_for_new_lr(0.9, 0.1) == pytest.approx(0.96837722, rel=1e-8)  # article: ≈ 0.968
  # Exact leapfrog re-tuning at fixed friction agrees with the rule to first order in (1 − β).
  gaps = []
  for beta in (0.9, 0.99, 0.999):
    alpha, r = 0.01, 0.1
    _, lam = ko.ode_from_momentum(alpha, beta)
    # γ' with γ'²/(1 + λγ'/2) = rα at the same friction (a quadratic in γ').
    c = r * alpha * lam / 2
    dt_new = (c + (c * c + 4 * r * alpha) ** 0.5) / 2
    lr_new, beta_exact = ko.momentum_coefficients(dt_new, lam)
    assert lr_new == pytest.approx(r * alpha, rel=1e-12)
    gaps.append(abs(beta_exact - ko.beta_for_new_lr(beta, r)))
  assert gaps[0] < 0.01 and gaps[1] < gaps[0] / 50 and gaps[2] < gaps[1] / 50  # O((1 − β)²)
  sched = ko.momentum_schedule(optax.exponential_decay(0.1, 10, 0.1), 0.9)
  assert float(sched(10)) == pytest.approx(0.96837722, rel=1e-6)
  # A warm-up from 0 needs an explicit reference rate: β = β₀ at the peak, 1 − 0.1·√(1/4) at a quarter of it.
  warm = optax.linear_schedule(0.0, 0.1, 100)
  sched = ko.momentum_schedule(warm, 0.9, reference_learning_rate=0.1)
  assert float(sched(100)) == pytest.approx(0.9, rel=1e-6) and float(sched(25)) == pytest.approx(0.95, rel=1e-6)


def test_sgd_sde_stationary_variance_matches_corrected_formula():
  lr, sigma, k = 0.1, 1.0, 1.0
  exact = ko.sgd_stationary_variance(lr, sigma, k)
  assert exact == pytest.approx(0.1 / 1.9)
  theta = ko.simulate_sgd_sde(jax.random.key(0), lambda th: k * th, jnp.zeros(200_000),
                              learning_rate=lr, noise_std=sigma, num_steps=300)
  var = float(jnp.var(theta))
  assert abs(var / exact - 1) < 0.02
  assert abs(var / (sigma ** 2 * lr / k) - 1) > 0.4  # the article's exp(−L/(γσ²)) law is 2× off


def test_minibatch_sgd_chains_variance_is_set_by_lr_over_batch():
  # L(θ) = (1/2n) Σ (θ − a_i)²: the minibatch gradient θ − mean(a_b) has noise variance s²/B (sampling with
  # replacement, s² the population variance of a), so θ_{t+1} − θ* = (1 − lr)(θ_t − θ*) + lr ξ and the
  # stationary variance is lr² (s²/B) / (1 − (1 − lr)²) = lr s² / (B (2 − lr)).
  from kexue_jax.optim import momentum_experiments as me
  a = jnp.asarray(np.random.default_rng(0).normal(size=500) * 2.0 + 1.0)
  s2 = float(jnp.var(a))
  loss = lambda th, xb, yb: 0.5 * jnp.mean((th - xb) ** 2)  # noqa: E731
  for lr, b in ((0.1, 4), (0.4, 16)):  # equal lr/B
    ch = me.sgd_chains(loss, jnp.asarray(float(jnp.mean(a))), a, jnp.zeros(500), key=jax.random.key(1),
                       num_chains=20000, learning_rate=lr, batch_size=b, num_steps=int(60 / lr))
    exact = lr * s2 / (b * (2 - lr))
    assert float(jnp.mean(ch)) == pytest.approx(float(jnp.mean(a)), abs=4 * exact ** 0.5 / 100)
    assert me.weight_noise_variance(ch) == pytest.approx(exact, rel=0.04)  # 20 000 chains: SE 1%


def test_weight_noise_variance_and_pair_mismatch_equal_brute_force():
  from kexue_jax.optim import momentum_experiments as me
  rng = np.random.default_rng(2)
  tree = {"w": rng.normal(size=(7, 3, 2)), "b": rng.normal(size=(7, 4))}
  per = [np.var(tree["w"][:, i, j]) for i in range(3) for j in range(2)] + [np.var(tree["b"][:, k]) for k in range(4)]
  assert me.weight_noise_variance(tree) == pytest.approx(np.mean(per), rel=1e-12)
  table = {(0.1, 8): 1.0, (0.2, 16): 3.0, (0.1, 16): 2.0, (0.4, 32): 7.0, (0.2, 8): 5.0}
  ratio = lambda k: round(k[0] / k[1], 12)  # noqa: E731
  # equal lr/B groups: {(0.1,8),(0.2,16),(0.4,32)} and {(0.1,16)}, {(0.2,8)}: pairs |1−3|, |1−7|, |3−7|.
  assert me.pair_mismatch(table, ratio, lambda u, v: abs(u - v)) == pytest.approx((2 + 6 + 4) / 3)
  # equal lr groups: {(0.1,8),(0.1,16)}, {(0.2,16),(0.2,8)}: pairs |1−2|, |3−5|.
  assert me.pair_mismatch(table, lambda k: k[0], lambda u, v: abs(u - v)) == pytest.approx(1.5)
  with pytest.raises(ValueError, match="`table` has no two keys in the same group"):
    me.pair_mismatch({(0.1, 8): 1.0, (0.2, 8): 2.0}, lambda k: k[0], lambda u, v: abs(u - v))


def test_beta_rule_arms_differ_only_in_beta():
  # With no decay (ratio 1) the rule keeps β₀, so both arms must give bit-identical results.
  from kexue_jax.optim import momentum_experiments as me
  out = me.beta_rule_ablation(seeds=[0], num_steps=101, batch_size=8, learning_rate=0.05, beta=0.9, decay_at=30,
                              decay_factor=1.0, hidden=4)
  for k in ("train_loss", "test_loss", "test_accuracy"):
    np.testing.assert_array_equal(out[f"beta_rule/{k}"], out[f"fixed_beta/{k}"])
  assert out["fixed_beta/curve"][0, -1] < out["fixed_beta/curve"][0, 0]  # it trains


BAD = [
    (lambda: ko.momentum_coefficients(0.0, 1.0), "`dt` must be a finite number > 0.0; got 0.0"),
    (lambda: ko.momentum_coefficients(0.1, -1.0), "`friction` must be a finite number >= 0.0; got -1.0"),
    (lambda: ko.momentum_coefficients(0.1, float("nan")), "`friction` must be a finite"),
    (lambda: ko.momentum_coefficients(0.1, 1.0, "rk4"), r"`scheme` must be one of \('leapfrog'"),
    (lambda: ko.heavy_ball_ode(1.0, 5.0, "symplectic_euler"), "`friction` must give momentum in"),
    (lambda: ko.ode_from_momentum(0.1, 1.5), "`momentum` must be a finite number > -1.0 and <= 1.0"),
    (lambda: ko.beta_for_new_lr(0.9, -0.1), "`ratio` must be a finite number >= 0.0; got -0.1"),
    (lambda: ko.momentum_schedule(optax.linear_schedule(0.0, 0.1, 100), 0.9),
     r"`learning_rate_schedule\(0\)` must be > 0 to be the reference rate; got 0.0"),
    (lambda: ko.momentum_schedule(optax.constant_schedule(0.1), 0.9, reference_learning_rate=0.0),
     "`reference_learning_rate` must be a finite number > 0.0; got 0.0"),
    (lambda: ko.sgd_stationary_variance(3.0, 1.0, 1.0), "`learning_rate` must be < 2/curvature"),
    (lambda: ko.integrate_damped_oscillator(lambda x: x, jnp.ones(()), jnp.ones(()), dt=0.1,
                                            friction=0.1, num_steps=0), "`num_steps` must be a positive int"),
    (lambda: __import__("kexue_jax.optim.momentum_experiments", fromlist=["_"]).sgd_chains(
        lambda p, x, y: p, jnp.zeros(()), jnp.zeros(3), jnp.zeros(3), key=jax.random.key(0), num_chains=2,
        learning_rate=0.1, batch_size=0, num_steps=3), "`batch_size` must be a positive int; got 0"),
]


@pytest.mark.parametrize("build,message", BAD)
def test_bad_inputs(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_explicit_euler_is_the_direct_first_order_iteration():
  # x_{n+1} = x_n + h v_n, v_{n+1} = v_n + h(−λ v_n − k x_n): both updates from the old state (the symplectic
  # variant, which updates v first, is also first order, so the order test alone cannot tell them apart).
  with jax.enable_x64(True):
    for h, n in ((0.1, 50), (0.03, 200)):
      x, v = 1.0, 0.0
      for _ in range(n):
        x, v = x + h * v, v + h * (-0.5 * v - 1.0 * x)
      got = float(ko.integrate_damped_oscillator(lambda th: th, jnp.array(1.0), jnp.array(0.0), dt=h,
                                                 friction=0.5, num_steps=n, scheme="euler"))
      assert got == pytest.approx(x, rel=1e-12)


@pytest.mark.parametrize("method", ["gd", "heavy_ball", "nesterov"])
def test_iterations_to_tol_equal_a_float64_loop_with_the_textbook_constants(method):
  # Spec §3.5: GD at 2/(L + μ); heavy ball at Polyak's α = 4/(√L + √μ)², β = ((√κ − 1)/(√κ + 1))²; Nesterov at
  # α = 1/L, β = (√κ − 1)/(√κ + 1) in optax's form (m ← g + βm, step −α(g + βm)). Written here in NumPy
  # float64; the library runs optax in float32, so the crossing of the tolerance may move by a step or two.
  from kexue_jax.optim import momentum_experiments as me

  kappa, dim, tol = 100.0, 8, 1e-5
  lam = np.geomspace(1.0, kappa, dim)
  x = np.random.default_rng(0).normal(size=dim)
  bound, sk = tol * np.linalg.norm(x), np.sqrt(kappa)
  alpha, beta = {"gd": (2 / (kappa + 1), 0.0), "heavy_ball": (4 / (sk + 1) ** 2, ((sk - 1) / (sk + 1)) ** 2),
                 "nesterov": (1 / kappa, (sk - 1) / (sk + 1))}[method]
  m, n = np.zeros(dim), 0
  while np.linalg.norm(x) > bound:
    g = lam * x
    m = g + beta * m
    x = x - alpha * (g + beta * m if method == "nesterov" else m)
    n += 1
  got = me.iterations_to_tol(method, kappa, dim=dim, tol=tol, max_iters=100_000)
  assert abs(got - n) <= 2, (got, n)
  if method == "gd":  # ‖x_n‖ ≤ ((κ − 1)/(κ + 1))ⁿ ‖x₀‖ at this step size: a bound on the count
    assert n <= np.ceil(np.log(tol) / np.log((kappa - 1) / (kappa + 1)))


def test_escape_grid_equals_a_float64_heavy_ball_loop():
  # optax.sgd(α, momentum=β) on L(x) = x⁴/4 − x²/2 + 0.3x from x₀ = 2: m ← L'(x) + βm, x ← x − αm.
  from kexue_jax.optim import momentum_experiments as me

  alphas, betas, steps = [0.05, 0.1], [0.0, 0.5, 0.9], 60
  final, traj = me.escape_grid(alphas, betas, num_steps=steps)
  assert final.shape == (2, 3) and traj.shape == (2, 3, steps)
  for i, a in enumerate(alphas):
    for j, b in enumerate(betas):
      x, m, path = 2.0, 0.0, []
      for _ in range(steps):
        m = (x ** 3 - x + 0.3) + b * m
        x -= a * m
        path.append(x)
      np.testing.assert_allclose(traj[i, j], path, rtol=0, atol=2e-4)
      assert final[i, j] == traj[i, j, -1]
