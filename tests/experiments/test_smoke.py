"""Every experiment config runs for two steps through its runner and reports finite metrics.

This is the contract `experiments/reproduce.py` relies on: `get_config('smoke')` exists, the runner
writes workdir/results.json, and every metric named in `config.reports` is present and finite.
"""
import json
import math
import os

import pytest

from experiments import main as main_lib
from experiments import reproduce

CONFIGS = reproduce.discover()
# named variants with a different code path than their config's 'smoke' (a test-sized arg of their own)
VARIANTS = [(os.path.join(reproduce.REPO, "experiments", "flows", "iresnet.py"), "digits_smoke")]


def test_there_are_experiments():
    assert any(p.endswith(os.path.join("vae", "vae.py")) for p in CONFIGS)


@pytest.mark.parametrize("path, arg", [(p, "smoke") for p in CONFIGS] + VARIANTS,
                         ids=[os.path.relpath(p, reproduce.REPO) for p in CONFIGS]
                         + [f"{os.path.relpath(p, reproduce.REPO)}:{a}" for p, a in VARIANTS])
def test_two_step_smoke(path, arg, tmp_path):
    config = reproduce.load_config(path, arg)
    assert config.get("article") and config.article.get("id"), "config.article.id names the kexue.fm article"
    assert config.get("reports"), "config.reports names the metrics the experiment reports"
    if "num_steps" in config:
        config.num_steps = 2
        for key in ("log_every", "checkpoint_every"):
            if key in config:
                config[key] = 1
    if "progress" in config:
        config.progress = False
    results = main_lib.run(config, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        assert json.load(f) == pytest.approx(results, nan_ok=True)
    for report in config.reports:
        for key in (report["metric"], report.get("reference_metric")):
            if key:
                assert key in results, f"{key} missing from results of {path}"
                assert math.isfinite(results[key]), f"{key} = {results[key]} in {path}"
