"""The only entry point with flags: train, evaluate, checkpoint, resume.

    python -m experiments.main --config experiments/vae/vae.py:smoke --workdir /tmp/vae
    python -m experiments.main --config experiments/vae/vae.py --workdir /tmp/vae --config.num_steps=500

A workdir that already holds a checkpoint is resumed from its latest step. The config's `runner`
(default: the shared trainer) does the work; exit status is non-zero on a config error or a NaN.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file[:arg].",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")

DEFAULT_RUNNER = "kexue_jax.core.train.train_and_evaluate"


def run(config, workdir: str) -> dict:
    """Runs `config.runner(config, workdir)` (import path; default: the shared trainer)."""
    from kexue_jax.core.config import import_object

    runner = import_object(config.get("runner", DEFAULT_RUNNER), key="runner")
    return runner(config, workdir)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    from kexue_jax.core.config import ConfigError
    from kexue_jax.core.train import NonFiniteError

    try:
        results = run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
