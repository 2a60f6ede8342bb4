"""A config mistake in an optim experiment fails before anything is compiled, with a message naming the key.

Each case loads an experiment's test-sized config (`experiments/optim/<name>.py:smoke`), sets one key (a dotted
path) to a bad value and runs it through its runner (`experiments.main.run`): a ValueError naming the key, the
expectation and the value must come before any XLA compilation (a `backend_compile` monitoring event). Then the
shipped configs (every variant `get_config` accepts) must pass the runners' checks, and the legitimate values
(seed 0, a study switched off with 0) must stay accepted.
"""
import math
import re

import pytest

import experiments.main as M
from experiments import reproduce
from kexue_jax.core.config import ConfigError
from kexue_jax.optim import ablation
from kexue_jax.optim import dirac_gan_experiments
from kexue_jax.optim import momentum_experiments

from tests.helpers import BACKEND_COMPILES as _compiles, set_dotted as _set

NAN = math.nan
CHECKS = {
    "dirac_gan": dirac_gan_experiments.check_config,
    "exponentiated_gradient": ablation.check_config,
    "eg_mnist5k": ablation.check_config,
    "momentum_ode": momentum_experiments.check_config,
}


def _load(name, arg="smoke"):
  return reproduce.load_config(f"experiments/optim/{name}.py", arg)


def _cases():
  cases = []

  def add(name, key, values):
    cases.extend((name, key, v) for v in values)

  floats, ints = (-1.0, NAN), (0, -1)
  for key in ("ema_decay", "lr", "ode_dt", "weights.consensus", "weights.l2", "weights.nk", "weights.zero_gp"):
    add("dirac_gan", key, floats)
  add("dirac_gan", "ema_decay", (1.0,))
  for key in ("num_steps", "ode_steps"):
    add("dirac_gan", key, ints)

  for name in ("exponentiated_gradient", "eg_mnist5k"):
    smoke = _load(name)
    for key in ("divergence_factor", "quadratic_kappa", "trajectory_lr"):
      add(name, key, floats)
    for g in smoke.gammas:
      add(name, f"gammas.{g}", floats)
    for t in smoke.targets:
      add(name, f"targets.{t}", floats)
    add(name, "eval_every", ints)
    add(name, "headline", ("bogus_value",))
    add(name, "trajectory_task", ("bogus_value",))
  for key in ("shift.level", "shift.lr"):
    add("exponentiated_gradient", key, (-1.0, NAN))
  for key in ("shift.eval_every", "shift.num_steps"):
    add("exponentiated_gradient", key, (0, -1))

  for key in ("beta_rule_batch", "beta_rule_hidden", "escape_steps", "kappa_dim", "max_iters", "temperature_chains"):
    add("momentum_ode", key, ints)
  add("momentum_ode", "beta_rule_steps", (-1,))  # 0 switches the study off (test_legitimate_values)
  for key in ("beta_rule_beta", "beta_rule_decay", "beta_rule_lr", "show_alpha", "show_beta",
              "temperature_weight_decay", "tol"):
    add("momentum_ode", key, floats)
  add("momentum_ode", "temperature_time", floats)  # 0.0 switches the study off
  add("momentum_ode", "beta_rule_beta", (1.0,))
  add("momentum_ode", "beta_rule_decay", (0.0, 2.0))
  add("momentum_ode", "tol", (1.0,))
  return cases


def _message(key, value):
  return rf"`{re.escape(key)}` must be .*; got {re.escape(repr(value))}$"


def _raises_before_compiling(config, tmp_path, match):
  _compiles.clear()
  with pytest.raises(ValueError, match=match) as info:
    M.run(config, str(tmp_path))
  assert _compiles == [], f"compiled before the config error: {_compiles}"
  assert not (tmp_path / "units").exists()  # raised before the UnitStore was made
  return info.value


@pytest.mark.parametrize("name,key,value", _cases(), ids=lambda x: repr(x) if isinstance(x, float) else str(x))
def test_bad_value_raises_before_compiling(name, key, value, tmp_path):
  config = _load(name)
  _set(config, key, value)
  err = _raises_before_compiling(config, tmp_path, _message(key, value))
  assert isinstance(err, ConfigError)


