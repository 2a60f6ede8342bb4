"""The unit store of the custom runners: exact round trips, resume after a fault, config mismatch."""
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kexue_jax.core.config import ConfigError
from kexue_jax.core.units import FAIL_AFTER_ENV, UnitFault, UnitStore, _dirname


def _config(**kw):
  c = ml_collections.ConfigDict(dict(seed=0, lr=0.1, name="x"))
  c.update(kw)
  return c


def test_round_trip_is_exact_in_values_and_types(tmp_path):
  out = {"loss": 0.1 + 0.2, "nan": float("nan"), "steps": 7, "ok": True, "label": "a/b", "none": None,
         "curve": np.linspace(0, 1, 5, dtype=np.float32), "jax": jnp.arange(3.0),
         "scalar": np.float32(1.25), "nested": (np.int64(3), [1.5, {"x": np.ones((2, 2))}]),
         "empty": {}}
  calls = []

  def job():
    calls.append(1)
    return out

  first = UnitStore(tmp_path, _config()).run("grid/adam lr=0.1", job)
  again = UnitStore(tmp_path, _config()).run("grid/adam lr=0.1", job)
  assert len(calls) == 1
  assert first is out
  assert type(again["loss"]) is float and again["loss"] == 0.1 + 0.2
  assert type(again["nan"]) is float and np.isnan(again["nan"])
  assert type(again["steps"]) is int and again["steps"] == 7
  assert again["ok"] is True and again["label"] == "a/b" and again["none"] is None
  assert again["curve"].dtype == np.float32 and np.array_equal(again["curve"], out["curve"])
  assert isinstance(again["jax"], np.ndarray) and np.array_equal(again["jax"], np.arange(3.0))
  assert type(again["scalar"]) is np.float32 and again["scalar"] == np.float32(1.25)
  assert isinstance(again["nested"], tuple) and type(again["nested"][0]) is np.int64
  assert isinstance(again["nested"][1], list) and again["nested"][1][0] == 1.5
  assert np.array_equal(again["nested"][1][1]["x"], np.ones((2, 2)))
  assert again["empty"] == {}
  events = [e["event"] for e in UnitStore(tmp_path, _config()).log()]
  assert events == ["computed", "restored"]


def test_fault_hook_then_resume_computes_only_the_rest(tmp_path, monkeypatch):
  calls = []

  def job(i):
    calls.append(i)
    return {"i": i, "sq": np.float64(i) ** 2}

  def runner():
    store = UnitStore(tmp_path, _config())
    return [store.run(f"unit {i}", job, i) for i in range(4)]

  monkeypatch.setenv(FAIL_AFTER_ENV, "2")
  with pytest.raises(UnitFault, match="unit 1"):
    runner()
  monkeypatch.delenv(FAIL_AFTER_ENV)
  assert calls == [0, 1]
  resumed = runner()
  assert calls == [0, 1, 2, 3]
  assert [r["sq"] for r in resumed] == [0.0, 1.0, 4.0, 9.0]


def test_half_written_unit_is_recomputed(tmp_path):
  store = UnitStore(tmp_path, _config())
  # What a kill during an orbax save leaves behind: `<final name>.orbax-checkpoint-tmp-<timestamp>` (orbax's
  # temporary-path naming), holding part of the files, never the final name itself.
  final = os.path.join(store.directory, _dirname("unit 0"))
  partial = final + ".orbax-checkpoint-tmp-1712345678901234"
  os.makedirs(os.path.join(partial, "arrays"))
  with open(os.path.join(partial, "arrays", "_METADATA"), "w") as f:
    f.write("{")
  assert not store.has("unit 0")
  calls = []

  def job():
    calls.append(1)
    return {"a": 2.5}

  assert store.run("unit 0", job) == {"a": 2.5}
  assert calls == [1] and store.has("unit 0") and os.path.isdir(final)
  again = UnitStore(tmp_path, _config())
  assert again.run("unit 0", job) == {"a": 2.5} and calls == [1]  # restored from the finished unit
  assert [e["event"] for e in again.log()] == ["computed", "restored"]


def test_different_config_is_a_config_error(tmp_path):
  UnitStore(tmp_path, _config()).run("u", lambda: 1.0)
  with pytest.raises(ConfigError, match=r"different config.*fresh --workdir"):
    UnitStore(tmp_path, _config(lr=0.2))
  with open(tmp_path / "units" / "config.json") as f:
    assert len(json.load(f)["sha256"]) == 64


def test_unsupported_output_is_a_type_error(tmp_path):
  with pytest.raises(TypeError, match="string dict keys"):
    UnitStore(tmp_path, _config()).run("u", lambda: {1: 2.0})
  with pytest.raises(TypeError, match="got object"):
    UnitStore(tmp_path, _config()).run("v", lambda: object())
