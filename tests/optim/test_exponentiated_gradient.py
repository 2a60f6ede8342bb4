"""Exponentiated gradient family (https://kexue.fm/archives/8968): closed forms, KKT, SLSQP, autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from kexue_jax import optim as ko


def _apply(opt, params, grads_seq):
  state = opt.init(params)
  for g in grads_seq:
    u, state = opt.update(g, state, params)
    params = optax.apply_updates(params, u)
  return params, state


def test_eg_simplex_step_is_the_kl_prox_solution():
  # KKT of argmin_{w∈Δ} η⟨g,w⟩ + KL(w‖w_t): η g + log(w_{t+1}/w_t) is constant across coordinates.
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.dirichlet(np.ones(7)))
    g = jnp.asarray(rng.normal(size=7))
    eta = 0.7
    new, _ = _apply(ko.exponentiated_gradient(eta, normalize=True), w, [g])
    kkt = eta * g + jnp.log(new / w)
    assert float(jnp.max(kkt) - jnp.min(kkt)) < 1e-12
    assert abs(float(jnp.sum(new)) - 1.0) < 1e-12
    assert bool(jnp.all(new > 0))


def test_eg_simplex_reaches_slsqp_optimum():
  # Least squares on the simplex (n=50, d=8, Dirichlet truth + noise) vs scipy SLSQP.
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    y = a @ rng.dirichlet(np.ones(8)) + 0.01 * rng.normal(size=50)
    obj = lambda w: 0.5 * np.mean((a @ w - y) ** 2)  # noqa: E731
    res = scipy.optimize.minimize(obj, np.full(8, 1 / 8), method="SLSQP",
                                  jac=lambda w: a.T @ (a @ w - y) / 50, bounds=[(0, 1)] * 8,
                                  constraints=[dict(type="eq", fun=lambda w: w.sum() - 1)],
                                  options=dict(ftol=1e-16, maxiter=1000))
    aj, yj = jnp.asarray(a), jnp.asarray(y)
    loss = lambda w: 0.5 * jnp.mean(jnp.square(aj @ w - yj))  # noqa: E731
    opt = ko.exponentiated_gradient(0.5, normalize=True)

    @jax.jit
    def run(w):
      def body(c, _):
        w, s = c
        u, s = opt.update(jax.grad(loss)(w), s, w)
        return (w + u, s), None
      return jax.lax.scan(body, (w, opt.init(w)), None, length=5000)[0][0]

    w = run(jnp.full(8, 1 / 8))
    assert abs(float(loss(w)) - res.fun) < 1e-12 * max(1.0, res.fun) + 1e-15
    np.testing.assert_allclose(np.asarray(w), res.x, atol=1e-6)


def test_egu_constant_gradient_closed_form():
  with jax.enable_x64(True):
    theta0 = jnp.array([0.5, 1.0, 2.0])
    g = jnp.array([0.3, -0.2, 0.05])
    theta, _ = _apply(ko.exponentiated_gradient(0.1), theta0, [g] * 7)
    np.testing.assert_allclose(theta, theta0 * jnp.exp(-7 * 0.1 * g), rtol=1e-12)


def test_eg_plus_minus_budget_and_small_step_limit():
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    w0 = jnp.asarray(rng.uniform(-0.1, 0.1, size=6))
    u_budget = 4.0
    opt = ko.eg_plus_minus(0.3, u_scaling=u_budget)
    w, state = w0, opt.init(w0)
    np.testing.assert_allclose(state.w_plus - state.w_minus, w0, atol=1e-15)
    for i in range(5):
      g = jnp.asarray(rng.normal(size=6))
      u, state = opt.update(g, state, w)
      w = w + u
      assert abs(float(jnp.sum(state.w_plus + state.w_minus)) - u_budget) < 1e-12
      np.testing.assert_allclose(state.w_plus - state.w_minus, w, atol=1e-14)
    assert bool(jnp.any(w < 0))
    # EGU±: Δw = −η (w⁺ + w⁻) ⊙ g + O(η²): halving η quarters the remainder.
    g = jnp.asarray(rng.normal(size=6))
    errs = []
    for eta in (1e-2, 5e-3):
      opt = ko.eg_plus_minus(eta, u_scaling=u_budget, normalize=False)
      st = opt.init(w0)
      u, _ = opt.update(g, st, w0)
      errs.append(float(jnp.max(jnp.abs(u + eta * (st.w_plus + st.w_minus) * g))))
    assert 3.8 < errs[0] / errs[1] < 4.2


def test_eg_sgd_unrolled_closed_form_and_gamma_zero_bit_identical():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    gs = [jnp.asarray(rng.normal(size=4)) for _ in range(6)]
    gamma = 0.3
    params = jnp.zeros(4)
    _, state = _apply(ko.eg_sgd(0.1, gamma), params, gs)
    closed = jnp.exp(gamma * sum(gs[k - 1] * gs[k] for k in range(1, 6)))
    np.testing.assert_allclose(state.gains, closed, rtol=1e-12)
  # γ = 0: bit-identical to optax.sgd along a real trajectory (float32).
  loss = lambda x: jnp.sum(jnp.sin(x) * x ** 2)  # noqa: E731
  for opt_a, opt_b in [(ko.eg_sgd(0.1, 0.0), optax.sgd(0.1))]:
    xa = xb = jnp.array([0.3, -1.2, 2.0])
    sa, sb = opt_a.init(xa), opt_b.init(xb)
    for _ in range(10):
      ua, sa = opt_a.update(jax.grad(loss)(xa), sa, xa)
      ub, sb = opt_b.update(jax.grad(loss)(xb), sb, xb)
      xa, xb = optax.apply_updates(xa, ua), optax.apply_updates(xb, ub)
      assert np.array_equal(np.asarray(xa), np.asarray(xb))


def _quartic(x):
  a = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], x.dtype)
  return 0.5 * x @ a @ x + 0.1 * jnp.sum(x ** 4) + jnp.sum(jnp.array([0.3, -0.2, 0.1], x.dtype) * x)


@pytest.mark.parametrize("base", ["sgd", "sgdm", "adam"])
def test_wrapper_gamma_zero_is_bit_identical(base):
  make = dict(sgd=lambda: optax.sgd(0.05), sgdm=lambda: optax.sgd(0.05, momentum=0.9),
              adam=lambda: optax.adam(0.05))[base]
  wrapped = ko.eg_step_size_adaptation(make(), gamma_gains=0.0, gamma_scale=0.0, normalize="rms",
                                       scale_normalize="cosine", average="ema_grad")
  plain = make()
  xa = xb = jnp.array([1.0, -0.5, 0.25])
  sa, sb = wrapped.init(xa), plain.init(xb)
  step_a, step_b = jax.jit(wrapped.update), jax.jit(plain.update)
  for _ in range(10):
    ua, sa = step_a(jax.grad(_quartic)(xa), sa, xa)
    ub, sb = step_b(jax.grad(_quartic)(xb), sb, xb)
    xa, xb = optax.apply_updates(xa, ua), optax.apply_updates(xb, ub)
    assert np.array_equal(np.asarray(xa), np.asarray(xb))


def test_wrapper_and_chain_reduce_to_the_article_rule():
  with jax.enable_x64(True):
    eta, gamma = 0.1, 0.05
    x0 = jnp.array([1.0, -0.5, 0.25])
    article = ko.eg_sgd(eta, gamma)
    wrapper = ko.eg_step_size_adaptation(optax.sgd(eta), gamma_gains=gamma, gamma_scale=0.0,
                                         average="prev_grad", gain_bounds=None, max_exponent=None)
    chain = optax.chain(ko.eg_gains(gamma, gain_bounds=None, max_exponent=None),
                        optax.scale_by_learning_rate(eta))
    xs = [x0, x0, x0]
    opts = [article, wrapper, chain]
    states = [o.init(x0) for o in opts]
    for _ in range(20):
      for i, o in enumerate(opts):
        u, states[i] = o.update(jax.grad(_quartic)(xs[i]), states[i], xs[i])
        xs[i] = xs[i] + u
      np.testing.assert_allclose(xs[1], xs[0], rtol=1e-12, atol=1e-14)
      np.testing.assert_allclose(xs[2], xs[0], rtol=1e-12, atol=1e-14)
    assert float(jnp.max(jnp.abs(states[0].gains - 1))) > 1e-3  # the gains actually moved


@pytest.mark.parametrize("base", ["sgd", "sgdm", "adam"])
def test_hypergradient_identity_for_gains_and_scale(base):
  """log(p'/p) = −γ_p ∂L(θ_t + s p⊙b_t)/∂p / s and log(s'/s) = −γ_s ∂L/∂s (jax.grad), x64."""
  with jax.enable_x64(True):
    make = dict(sgd=lambda: optax.sgd(0.05), sgdm=lambda: optax.sgd(0.05, momentum=0.9),
                adam=lambda: optax.adam(0.05))[base]
    gp, gs = 0.3, 0.2
    opt = ko.eg_step_size_adaptation(make(), gamma_gains=gp, gamma_scale=gs, gain_bounds=None,
                                     scale_bounds=None, max_exponent=None)
    ref_base = make()
    x = jnp.array([1.0, -0.5, 0.25])
    s, sb = opt.init(x), ref_base.init(x)
    for t in range(4):
      g = jax.grad(_quartic)(x)
      b, sb = ref_base.update(g, sb, x)  # the base sees raw gradients, independent of p and s
      u, s_new = opt.update(g, s, x)
      if t >= 1:
        # Exponents applied at this step must match the hypergradients of the previous step.
        np.testing.assert_allclose(jnp.log(s_new.gains / s.gains), expected_p, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(jnp.log(s_new.scale / s.scale), expected_s, rtol=1e-10, atol=1e-15)
      np.testing.assert_allclose(u, s_new.scale * s_new.gains * b, rtol=1e-13, atol=1e-16)
      x_prev, b_prev, p_used, s_used = x, b, s_new.gains, s_new.scale
      f = lambda p_, s_: _quartic(x_prev + s_ * p_ * b_prev)  # noqa: E731
      dp, ds = jax.grad(f, argnums=(0, 1))(p_used, s_used)
      expected_p = -gp * dp / s_used
      expected_s = -gs * ds
      x, s = x + u, s_new
    assert float(jnp.max(jnp.abs(s.gains - 1))) > 1e-4


def test_gains_and_scale_stay_positive_and_in_the_box():
  opt = ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=50.0, gamma_scale=50.0,
                                   gain_bounds=(0.5, 2.0), scale_bounds=(0.25, 4.0), max_exponent=0.3)
  x = jnp.array([1.0, -2.0, 3.0])
  s = opt.init(x)
  lo_p, hi_p, lo_s, hi_s = np.inf, -np.inf, np.inf, -np.inf
  for i in range(30):
    u, s = opt.update(jax.grad(_quartic)(x) * (-1.0) ** i, s, x)
    x = x + u
    lo_p, hi_p = min(lo_p, float(s.gains.min())), max(hi_p, float(s.gains.max()))
    lo_s, hi_s = min(lo_s, float(s.scale)), max(hi_s, float(s.scale))
  assert 0.5 <= lo_p and hi_p <= 2.0 and 0.25 <= lo_s and hi_s <= 4.0
  assert hi_p == 2.0 or lo_p == 0.5  # the box was reached, so the clip was exercised


def test_renormalized_gains_stay_in_the_box_and_have_mean_one_when_it_does_not_bind():
  """`renormalize_mean` divides p by its mean and then clips again, so the box of spec §2.5.7 holds."""
  def run(bounds):
    opt = ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=50.0, gamma_scale=0.0, gain_bounds=bounds,
                                     renormalize_mean=True, max_exponent=1.0)
    x = jnp.array([1.0, -2.0, 3.0, 0.1])
    s = opt.init(x)
    seen = []
    for i in range(20):
      u, s = opt.update(jnp.array([1.0, -1.0, (-1.0) ** i, 0.5]), s, x)
      x = x + u
      seen.append(np.asarray(s.gains))
    return np.array(seen)
  boxed = run((0.5, 2.0))
  assert boxed.min() >= 0.5 and boxed.max() <= 2.0
  assert boxed.min() == 0.5 or boxed.max() == 2.0  # the box binds here (without the re-clip: 0.31)
  free = run((1e-6, 1e6))
  np.testing.assert_allclose(free.mean(axis=1), 1.0, rtol=1e-6)
  assert free.max() - free.min() > 0.5  # the gains did spread, so the renormalisation was exercised


def test_optimizer_stats_reads_nested_states_under_jit():
  inner = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
  opt = optax.chain(optax.clip_by_global_norm(1.0),
                    ko.eg_step_size_adaptation(inner, gamma_gains=0.5, gamma_scale=0.5,
                                               normalize="rms", scale_normalize="cosine"))
  params = {"a": jnp.linspace(-1.0, 1.0, 7), "b": jnp.ones((2, 2))}
  state = opt.init(params)
  for i in range(4):
    g = jax.tree.map(lambda p: jnp.cos(p * (i + 1)), params)
    u, state = jax.jit(opt.update)(g, state, params)
  stats = jax.jit(ko.optimizer_stats)(state)
  eg = state[1]
  gains = np.concatenate([np.ravel(eg.gains["a"]), np.ravel(eg.gains["b"])])
  assert float(stats["eg/scale"]) == float(eg.scale)
  np.testing.assert_allclose(stats["eg/gain_q50"], np.quantile(gains, 0.5), rtol=1e-6)
  np.testing.assert_allclose(stats["eg/gain_q05"], np.quantile(gains, 0.05), rtol=1e-6)
  np.testing.assert_allclose(stats["eg/effective_lr_multiplier"], float(eg.scale) * np.median(gains),
                             rtol=1e-6)
  np.testing.assert_allclose(stats["eg/base/hyperparams/learning_rate"], 0.01, rtol=1e-7)
  hd = ko.hypergradient_descent(0.1, 0.01)
  hs = hd.init(params)
  assert float(ko.optimizer_stats(hs)["hd/learning_rate"]) == pytest.approx(0.1)


BAD = [
    (lambda: ko.exponentiated_gradient(-0.1), "`learning_rate` must be a finite number >= 0.0; got -0.1"),
    (lambda: ko.exponentiated_gradient(float("nan")), "`learning_rate` must be a finite"),
    (lambda: ko.exponentiated_gradient(0.1, normalize="yes"), "`normalize` must be a bool"),
    (lambda: ko.exponentiated_gradient(0.1).init(jnp.array([1.0, 0.0])),
     "`params` must be strictly positive for exponentiated gradient; got minimum 0.0"),
    (lambda: ko.exponentiated_gradient(0.1).init(jnp.array([1.0, -2.0])), "strictly positive"),
    (lambda: ko.eg_plus_minus(0.1, u_scaling=0.0), "`u_scaling` must be a finite number > 0.0; got 0.0"),
    (lambda: ko.eg_plus_minus(0.1, u_scaling=1.0).init(jnp.array([0.4, 0.9])), "`u_scaling` must exceed"),
    (lambda: ko.eg_sgd(0.1, -1.0), "`gamma` must be a finite number >= 0.0; got -1.0"),
    (lambda: ko.eg_sgd(float("inf"), 1.0), "`learning_rate` must be a finite"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=-1.0, gamma_scale=0.0),
     "`gamma_gains` must be a finite number >= 0.0; got -1.0"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=0.0, gamma_scale=float("nan")),
     "`gamma_scale` must be a finite"),
    (lambda: ko.eg_step_size_adaptation("adam", gamma_gains=0.0, gamma_scale=0.0),
     "`base_optimizer` must be an optax.GradientTransformation; got 'adam'"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=0.1, gamma_scale=0.1, average="x"),
     r"`average` must be one of \('prev_update', 'ema_update', 'prev_grad', 'ema_grad'\); got 'x'"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=0.1, gamma_scale=0.1,
                                        normalize="l2"), r"`normalize` must be one of"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=0.1, gamma_scale=0.1,
                                        gain_bounds=(2.0, 3.0)), r"`gain_bounds` must be None or a pair"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=0.1, gamma_scale=0.1, beta=1.0),
     r"`beta` must be a finite number >= 0.0 and < 1.0; got 1.0"),
    (lambda: ko.eg_step_size_adaptation(optax.sgd(0.1), gamma_gains=0.1, gamma_scale=0.1,
                                        max_exponent=0.0), "`max_exponent` must be a finite number > 0.0"),
    (lambda: ko.eg_gains(-0.5), "`gamma_gains` must be a finite number >= 0.0; got -0.5"),
    (lambda: ko.eg_global_scale(0.1, normalize="none", scale_init=0.0),
     "`scale_init` must be a finite number > 0.0; got 0.0"),
]


@pytest.mark.parametrize("build,message", BAD)
def test_bad_inputs(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_schedules_and_arrays_are_not_rejected():
  # Validation only touches concrete Python/NumPy numbers; schedules and jax arrays pass through.
  ko.eg_sgd(optax.linear_schedule(0.1, 0.0, 10), jnp.asarray(0.1))
  ko.exponentiated_gradient(lambda c: 0.1)
