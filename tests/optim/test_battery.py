"""The optax-contrib-style battery (anchors.md §3.2) run on every kexue_jax.optim transform.

Each case is a factory with numeric keyword hyperparameters (so `optax.inject_hyperparams` can wrap it)
plus the problems it is defined on (EG needs positive parameters, EG on the simplex a simplex target).
Checks: parabola and Rosenbrock convergence under jit; extra args accepted; inject_hyperparams equal to
the plain optimizer (rtol 1e-5); bf16/f32 dtypes kept; optax.MultiSteps equal to one step on the mean
gradient; state structure/shape/dtype stable and one compilation over steps; a hand-written float64
NumPy reference for 4 steps (rtol 1e-10); the state sharded on an 8-device mesh (one subprocess).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kexue_jax import optim as ko
from tests.helpers import run_python


# ----------------------------------------------------------------------------------------------
# Factories (numeric hyperparameters as keywords)

def eg_gains_sgd(learning_rate, gamma):
  return optax.chain(ko.eg_gains(gamma, normalize="rms"), optax.scale_by_learning_rate(learning_rate))


def eg_scale_sgd(learning_rate, gamma):
  return optax.chain(ko.eg_global_scale(gamma), optax.scale_by_learning_rate(learning_rate))


def eg_adapt_sgd(learning_rate, gamma_gains, gamma_scale):
  return ko.eg_step_size_adaptation(optax.sgd(learning_rate), gamma_gains=gamma_gains,
                                    gamma_scale=gamma_scale, normalize="rms", scale_normalize="cosine")


def eg_adapt_adam(learning_rate, gamma_gains, gamma_scale):
  return ko.eg_step_size_adaptation(optax.adam(learning_rate), gamma_gains=gamma_gains,
                                    gamma_scale=gamma_scale, normalize="cosine",
                                    scale_normalize="rms", average="ema_update")


def hd_adam(learning_rate, hypergrad_lr):
  return ko.hypergradient_descent(learning_rate, hypergrad_lr, base_direction=optax.scale_by_adam(),
                                  mode="multiplicative")


def eg_pm(learning_rate):
  return ko.eg_plus_minus(learning_rate, u_scaling=10.0)


def eg_simplex(learning_rate):
  return ko.exponentiated_gradient(learning_rate, normalize=True)


def nesterov_midpoint(learning_rate, momentum):
  return ko.scale_by_shifted_momentum(learning_rate, momentum, momentum / 2)


# name -> (factory, hyperparams for the parabola, hyperparams for Rosenbrock or None, domain)
CASES = {
    "egu": (ko.exponentiated_gradient, dict(learning_rate=0.3), dict(learning_rate=2e-3), "positive"),
    "eg_simplex": (eg_simplex, dict(learning_rate=1.0), None, "simplex"),
    "eg_plus_minus": (eg_pm, dict(learning_rate=0.05), dict(learning_rate=2e-4), "signed"),
    "eg_sgd": (ko.eg_sgd, dict(learning_rate=0.1, gamma=0.01), dict(learning_rate=1e-3, gamma=1e-4),
               "signed"),
    "eg_gains_sgd": (eg_gains_sgd, dict(learning_rate=0.1, gamma=0.05),
                     dict(learning_rate=1e-3, gamma=0.05), "signed"),
    "eg_scale_sgd": (eg_scale_sgd, dict(learning_rate=0.1, gamma=0.05),
                     # The cosine scale shrinks on Rosenbrock's zig-zag, so γ_s must stay small here.
                     dict(learning_rate=1.5e-3, gamma=1e-3), "signed"),
    "eg_adapt_sgd": (eg_adapt_sgd, dict(learning_rate=0.1, gamma_gains=0.05, gamma_scale=0.05),
                     dict(learning_rate=1e-3, gamma_gains=0.05, gamma_scale=0.01), "signed"),
    "eg_adapt_adam": (eg_adapt_adam, dict(learning_rate=0.05, gamma_gains=0.05, gamma_scale=0.05),
                      dict(learning_rate=0.01, gamma_gains=0.02, gamma_scale=0.01), "signed"),
    "hd_sgd": (ko.hypergradient_descent, dict(learning_rate=0.05, hypergrad_lr=1e-3),
               dict(learning_rate=1e-3, hypergrad_lr=1e-8), "signed"),
    "hd_adam": (hd_adam, dict(learning_rate=0.05, hypergrad_lr=0.01),
                dict(learning_rate=0.01, hypergrad_lr=0.001), "signed"),
    "nesterov_midpoint": (nesterov_midpoint, dict(learning_rate=0.05, momentum=0.9),
                          dict(learning_rate=5e-4, momentum=0.9), "signed"),
}
NAMES = list(CASES)


def build(name, **override):
  factory, hp, _, _ = CASES[name]
  return factory(**{**hp, **override})


def parabola_problem(domain):
  if domain == "simplex":
    target = jnp.array([0.2, 0.3, 0.5])
    init = jnp.full((3,), 1 / 3)
  elif domain == "positive":
    target, init = jnp.array([1.0, 2.0]), jnp.array([0.5, 0.5])
  else:
    target, init = jnp.array([1.0, -2.0]), jnp.array([0.1, 0.1])
  return (lambda x: jnp.sum(jnp.square(x - target))), init, target


def rosenbrock(x):
  return jnp.square(1 - x[0]) + 100 * jnp.square(x[1] - x[0] ** 2)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _run(opt, loss, x0, steps):
  def body(carry, _):
    x, s = carry
    g = jax.grad(loss)(x)
    u, s = opt.update(g, s, x)
    return (optax.apply_updates(x, u), s), None
  (x, _), _ = jax.lax.scan(body, (x0, opt.init(x0)), None, length=steps)
  return x


@pytest.mark.parametrize("name", NAMES)
def test_parabola_converges(name):
  loss, x0, target = parabola_problem(CASES[name][3])
  x = _run(build(name), loss, x0, 2000)
  np.testing.assert_allclose(x, target, atol=1e-3)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n][2] is not None])
def test_rosenbrock_converges(name):
  factory, _, hp, _ = CASES[name]
  x0 = jnp.array([0.5, 0.5])
  x = _run(factory(**hp), rosenbrock, x0, 10000)
  np.testing.assert_allclose(x, jnp.ones(2), atol=2e-2)


def assert_trees_close(a, b, *, rtol, atol, msg=""):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), msg
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol,
                               err_msg=msg)


def _grads(params, i):
  return jax.tree.map(lambda p: jnp.sin(3.0 * p + i) * (0.5 + 0.1 * i), params)


def _positive_params(dtype=jnp.float32):
  return {"a": jnp.array([0.2, 0.3, 0.5], dtype), "b": jnp.array([[0.01, 0.02], [0.03, 0.04]], dtype)}


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_extra_args_and_stable_state(name):
  factory, hp, _, _ = CASES[name]
  plain = factory(**hp)
  injected = optax.inject_hyperparams(factory)(**hp)
  params = _positive_params()
  traces = {"n": 0}

  def step(opt, g, s, p):
    traces["n"] += 1
    # An unknown extra arg must be accepted and ignored (GradientTransformationExtraArgs).
    return opt.update(g, s, p, some_unknown_extra_arg=jnp.ones([]))

  jit_plain = jax.jit(functools.partial(step, optax.with_extra_args_support(plain)))
  jit_inj = jax.jit(functools.partial(step, injected))
  s_plain, s_inj = plain.init(params), injected.init(params)
  spec0 = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), s_plain)
  for i in range(4):
    g = _grads(params, i)
    u_plain, s_plain = jit_plain(g, s_plain, params)
    u_inj, s_inj = jit_inj(g, s_inj, params)
    assert_trees_close(u_inj, u_plain, rtol=1e-5, atol=1e-7)
    assert_trees_close(s_inj.inner_state, s_plain, rtol=1e-5, atol=1e-7)
    assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), s_plain) == spec0
    params = optax.apply_updates(params, u_plain)
  assert traces["n"] == 2  # one trace for each jitted function, none per step


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_preserved(name, dtype):
  opt = build(name)
  params = _positive_params(dtype)
  state = opt.init(params)
  upd = jax.jit(opt.update)
  for i in range(2):
    u, state = upd(_grads(params, i), state, params)
    assert all(x.dtype == dtype for x in jax.tree.leaves(u))
    params = optax.apply_updates(params, u)
    assert all(x.dtype == dtype for x in jax.tree.leaves(params))
    assert all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in jax.tree.leaves(params))


# The state fields documented as ">= float32" (gains, scales, signals, EG± parts, hypergradient lr).
WIDE_STATE_FIELDS = {"gains", "signal", "gain_rms", "scale", "scale_rms", "prev_grad", "w_plus", "w_minus",
                     "learning_rate", "prev_direction"}


def _wide_state_leaves(state, out):
  if hasattr(state, "_fields"):
    for f in state._fields:
      v = getattr(state, f)
      if f in WIDE_STATE_FIELDS:
        out.extend((f, x) for x in jax.tree.leaves(v))
      else:
        _wide_state_leaves(v, out)
  elif isinstance(state, (tuple, list)):
    for v in state:
      _wide_state_leaves(v, out)
  elif isinstance(state, dict):
    for v in state.values():
      _wide_state_leaves(v, out)
  return out


@pytest.mark.parametrize("name", NAMES)
def test_own_state_is_float32_under_bf16_params(name):
  """Spec §2.3: gains, scales and signals stay float32 when the parameters are bf16, after steps too."""
  opt = build(name)
  params = _positive_params(jnp.bfloat16)
  state = opt.init(params)
  for i in range(2):
    u, state = jax.jit(opt.update)(_grads(params, i), state, params)
    params = optax.apply_updates(params, u)
  leaves = _wide_state_leaves(state, [])
  if name in ("egu", "eg_simplex", "nesterov_midpoint"):
    assert leaves == []  # EGU/EG keep only a count; the momentum buffer follows the params (Keras)
    return
  assert leaves, "no float32 state field found"
  assert all(x.dtype == jnp.float32 for _, x in leaves), [(f, x.dtype) for f, x in leaves]


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_equals_mean_gradient_step(name):
  opt = build(name)
  ms = optax.MultiSteps(opt, every_k_schedule=2)

  @jax.jit
  def run(params):
    s = ms.init(params)
    g1, g2 = _grads(params, 1), _grads(params, 2)
    u1, s = ms.update(g1, s, params)
    u2, s = ms.update(g2, s, params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    ref, _ = opt.update(mean, opt.init(params), params)
    return u1, u2, ref

  # optax.MultiSteps accumulates in float32 (even under x64), so compare in float32: rtol 1e-5, and
  # atol 1e-6 because EG± returns (w⁺ − w⁻) − w with |w^±| ≈ U/n ≈ 3 (f32 cancellation).
  u1, u2, ref = run(_positive_params())
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u1))
  assert_trees_close(u2, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Hand-written float64 NumPy references (4 steps)

def np_reference(name, params, grads_fn, hp, steps=4):
  """Returns the list of updates of `steps` steps, grads_fn(params, i) -> dict of arrays."""
  keys = sorted(params)
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  ups = []
  st = {}
  for i in range(steps):
    g = {k: np.asarray(v, np.float64) for k, v in grads_fn(p, i).items()}
    if name == "egu":
      u = {k: p[k] * np.exp(-hp["learning_rate"] * g[k]) - p[k] for k in keys}
    elif name == "eg_simplex":
      u = {}
      for k in keys:
        w = p[k] * np.exp(-hp["learning_rate"] * g[k])
        u[k] = w / w.sum() - p[k]
    elif name == "eg_plus_minus":
      U, lr = 10.0, hp["learning_rate"]
      if not st:
        st = {k: ((U / p[k].size + p[k]) / 2, (U / p[k].size - p[k]) / 2) for k in keys}
      u = {}
      for k in keys:
        wp, wm = st[k][0] * np.exp(-lr * g[k]), st[k][1] * np.exp(lr * g[k])
        z = U / (wp.sum() + wm.sum())
        st[k] = (wp * z, wm * z)
        u[k] = st[k][0] - st[k][1] - p[k]
    elif name == "eg_sgd":
      if not st:
        st = {k: (np.ones_like(p[k]), np.zeros_like(p[k])) for k in keys}
      u = {}
      for k in keys:
        nu = st[k][0] * np.exp(hp["gamma"] * st[k][1] * g[k])
        st[k] = (nu, g[k])
        u[k] = -hp["learning_rate"] * nu * g[k]
    elif name in ("eg_gains_sgd", "eg_adapt_sgd"):
      # Gains with RMS-normalised raw product, exponent clip 1, box [1e-3, 1e3], rms decay 0.99.
      rho, eps = 0.99, 1e-20
      gg = hp.get("gamma", hp.get("gamma_gains"))
      gs = hp.get("gamma_scale", 0.0)
      if not st:
        st = dict(p={k: np.ones_like(p[k]) for k in keys}, a={k: np.zeros_like(p[k]) for k in keys},
                  r={k: np.zeros_like(p[k]) for k in keys}, s=1.0)
      corr = 1 - rho ** max(i, 1)
      newp = {}
      for k in keys:
        x = st["a"][k] * g[k]
        if i > 0:
          st["r"][k] = rho * st["r"][k] + (1 - rho) * x ** 2
        x = x / (np.sqrt(st["r"][k] / corr) + eps)
        newp[k] = np.clip(st["p"][k] * np.exp(np.clip(gg * x, -1, 1)), 1e-3, 1e3)
      if name == "eg_adapt_sgd":
        pa = {k: st["p"][k] * st["a"][k] for k in keys}
        y = sum((pa[k] * g[k]).sum() for k in keys)
        na = np.sqrt(sum((pa[k] ** 2).sum() for k in keys))
        ng = np.sqrt(sum((g[k] ** 2).sum() for k in keys))
        st["s"] = float(np.clip(st["s"] * np.exp(np.clip(gs * y / (na * ng + eps), -1, 1)), 1e-3, 1e3))
      st["p"] = newp
      lr = hp["learning_rate"]
      u = {k: -lr * st["s"] * newp[k] * g[k] for k in keys}
      # Stored signal: eg_gains (before the lr) stores +g; the wrapper stores −b = lr g.
      st["a"] = {k: (g[k] if name == "eg_gains_sgd" else lr * g[k]) for k in keys}
    elif name == "eg_scale_sgd":
      eps, gm = 1e-20, hp["gamma"]
      if not st:
        st = dict(a={k: np.zeros_like(p[k]) for k in keys}, s=1.0)
      y = sum((st["a"][k] * g[k]).sum() for k in keys)
      na = np.sqrt(sum((st["a"][k] ** 2).sum() for k in keys))
      ng = np.sqrt(sum((g[k] ** 2).sum() for k in keys))
      st["s"] = float(np.clip(st["s"] * np.exp(np.clip(gm * y / (na * ng + eps), -1, 1)), 1e-3, 1e3))
      u = {k: -hp["learning_rate"] * st["s"] * g[k] for k in keys}
      st["a"] = dict(g)
    elif name == "hd_sgd":
      if not st:
        st = dict(alpha=hp["learning_rate"], d={k: np.zeros_like(p[k]) for k in keys})
      h = sum((g[k] * st["d"][k]).sum() for k in keys)
      st["alpha"] = max(st["alpha"] + hp["hypergrad_lr"] * h, 0.0)
      u = {k: -st["alpha"] * g[k] for k in keys}
      st["d"] = dict(g)
    elif name == "hd_adam":
      b1, b2, eps = 0.9, 0.999, 1e-8
      if not st:
        st = dict(alpha=hp["learning_rate"], d={k: np.zeros_like(p[k]) for k in keys},
                  m={k: np.zeros_like(p[k]) for k in keys}, v={k: np.zeros_like(p[k]) for k in keys})
      h = sum((g[k] * st["d"][k]).sum() for k in keys)
      ng = np.sqrt(sum((g[k] ** 2).sum() for k in keys))
      nd = np.sqrt(sum((st["d"][k] ** 2).sum() for k in keys))
      st["alpha"] = max(st["alpha"] * (1 + hp["hypergrad_lr"] * h / (ng * nd + 1e-20)), 0.0)
      d = {}
      for k in keys:
        st["m"][k] = b1 * st["m"][k] + (1 - b1) * g[k]
        st["v"][k] = b2 * st["v"][k] + (1 - b2) * g[k] ** 2
        mh, vh = st["m"][k] / (1 - b1 ** (i + 1)), st["v"][k] / (1 - b2 ** (i + 1))
        d[k] = mh / (np.sqrt(vh) + eps)
      u = {k: -st["alpha"] * d[k] for k in keys}
      st["d"] = d
    elif name == "nesterov_midpoint":
      lr, beta = hp["learning_rate"], hp["momentum"]
      if not st:
        st = {k: np.zeros_like(p[k]) for k in keys}
      u = {}
      for k in keys:
        v_new = beta * st[k] - lr * g[k]
        u[k] = (1 + beta / 2) * v_new - beta / 2 * st[k]
        st[k] = v_new
    else:
      raise KeyError(name)
    ups.append(u)
    p = {k: p[k] + u[k] for k in keys}
  return ups


NUMPY_NAMES = [n for n in NAMES if n != "eg_adapt_adam"]


@pytest.mark.parametrize("name", NUMPY_NAMES)
def test_numpy_reference(name):
  hp = CASES[name][1]
  with jax.enable_x64(True):
    params = {"a": jnp.array([0.2, 0.3, 0.5]), "b": jnp.array([0.05, 0.15])}

    def grads_np(p, i):
      return {k: np.sin(3.0 * v + i) * (1.0 + 0.5 * i) for k, v in p.items()}

    ref = np_reference(name, params, grads_np, hp)
    opt = CASES[name][0](**hp)
    state = opt.init(params)
    for i in range(4):
      g = {k: jnp.asarray(v) for k, v in grads_np({k: np.asarray(v) for k, v in params.items()}, i).items()}
      u, state = opt.update(g, state, params)
      for k in params:
        np.testing.assert_allclose(np.asarray(u[k]), ref[i][k], rtol=1e-10, atol=1e-14, err_msg=f"{name} {i} {k}")
      params = optax.apply_updates(params, u)


def test_eg_adapt_adam_numpy_reference():
  """The wrapper around Adam with cosine gains, RMS scale and EMA-of-update signal, 4 steps."""
  lr, gp, gs, beta, rho, eps = 0.05, 0.05, 0.05, 0.9, 0.99, 1e-20
  with jax.enable_x64(True):
    params = {"a": jnp.array([0.2, 0.3, 0.5]), "b": jnp.array([0.05, 0.15])}
    opt = eg_adapt_adam(lr, gp, gs)
    state = opt.init(params)
    keys = sorted(params)
    p = {k: np.asarray(v) for k, v in params.items()}
    m = {k: np.zeros_like(p[k]) for k in keys}
    v = {k: np.zeros_like(p[k]) for k in keys}
    gains = {k: np.ones_like(p[k]) for k in keys}
    a = {k: np.zeros_like(p[k]) for k in keys}
    s, q = 1.0, 0.0
    for i in range(4):
      g = {k: np.sin(3.0 * p[k] + i) * (1.0 + 0.5 * i) for k in keys}
      corr = 1 - rho ** max(i, 1)
      pa = {k: gains[k] * a[k] for k in keys}
      y = sum((pa[k] * g[k]).sum() for k in keys)
      if i > 0:
        q = rho * q + (1 - rho) * y ** 2
      s = float(np.clip(s * np.exp(np.clip(gs * y / (np.sqrt(q / corr) + eps), -1, 1)), 1e-3, 1e3))
      for k in keys:
        rms = lambda z: np.sqrt(np.mean(z ** 2))  # noqa: E731
        x = a[k] * g[k] / (rms(a[k]) * rms(g[k]) + eps)
        gains[k] = np.clip(gains[k] * np.exp(np.clip(gp * x, -1, 1)), 1e-3, 1e3)
      u = {}
      for k in keys:
        m[k] = 0.9 * m[k] + 0.1 * g[k]
        v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
        b = -lr * (m[k] / (1 - 0.9 ** (i + 1))) / (np.sqrt(v[k] / (1 - 0.999 ** (i + 1))) + 1e-8)
        u[k] = s * gains[k] * b
        a[k] = beta * a[k] + (1 - beta) * (-b)
      got, state = opt.update({k: jnp.asarray(g[k]) for k in keys}, state, params)
      for k in keys:
        np.testing.assert_allclose(np.asarray(got[k]), u[k], rtol=1e-10, atol=1e-14)
      params = optax.apply_updates(params, got)
      p = {k: np.asarray(params[k]) for k in keys}


# ----------------------------------------------------------------------------------------------
# 8-device sharded state (one subprocess for all transforms)

@pytest.mark.multidevice
def test_state_sharded_on_8_devices():
  code = f"""
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tests.optim import test_battery as tb
mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
row = NamedSharding(mesh, P("x", None))
rep = NamedSharding(mesh, P())
def loss(p):
  return jnp.sum(jnp.square(p["w"] - 0.2)) + jnp.sum(jnp.square(p["b"] - 0.1))
