"""Resumable units of work for the custom experiment runners, saved atomically with orbax-checkpoint.

The shared trainer, the chess and the UniLM trainers checkpoint their training state every N steps. The
other runners (attention, optimizer ablation, GAN and momentum experiments, dequantisation comparison)
are grids of small, deterministic jobs: one `lax.scan` training run per (variant, seed), a few seconds
to a few minutes each. For those the unit of resumption is the job: each finished job's output (a
pytree of arrays, Python scalars and strings) is written under `workdir/units/<name>` when it ends, and
a rerun in the same workdir restores it instead of recomputing it. A run killed at any point therefore
loses at most the job in progress, and, because every job is a deterministic function of the config,
the resumed run's results are bit-identical to an uninterrupted run's (tested per runner).

Orbax writes each unit into a temporary directory and renames it once complete, so a kill during a save
leaves no half-written unit. The workdir remembers the config it was started with
(`units/config.json`, a SHA-256 of the config's JSON); resuming with a different config is a
`ConfigError` before any job runs, never a silent mix of results from two configs.

    store = UnitStore(workdir, config)
    out = store.run("recall/softmax", train_recall, config, "softmax", key)

Each call appends one line to `units/log.jsonl`: {"name", "event": "computed" | "restored", "seconds"}.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from kexue_jax.core.config import ConfigError

__all__ = ["UnitStore", "config_fingerprint", "FAIL_AFTER_ENV"]

# Test hook, never set in normal use: "N" makes `UnitStore.run` raise `UnitFault` right after the N-th
# unit computed by this process has been saved, so tests can interrupt a runner between two units.
FAIL_AFTER_ENV = "KEXUE_JAX_TEST_FAIL_AFTER_UNITS"


class UnitFault(RuntimeError):
    """Raised by the test hook `FAIL_AFTER_ENV`."""


def config_fingerprint(config: Any) -> str:
    """SHA-256 of the config's JSON (ml_collections ConfigDict or a plain dict)."""
    if hasattr(config, "to_json_best_effort"):
        text = config.to_json_best_effort(sort_keys=True)
    else:
        text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON description of `tree`; its array leaves go into `arrays` under consecutive keys."""
    if isinstance(tree, dict):
        bad = [k for k in tree if not isinstance(k, str)]
        if bad:
            raise TypeError(f"unit outputs need string dict keys; got {bad[0]!r}")
        return {"dict": {k: _encode(v, arrays) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return {type(tree).__name__: [_encode(v, arrays) for v in tree]}
    if tree is None or isinstance(tree, str):
        return {"value": tree}
    if isinstance(tree, (np.ndarray, np.generic, jax.Array)):  # before float: np.float64 is a float
        key = str(len(arrays))
        arr = np.asarray(jax.device_get(tree))
        arrays[key] = arr
        return {"array": key, "scalar": isinstance(tree, np.generic)}
    if isinstance(tree, (bool, int, float)):
        # Python scalars round-trip through JSON exactly (floats as repr, NaN/inf included).
        return {"py": type(tree).__name__, "value": repr(tree)}
    raise TypeError(f"unit outputs may hold dicts, lists, tuples, arrays, numbers, strings and None; "
                    f"got {type(tree).__name__}")


def _decode(desc: Any, arrays: dict[str, np.ndarray]) -> Any:
    if "dict" in desc:
        return {k: _decode(v, arrays) for k, v in desc["dict"].items()}
    if "list" in desc:
        return [_decode(v, arrays) for v in desc["list"]]
    if "tuple" in desc:
        return tuple(_decode(v, arrays) for v in desc["tuple"])
    if "py" in desc:
        kind = {"bool": lambda s: s == "True", "int": int, "float": float}[desc["py"]]
        return kind(desc["value"])
    if "array" in desc:
        arr = np.asarray(arrays[desc["array"]])
        return arr[()] if desc["scalar"] else arr
    return desc["value"]


def _dirname(name: str) -> str:
    """A filesystem-safe, collision-free directory name for the unit `name`."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)[:80]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


class UnitStore:
    """Runs named, deterministic jobs once per workdir; finished ones are restored on a rerun."""

    def __init__(self, workdir: str, config: Any):
        self.directory = os.path.join(os.path.abspath(workdir), "units")
        os.makedirs(self.directory, exist_ok=True)
        fingerprint = config_fingerprint(config)
        path = os.path.join(self.directory, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)["sha256"]
            if saved != fingerprint:
                raise ConfigError(
                    f"workdir {os.path.dirname(self.directory)!r} holds finished units of a different "
                    f"config (sha256 {saved[:12]}, this config {fingerprint[:12]}); use a fresh --workdir "
                    f"or delete {self.directory!r} to recompute")
        else:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"sha256": fingerprint}, f)
            os.replace(tmp, path)
        self._checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        self._computed = 0

    def _log(self, name: str, event: str, seconds: float) -> None:
        with open(os.path.join(self.directory, "log.jsonl"), "a") as f:
            f.write(json.dumps({"name": name, "event": event, "seconds": round(seconds, 3)}) + "\n")

    def has(self, name: str) -> bool:
        return os.path.isdir(os.path.join(self.directory, _dirname(name)))

    def run(self, name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)`, or its saved output if unit `name` finished in an earlier run."""
        path = os.path.join(self.directory, _dirname(name))
        start = time.perf_counter()
        if os.path.isdir(path):  # orbax renames a unit into place only once it is complete
            restored = self._checkpointer.restore(path, args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
            out = _decode(restored["meta"]["tree"], restored["arrays"] or {})
            self._log(name, "restored", time.perf_counter() - start)
            return out
        out = fn(*args, **kwargs)
        arrays: dict[str, np.ndarray] = {}
        desc = _encode(out, arrays)
        # An empty dict cannot be saved as a StandardSave item; a 0-d placeholder keeps the layout fixed.
        self._checkpointer.save(path, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays or {"_": np.zeros(())}),
            meta=ocp.args.JsonSave({"name": name, "tree": desc})))
        self._computed += 1
        self._log(name, "computed", time.perf_counter() - start)
        fail_after = os.environ.get(FAIL_AFTER_ENV, "")
        if fail_after and self._computed >= int(fail_after):
            raise UnitFault(f"test hook {FAIL_AFTER_ENV}={fail_after}: stopping after unit {name!r}")
        return out

    def log(self) -> list[dict]:
        """The events of `units/log.jsonl`, oldest first."""
        path = os.path.join(self.directory, "log.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
