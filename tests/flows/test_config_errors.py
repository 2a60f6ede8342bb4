"""A config mistake in a flows experiment fails before anything is compiled, with a message naming the key.

Each case loads an experiment's test-sized config (`experiments/flows/<name>.py:smoke`), sets one key to a
bad value and runs it through its runner (`experiments.main.run`): a ValueError naming the key, the
expectation and the value must come before any XLA compilation (a `backend_compile` monitoring event) and
before a checkpoint directory exists -- an evaluation key is read only after training, a model argument
of the second `run_comparison` run only after the first run has trained. Then unit tests of the module
constructor checks, and of the legitimate zero counts that must stay accepted.
"""
import math
import os
import re

import ml_collections
import pytest
from flax import nnx

import experiments.main as M
from experiments import reproduce
from kexue_jax.core.config import import_object
from kexue_jax import flows as F
from kexue_jax.flows import dequant as DQ
from kexue_jax.flows import fvae as FV
from kexue_jax.flows import iresnet as IR
from kexue_jax.flows import train as FT

from tests.helpers import BACKEND_COMPILES as _compiles, set_dotted as _set


def _int(key, value, minimum=1):
    return rf"`{re.escape(key)}` must be an integer >= {minimum}; got {re.escape(repr(value))}"


def _dq(inner):
    return r"`dequantizer_kwargs` must be valid VariationalDequantizer arguments \(" + inner


_FINITE = "must be a finite number > 0; got"
# (config[:arg], dotted key, bad value, message regex)
CASES = [
    ("dequant", "dequantizer_kwargs.logit_bound", -1.0, _dq(rf"`logit_bound` {_FINITE} -1.0")),
    ("dequant", "dequantizer_kwargs.logit_bound", math.nan, _dq(rf"`logit_bound` {_FINITE} nan")),
    ("dequant", "dequantizer_kwargs.logit_bound", math.inf, _dq(rf"`logit_bound` {_FINITE} inf")),
    ("dequant", "dequantizer_kwargs.scale_bound", -1.0, _dq(rf"`scale_bound` {_FINITE} -1.0")),
    ("dequant", "dequantizer_kwargs.scale_bound", math.nan, _dq(rf"`scale_bound` {_FINITE} nan")),
    ("dequant", "dequantizer_kwargs.num_blocks", -1, _dq(_int("num_blocks", -1, 0))),
    ("dequant", "dequantizer_kwargs.num_couplings", -1, _dq(_int("num_couplings", -1, 0))),
    ("dequant", "dequantizer_kwargs.width", 0, _dq(_int("width", 0))),
    ("dequant", "dequantizer_kwargs.width", -1, _dq(_int("width", -1))),
    ("dequant", "dequantizer_kwargs", dict(num_couplings=1, widht=8),
     _dq(r".*unexpected keyword argument 'widht'")),
    ("dequant", "model_kwargs.dequantizer", "bogus_value",
     r"`model_kwargs.dequantizer` must be one of \['uniform', 'variational'\] .*; got 'bogus_value'"),
    ("dequant", "model_kwargs.flow_kwargs.num_blocks", -1, _int("num_blocks", -1, 0)),
    ("dequant", "compare", ("uniform", "uniform"), r"`compare` must be a non-empty sequence of distinct names"),
    ("dequant", "eval_batch_size", 0, _int("eval_batch_size", 0)),
    ("dequant", "eval_batch_size", -1, _int("eval_batch_size", -1)),
    ("dequant", "eval_dequant_samples", 0, _int("eval_dequant_samples", 0)),
    ("dequant", "eval_importance_samples", 0, _int("eval_importance_samples", 0)),
    ("dequant", "eval_importance_samples", -1, _int("eval_importance_samples", -1)),
    ("fvae", "eval_batch_size", 0, _int("eval_batch_size", 0)),
    ("fvae", "eval_elbo_samples", 0, _int("eval_elbo_samples", 0)),
    ("fvae", "eval_num_samples", -1, _int("eval_num_samples", -1)),
    ("fvae", "eval_sample_chunk_size", 0, _int("eval_sample_chunk_size", 0)),
    ("fvae", "model_kwargs.num_encoder_blocks", -1, _int("num_encoder_blocks", -1, 0)),
    ("fvae", "model_kwargs.num_decoder_blocks", -1, _int("num_decoder_blocks", -1, 0)),
    ("fvae", "model_kwargs.flow_hidden", (-17,), _int("flow_hidden", -17)),
    ("glow", "eval_batch_size", 0, _int("eval_batch_size", 0)),
    ("glow", "eval_dequant_samples", -1, _int("eval_dequant_samples", -1)),
    ("glow_cifar10", "eval_batch_size", -1, _int("eval_batch_size", -1)),
    ("glow_cifar10", "eval_dequant_samples", 0, _int("eval_dequant_samples", 0)),
    ("nice", "eval_batch_size", 0, _int("eval_batch_size", 0)),
    ("nice", "eval_dequant_samples", -1, _int("eval_dequant_samples", -1)),
    ("realnvp", "eval_batch_size", -1, _int("eval_batch_size", -1)),
    ("realnvp", "eval_dequant_samples", 0, _int("eval_dequant_samples", 0)),
    ("realnvp", "model_kwargs.num_blocks", -1, _int("num_blocks", -1, 0)),
    ("realnvp_cifar10", "eval_batch_size", 0, _int("eval_batch_size", 0)),
    ("realnvp_cifar10", "eval_dequant_samples", -1, _int("eval_dequant_samples", -1)),
    ("iresnet", "eval_logdet", "bogus_value",
     r"`eval_logdet` must be one of \['series', 'exact', 'roulette'\]; got 'bogus_value'"),
    ("iresnet", "model_kwargs.n_power_iterations", 0, _int("n_power_iterations", 0)),
    ("iresnet:digits_smoke", "eval_logdet", "bogus_value", r"`eval_logdet` must be one of .*; got 'bogus_value'"),
    ("iresnet:digits_smoke", "eval_logdet_options", dict(n_term=20),
     r"`eval_logdet_options` must be a dict with keys from \['n_terms', .*; got .*'n_term'"),
    ("iresnet:digits_smoke", "eval_logdet_options", dict(n_terms=0), _int("eval_logdet_options.n_terms", 0)),
    ("iresnet:digits_smoke", "eval_dequant_samples", 0, _int("eval_dequant_samples", 0)),
    ("iresnet:digits_smoke", "eval_batch_size", -1, _int("eval_batch_size", -1)),
    ("iresnet:digits_smoke", "model_kwargs.n_power_iterations", 0, _int("n_power_iterations", 0)),
]


