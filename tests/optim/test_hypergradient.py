"""Hypergradient descent (Baydin et al. 2018; https://kexue.fm/archives/8968): autodiff identities."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kexue_jax import optim as ko


def _loss(x):
  a = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], x.dtype)
  return 0.5 * x @ a @ x + 0.1 * jnp.sum(x ** 4) - jnp.sum(x)


@pytest.mark.parametrize("base", ["sgd", "sgdm", "adam"])
def test_additive_rule_is_gradient_descent_on_alpha(base):
  """α_{t+1} − α_t = −β ∂L(θ_{t−1} − α d_{t−1})/∂α at α = α_t (jax.grad), x64, rtol 1e-10."""
  with jax.enable_x64(True):
    direction = dict(sgd=None, sgdm=optax.trace(0.9), adam=optax.scale_by_adam())[base]
    beta = 1e-3
    opt = ko.hypergradient_descent(0.05, beta, base_direction=direction)
    x = jnp.array([1.0, -0.5, 0.25])
    s = opt.init(x)
    prev = None
    for t in range(5):
      u, s_new = opt.update(jax.grad(_loss)(x), s, x)
      if prev is not None:
        x_prev, d_prev, alpha_used = prev
        hyper = jax.grad(lambda a: _loss(x_prev - a * d_prev))(alpha_used)
        np.testing.assert_allclose(s_new.learning_rate - s.learning_rate, -beta * hyper, rtol=1e-10)
      np.testing.assert_allclose(u, -s_new.learning_rate * s_new.prev_direction, rtol=1e-14)
      prev = (x, s_new.prev_direction, s_new.learning_rate)
      x, s = x + u, s_new
    assert abs(float(s.learning_rate) - 0.05) > 1e-6


def test_multiplicative_rule_and_floor():
  with jax.enable_x64(True):
    opt = ko.hypergradient_descent(0.05, 0.5, mode="multiplicative")
    x = jnp.array([1.0, -0.5, 0.25])
    s = opt.init(x)
    g0 = jax.grad(_loss)(x)
    u, s1 = opt.update(g0, s, x)
    x1 = x + u
    g1 = jax.grad(_loss)(x1)
    _, s2 = opt.update(g1, s1, x1)
    cos = float(g0 @ g1 / (jnp.linalg.norm(g0) * jnp.linalg.norm(g1)))
    assert float(s2.learning_rate) == pytest.approx(0.05 * (1 + 0.5 * cos), rel=1e-12)
  # A huge additive hypergradient lr would make α negative (gbaydin#4); the floor keeps it at 0.
  opt = ko.hypergradient_descent(0.01, 1e3)
  x = jnp.array([1.0, -0.5, 0.25])
  s = opt.init(x)
  for i in range(6):
    u, s = opt.update(jax.grad(_loss)(x) * (-1.0) ** i, s, x)
    x = x + u
    assert float(s.learning_rate) >= 0.0
  assert float(s.learning_rate) == 0.0


BAD = [
    (lambda: ko.hypergradient_descent(-1.0, 0.1), "`learning_rate` must be a finite number >= 0.0; got -1.0"),
    (lambda: ko.hypergradient_descent(0.1, float("inf")), "`hypergrad_lr` must be a finite"),
    (lambda: ko.hypergradient_descent(0.1, 0.1, mode="both"),
     r"`mode` must be one of \('additive', 'multiplicative'\); got 'both'"),
]


@pytest.mark.parametrize("build,message", BAD)
def test_bad_inputs(build, message):
  with pytest.raises(ValueError, match=message):
    build()