# Values that are wrong only together with other keys, or lists (the audit leaves lists alone).
EXTRA = [
    ("dirac_gan", "variants", ["vanilla", "wgan_gp"], r"`variants` must be a non-empty list of names .*'wgan_gp'"),
    ("dirac_gan", "regularisers", [], r"`regularisers` must be a non-empty list"),
    ("dirac_gan", "weights", dict(l2=0.1), r"`weights.zero_gp` must be set \(regulariser 'zero_gp'"),
    ("exponentiated_gradient", "optimizers", ["adam", "lion"], r"`optimizers` must be one of .*; got 'lion'"),
    ("exponentiated_gradient", "gammas", dict(raw=1.0), r"`gammas.eg_sgd` must be set \(optimizer 'eg_sgd'"),
    ("exponentiated_gradient", "targets", dict(quadratic=1e-6), r"`targets.mlp_digits` must be set"),
    ("exponentiated_gradient", "headline", "adam", r"`headline` must be an EG wrapper name .*; got 'adam'"),
    ("exponentiated_gradient", "learning_rates", [1e-2, math.inf], r"`learning_rates` must be"),
    ("exponentiated_gradient", "seeds", [0, -1], r"`seeds` must be a non-empty list of integers >= 0"),
    ("momentum_ode", "betas", [0.5, 0.9], r"`betas` must be .* including 0.0"),
    ("momentum_ode", "alphas", [0.05, NAN], r"`alphas` must be a non-empty list of learning rates > 0"),
    ("momentum_ode", "kappas", [10.0], r"`kappas` must be .*at least 2 distinct"),
    ("momentum_ode", "temperature_batches", [8, 32], r"`temperature_lrs` must be .*equal lr/B"),
    ("momentum_ode", "temperature_batches", [16], r"`temperature_batches` must be at least 2 distinct"),
    ("momentum_ode", "temperature_time", 0.01, r"`temperature_time` must be large enough .*; got 0.01"),
]


@pytest.mark.parametrize("name,key,value,match", EXTRA, ids=[f"{c[0]}-{c[1]}" for c in EXTRA])
def test_inconsistent_value_raises_before_compiling(name, key, value, match, tmp_path):
  config = _load(name)
  _set(config, key, value)
  _raises_before_compiling(config, tmp_path, match)


def test_a_factory_error_on_a_gamma_names_the_gamma(monkeypatch, tmp_path):
  """A γ the optimizer factory refuses (here: a stricter stand-in for eg_sgd) is a config error naming
  `gammas.<name>`, not a failing optimizer row."""
  real = ablation.eg_sgd

  def strict(lr, gamma):
    if gamma > 5.0:
      raise ValueError(f"`gamma` must be <= 5; got {gamma!r}")
    return real(lr, gamma)

  monkeypatch.setattr(ablation, "eg_sgd", strict)
  config = _load("exponentiated_gradient")
  config.gammas.eg_sgd = 10.0
  _raises_before_compiling(config, tmp_path, r"`gammas.eg_sgd` must be a value optimizer 'eg_sgd' accepts "
                                             r"\(`gamma` must be <= 5; got 10.0\); got 10.0$")


@pytest.mark.parametrize("name", sorted(CHECKS))
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_shipped_configs_pass_the_checks(name, arg):
  _compiles.clear()
  CHECKS[name](_load(name, arg))
  assert _compiles == []


def test_legitimate_values_pass_the_checks():
  config = _load("momentum_ode")
  config.beta_rule_steps = 0  # the β-rule study off
  config.temperature_time = 0.0  # the temperature study off
  config.beta_rule_batch = -1  # read only by the β-rule study
  config.temperature_chains = 0  # read only by the temperature study
  momentum_experiments.check_config(config)
  config = _load("exponentiated_gradient")
  config.seeds = [0]
  config.shift.enabled = False
  config.shift.lr = -1.0  # read only by the shift test
  config.headline = "adam"  # any optimizer name without the shift test
  ablation.check_config(config)
  config = _load("dirac_gan")
  config.ema_decay = 0.0
  config.weights.consensus = 0.0
  dirac_gan_experiments.check_config(config)