def _load(name_arg: str):
    """'name' -> get_config('smoke'), 'name:arg' -> get_config('arg'), 'name:' -> get_config(None)."""
    name, colon, arg = name_arg.partition(":")
    return reproduce.load_config(os.path.join(reproduce.REPO, "experiments", "flows", f"{name}.py"),
                                 (arg or None) if colon else "smoke")


@pytest.mark.parametrize("name,key,value,message", CASES,
                         ids=[f"{c[0]}-{c[1]}={c[2]!r}" for c in CASES])
def test_config_mistake_fails_before_compiling(name, key, value, message, tmp_path):
    config = _load(name)
    config.progress = False
    _set(config, key, value)
    _compiles.clear()
    with pytest.raises(ValueError, match=message):
        M.run(config, str(tmp_path))
    assert _compiles == [], f"compiled before the error: {_compiles}"
    assert not [d for d, subdirs, _ in os.walk(tmp_path) if "checkpoints" in subdirs], "a checkpoint dir was made"


@pytest.mark.parametrize("name", ["dequant", "dequant:", "fvae", "fvae:", "fvae:vae_baseline", "fvae:mnist5k", "glow",
                                  "glow:", "glow_cifar10:", "iresnet", "iresnet:", "iresnet:digits", "iresnet:mnist5k",
                                  "nice", "nice:", "realnvp", "realnvp:", "realnvp_cifar10:"])
def test_shipped_configs_pass_the_checks(name):
    """The evaluate hooks' `check_config` accepts the shipped configs, smoke and full ("name:")."""
    config = _load(name)
    import_object(config.evaluate, key="evaluate").check_config(config)


# ----------------------------------------------------------------------------------------------------
# The constructor checks, directly (abstract construction: nothing is allocated or compiled).


def _build(factory, **kw):
    return lambda: nnx.eval_shape(lambda: factory(**kw, rngs=nnx.Rngs(0)))


