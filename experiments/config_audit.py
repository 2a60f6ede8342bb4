"""Config-mistake audit: does every experiment reject a bad config value before anything compiles?

    python -m experiments.config_audit                      # every config under experiments/ (minutes)
    python -m experiments.config_audit attention/ vae/vae   # configs whose path contains one of these

For each experiment config (its smoke variant) and each leaf value of it, the value is replaced by a bad
one (integers: 0 and -1; floats: -1.0 and NaN; strings: 'bogus_value'; tuples of numbers: their negatives)
and the config's runner is called, with a JAX monitoring listener that stops the run at the first XLA
compilation. Each case ends as one of:

    VALUEERROR              rejected before anything compiled (the project's rule; the message is printed)
    ACCEPTED_UNTIL_COMPILE  nothing objected before the first compilation: either the value is legitimate
                            (seed 0, eval_every 0, mesh.data -1, warmup_steps 0, a count of optional
                            layers 0, ...) or a check is missing, which a person decides
    OTHER:<Exception>       a crash that is not a clear ValueError (always a defect)

Values that ml_collections refuses to assign (a float into an int field) are skipped: its own error names
the field. A summary of the non-VALUEERROR cases is printed at the end. Not part of the test suite (it runs
a few hundred cases per family); the per-family tests `tests/*/test_*config_errors.py` pin the findings.
"""
from __future__ import annotations

import argparse
import copy
import glob
import os
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Keys whose bad values are not meaningful to try (import paths, metadata, data location).
SKIP_TOP = {"runner", "article", "reports", "evaluate", "model", "loss", "optimizer", "dataset", "data_dir",
            "data_init", "distributed"}


class _Compiled(Exception):
    pass


def _leaves(cfg, prefix=()):
    import ml_collections

    for k in cfg.keys():
        v = cfg[k]
        if not prefix and k in SKIP_TOP:
            continue
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _bad_values(v):
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [0, -1]
    if isinstance(v, float):
        return [-1.0, float("nan")]
    if isinstance(v, str):
        return ["bogus_value"]
    if isinstance(v, tuple) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return [tuple(-abs(x) - 1 for x in v)]
    return []


def _set(cfg, path, value):
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="substrings of config paths (default: all)")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    sys.path.insert(0, REPO)
    import jax

    from experiments import main as experiment_main
    from experiments.reproduce import load_config

    armed = [False]

    def listener(event, duration, **kw):
        if armed[0] and "backend_compile" in event:
            armed[0] = False
            raise _Compiled(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    paths = sorted(p for p in glob.glob("experiments/*/*.py") if not p.endswith("__init__.py"))
    if args.only:
        paths = [p for p in paths if any(o in p for o in args.only)]
    flagged = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in paths:
            base = load_config(path, "smoke")
            for key, value in list(_leaves(base)):
                for bad in _bad_values(value):
                    cfg = copy.deepcopy(base)
                    try:
                        _set(cfg, key, bad)
                    except (TypeError, ValueError):
                        continue
                    workdir = tempfile.mkdtemp(dir=scratch)
                    t0 = time.perf_counter()
                    armed[0] = True
                    try:
                        experiment_main.run(cfg, workdir)
                        kind, msg = "NO_ERROR", "ran to the end without compiling"
                    except _Compiled:
                        kind, msg = "ACCEPTED_UNTIL_COMPILE", ""
                    except ValueError as e:
                        kind, msg = "VALUEERROR", str(e)
                    except Exception as e:  # noqa: BLE001 — the audit reports every other failure
                        kind, msg = f"OTHER:{type(e).__name__}", f"{e} @ {traceback.format_exc().splitlines()[-3]}"
                    finally:
                        armed[0] = False
                    line = (f"{kind:24s} {path[len('experiments/'):]} {'.'.join(key)} {bad!r} "
                            f"({time.perf_counter() - t0:.1f} s) | {msg[:160]}")
                    print(line, flush=True)
                    if kind != "VALUEERROR":
                        flagged.append(line)
    print(f"\n{len(flagged)} case(s) not rejected before compiling (judge each):")
    print("\n".join(flagged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