host = {{"w": np.linspace(0.01, 0.25, 32).reshape(8, 4), "b": np.array([0.02, 0.03, 0.05, 0.06])}}
for name in {NAMES!r}:
  opt = tb.build(name)
  def step(p, s):
    u, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s
  jstep = jax.jit(step)
  # Single-device reference.
  p1 = jax.tree.map(jnp.asarray, host)
  s1 = opt.init(p1)
  for _ in range(3):
    p1, s1 = jstep(p1, s1)
  # Sharded run.
  p = {{"w": jax.device_put(host["w"], row), "b": jax.device_put(host["b"], rep)}}
  # State shardings from the shapes (the trainer's recipe): parameter-shaped leaves follow the rows.
  plan = jax.tree.map(lambda x: row if x.shape == (8, 4) else rep, jax.eval_shape(opt.init, p))
  s = jax.jit(opt.init, out_shardings=plan)(p)
  for i in range(3):
    p, s = jstep(p, s)
    jax.block_until_ready(p)
    for a, leaf in zip(jax.tree.leaves(plan), jax.tree.leaves(s)):
      assert leaf.sharding.is_equivalent_to(a, leaf.ndim), (name, i, a, leaf.sharding)
  assert p["w"].sharding.is_equivalent_to(row, 2), name
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name)
  print("ok", name)
"""
  proc = run_python(code, devices=8)
  assert proc.stdout.count("ok ") == len(NAMES), proc.stdout