_VD = dict(event_shape=(4, 4, 1), levels=17)
_FLOW = dict(flow=F.NICE, flow_kwargs=dict(event_shape=(4, 4, 1), num_couplings=1, hidden=(4,), levels=17))
_FVAE = dict(event_shape=(4, 4, 1), hidden=8, num_couplings=2, flow_hidden=(8,), levels=17)
_BLOCK = dict(num_features=2, hidden=(4,))

BAD = [
    ("vd logit_bound nan", _build(DQ.VariationalDequantizer, **_VD, logit_bound=math.nan),
     f"`logit_bound` {_FINITE} nan"),
    ("vd logit_bound inf", _build(DQ.VariationalDequantizer, **_VD, logit_bound=math.inf),
     f"`logit_bound` {_FINITE} inf"),
    ("vd scale_bound inf", _build(DQ.VariationalDequantizer, **_VD, scale_bound=math.inf),
     f"`scale_bound` {_FINITE} inf"),
    ("vd width", _build(DQ.VariationalDequantizer, **_VD, width=0), "`width` must be an integer >= 1; got 0"),
    ("flow dequantizer width", _build(DQ.DequantizedFlow, **_FLOW, dequantizer_kwargs=dict(width=0)),
     "`dequantizer_kwargs` must be valid VariationalDequantizer arguments (`width` must be an integer >= 1; "
     "got 0); got {'width': 0}"),
    ("flow dequantizer unknown key", _build(DQ.DequantizedFlow, **_FLOW, dequantizer_kwargs=dict(widht=8)),
     "`dequantizer_kwargs` must be valid VariationalDequantizer arguments ("),
    ("coupling scale_bound inf", lambda: F.AffineCoupling(lambda x: x, num_channels=2, scale_bound=math.inf),
     f"`scale_bound` {_FINITE} inf"),
    ("fvae encoder blocks", _build(FV.FVAE, **_FVAE, num_encoder_blocks=-1),
     "`num_encoder_blocks` must be an integer >= 0; got -1"),
    ("fvae decoder blocks", _build(FV.FVAE, **_FVAE, num_decoder_blocks=-2),
     "`num_decoder_blocks` must be an integer >= 0; got -2"),
    ("fvae flow_hidden", _build(FV.FVAE, **{**_FVAE, "flow_hidden": (8, 0)}),
     "`flow_hidden` must be an integer >= 1; got 0"),
    ("iresnet block power iterations", _build(IR.IResNetBlock, **_BLOCK, n_power_iterations=0),
     "`n_power_iterations` must be an integer >= 1; got 0"),
    ("iresnet power iterations", _build(IR.IResNet, event_shape=(2,), num_blocks=1, n_power_iterations=0),
     "`n_power_iterations` must be an integer >= 1; got 0"),
]


@pytest.mark.parametrize("what,fn,message", BAD, ids=[b[0] for b in BAD])
def test_constructor_checks(what, fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fn()


GOOD = [
    ("vd no couplings, no blocks", _build(DQ.VariationalDequantizer, **_VD, num_couplings=0, num_blocks=0)),
    ("fvae as the VAE baseline", _build(FV.FVAE, **{**_FVAE, "num_couplings": 0, "posterior_scale": "diagonal"})),
    ("fvae identity E and G", _build(FV.FVAE, **_FVAE, num_encoder_blocks=0, num_decoder_blocks=0)),
    ("realnvp no residual blocks", _build(F.RealNVP, event_shape=(4, 4, 1), num_levels=1, num_couplings=1, width=4,
                                          num_blocks=0, levels=17)),
    ("iresnet one power iteration", _build(IR.IResNet, event_shape=(2,), num_blocks=1, n_power_iterations=1)),
]


@pytest.mark.parametrize("what,fn", GOOD, ids=[g[0] for g in GOOD])
def test_zero_counts_that_mean_something_stay_accepted(what, fn):
    fn()


def test_check_config_uses_the_evaluate_defaults():
    """An absent key is checked at the default `evaluate` uses, a present bad one names itself."""
    empty = ml_collections.ConfigDict()
    for check in (FT.check_config, FV.check_config, DQ.check_config, IR.check_config, IR.check_image_config):
        check(empty)
    with pytest.raises(ValueError, match=re.escape("`eval_sample_chunk_size` must be an integer >= 1; got None")):
        FV.check_config(ml_collections.ConfigDict(dict(eval_sample_chunk_size=None)))
    assert F.evaluate.check_config is FT.check_config
    assert IR.evaluate_images.check_config is IR.check_image_config
