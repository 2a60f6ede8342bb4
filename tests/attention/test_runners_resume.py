"""The attention runners are resumable job by job (kexue_jax/core/units.py): a run interrupted after its first
unit and rerun in the same workdir gives the results of an uninterrupted run, bit for bit.

For each runner, on a tiny config with at least two units: run it uninterrupted in `a`; in `b`, make the
unit store fail right after the first unit is saved (`FAIL_AFTER_ENV=1`), then rerun. The results (every
key but the timings, which a restored unit keeps from the run that computed it) and `train_losses.json`
must be identical, and the unit log of `b` must show the first unit computed once and restored once and
every other unit computed exactly once.

Almost all of the time is XLA compilation: every runner call builds its jitted functions afresh, so run
`b` would compile again what run `a` compiled. A persistent compilation cache, on for this module only,
serves those compilations from disk (the same executables, so the same numbers): the two calls in `b`
then take about a second each.
"""
import os
import re
import struct

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from experiments.reproduce import load_config
from kexue_jax.attention import experiments as ex
from kexue_jax.attention import mask_experiments as mx
from kexue_jax.core.units import FAIL_AFTER_ENV, UnitFault, UnitStore
from tests.helpers import REPO


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
                "jax_persistent_cache_min_compile_time_secs": 0.0}
    saved = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache is set up at the next compilation, with these settings
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def _smoke(name, **kw):
    c = load_config(os.path.join(REPO, "experiments", "attention", f"{name}.py"), "smoke")
    for key, value in kw.items():
        if isinstance(value, dict):
            c[key].update(value)
        else:
            c[key] = value
    return c


def _is_timing(key: str) -> bool:
    """Wall-clock entries: 'seconds', '<x>/seconds', '<x>/train_seconds', '<x>/seconds_per_step'."""
    return "seconds" in key.rsplit("/", 1)[-1]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _check_resume(run, config, tmp_path, monkeypatch, *, units, timing, losses_file=True):
    """Runs `run` uninterrupted in tmp_path/a, and interrupted after its first unit, then resumed, in
    tmp_path/b; `units` is the expected list of unit names in order, `timing` the expected timing keys."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    expected = run(config, a)
    monkeypatch.setenv(FAIL_AFTER_ENV, "1")
    with pytest.raises(UnitFault, match=re.escape(repr(units[0]))):
        run(config, b)
    assert not os.path.exists(os.path.join(b, "results.json"))
    monkeypatch.delenv(FAIL_AFTER_ENV)
    resumed = run(config, b)

    assert set(resumed) == set(expected)
    assert {k for k in expected if _is_timing(k)} == set(timing)
    for key in sorted(expected):
        if _is_timing(key):  # a restored unit's time is the one measured when it was computed in `b`
            assert resumed[key] > 0, key
        else:  # bit for bit
            assert struct.pack("<d", resumed[key]) == struct.pack("<d", expected[key]), (key, resumed[key],
                                                                                          expected[key])
    assert os.path.exists(os.path.join(a, "train_losses.json")) == losses_file
    if losses_file:
        assert _read(os.path.join(b, "train_losses.json")) == _read(os.path.join(a, "train_losses.json"))

    assert [(e["name"], e["event"]) for e in UnitStore(a, config).log()] == [(u, "computed") for u in units]
    log = [(e["name"], e["event"]) for e in UnitStore(b, config).log()]
    assert log == [(units[0], "computed"), (units[0], "restored")] + [(u, "computed") for u in units[1:]]


def test_run_deepnorm_resumes(tmp_path, monkeypatch):
    c = _smoke("deepnorm", num_seeds=1, d_model=8, batch_size=8, depths=(2,), why_residual_depth=2,
               why_residual_steps=2)
    _check_resume(ex.run_deepnorm, c, tmp_path, monkeypatch, timing=(),
                  units=["one_step/N2", "why_residual/residual", "why_residual/plain"])


def test_run_linear_resumes(tmp_path, monkeypatch):
    c = _smoke("linear", approx=dict(length=4, head_dim=4, features=(4, 8), draws=1, inputs=1),
               recall=dict(kernels=("softmax",), seq_len=4, num_keys=4, num_values=4, d_model=4, num_heads=1,
                           head_dim=4, batch_size=4, num_steps=2, log_every=1, eval_size=4))
    _check_resume(ex.run_linear, c, tmp_path, monkeypatch,
                  timing=("approx/seconds", "recall/softmax/seconds_per_step"),
                  units=["approx/input0", "recall/0/softmax"])


def test_run_roformer_resumes(tmp_path, monkeypatch):
    c = _smoke("roformer", hidden_size=8, num_heads=1, seq_len=8, batch_size=4, num_steps=2,
               alpha_warmup_steps=1)
    _check_resume(ex.run_roformer, c, tmp_path, monkeypatch, timing=("seconds",),
                  units=["mlm/lr0.001/no_warmup", "mlm/lr0.001/alpha_warmup"])


def test_run_rope_resumes(tmp_path, monkeypatch):
    c = _smoke("rope_copy", vocab_size=8, lag=2, train_length=8, test_lengths=(12,), d_model=8, num_heads=1,
               ffn_dim=16, batch_size=4, num_steps=2, log_every=1, eval_size=4)
    _check_resume(ex.run_rope, c, tmp_path, monkeypatch,
                  timing=("rope_copy/rope/seconds", "rope_copy/learned/seconds"),
                  units=["rope_copy/rope", "rope_copy/learned"])


def test_masks_run_resumes(tmp_path, monkeypatch):
    c = _smoke("masks", poolings=("mean",), embed=8, hidden=4, batch_size=4, num_steps=2, test_size=8,
               test_lens=(16, 24))
    _check_resume(mx.run, c, tmp_path, monkeypatch, losses_file=False,
                  timing=("masked_mean/train_seconds", "naive_mean/train_seconds"),
                  units=["train/masked_mean", "train/naive_mean"])
