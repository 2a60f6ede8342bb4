"""Training never loses work: SIGKILL after / during a checkpoint, resume, bit-identical result; NaN guard.

Each run is a real `python -m experiments.main` process, so these test the command users type.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from kexue_jax.core import checkpoint as ckpt_lib
from kexue_jax.nn import mlp
from tests.helpers import REPO

CONFIG = "tests/core/tiny_config.py"


def _main(workdir, *overrides, fault=None, timeout=240):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TQDM_DISABLE="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(ckpt_lib.FAULT_ENV, None)
    if fault:
        env[ckpt_lib.FAULT_ENV] = fault
    cmd = [sys.executable, "-m", "experiments.main", f"--config={CONFIG}", f"--workdir={workdir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _restore_raw(workdir, step):
    """The saved state at `step` as numpy leaves (restored into its own saved structure)."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
        meta = mngr.item_metadata(step)
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
        restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return jax.tree.map(np.asarray, restored)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_steps(workdir):
    return [r["step"] for r in _rows(workdir) if "train/loss" in r]


def _assert_bit_identical(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    proc = _main(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_kill_right_after_checkpoint_then_resume_is_bit_identical(straight, tmp_path):
    workdir = str(tmp_path)
    killed = _main(workdir, fault="kill_after_save:10")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 10
    resumed = _main(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 10" in resumed.stdout
    _assert_bit_identical(_restore_raw(straight, 20), _restore_raw(workdir, 20))
    # The metrics file describes one uninterrupted run: each logged step exactly once.
    steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))
             if "train/loss" in json.loads(l)]
    assert steps == [5, 10, 15, 20]


def test_kill_during_a_save_keeps_the_previous_checkpoint(straight, tmp_path):
    workdir = str(tmp_path)
    killed = _main(workdir, "--config.checkpoint_every=5", fault="kill_during_save:10")
    assert killed.returncode == -signal.SIGKILL
    # The interrupted save of step 10 never committed; step 5 is the latest and restores.
    assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 5
    _restore_raw(workdir, 5)
    # The row of step 10 was logged before the save was killed: the file runs past the checkpoint.
    assert _train_steps(workdir) == [5, 10]
    resumed = _main(workdir, "--config.checkpoint_every=5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 5" in resumed.stdout
    _assert_bit_identical(_restore_raw(straight, 20), _restore_raw(workdir, 20))
    # The rows past step 5 were dropped and redone: one row per logging step, each equal to the uninterrupted
    # run's (the final evaluation row included).
    assert _train_steps(workdir) == [5, 10, 15, 20]
    assert _rows(workdir) == _rows(straight)


def key_scaled_loss(model, batch, *, key):
    """classifier_loss times a random factor drawn from the step key, plus that draw as a metric: the step's
    gradients, parameters and logged metrics all depend on which key the step got."""
    loss, aux = mlp.classifier_loss(model, batch, key=None)
    draw = jax.random.normal(key)
    return loss * (1.0 + 0.5 * draw), {**aux, "draw": draw}


def test_resume_replays_the_per_step_keys_of_a_loss_that_uses_them(tmp_path):
    # A run killed right after its checkpoint of step 2 (its checkpoint and its rows up to step 2, copied from
    # the uninterrupted run), then resumed: steps 3-4 must get the keys fold_in(key(seed), 3), (.., 4) again.
    from kexue_jax.core import train
    from tests.core import tiny_config

    config = tiny_config.get_config()
    config.loss = "tests.core.test_resume.key_scaled_loss"
    config.num_steps, config.log_every, config.checkpoint_every, config.evaluate = 4, 1, 2, None
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(config, straight)
    rows = [r for r in _rows(straight) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert len({r["train/draw"] for r in rows}) == 4  # the loss really draws from a per-step key
    shutil.copytree(os.path.join(straight, "checkpoints", "2"), os.path.join(resumed, "checkpoints", "2"))
    with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:2])
    train.train_and_evaluate(config, resumed)
    assert [r for r in _rows(resumed) if "train/loss" in r] == rows  # every metric of steps 3-4 bit for bit
    _assert_bit_identical(_restore_raw(straight, 4), _restore_raw(resumed, 4))  # params, Adam state, EMA


def test_nan_stops_training_names_step_and_metric_and_keeps_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path)
    proc = _main(workdir, "--config.model=tests.core.fixtures.CountingClassifier",
                 "--config.loss=tests.core.fixtures.nan_at_step_loss",
                 "--config.checkpoint_every=5", "--config.log_every=1")
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "metric 'loss' became nan at step 13" in proc.stderr
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ck.latest_step() == 10  # saved before step 13; nothing after it
    saved = _restore_raw(workdir, 10)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved) if np.issubdtype(x.dtype, np.floating))


@pytest.mark.parametrize("change", [
    dict(model_kwargs=dict(image_shape=(8, 8, 1), hidden=(48,), num_classes=10, levels=17)),
    dict(model_kwargs=dict(image_shape=(8, 8, 1), hidden=(32, 32), num_classes=10, levels=17)),
    dict(ema_decay=None),
], ids=["width (shapes)", "extra layer (structure)", "no EMA (structure)"])
def test_resuming_with_a_different_config_names_the_workdir(change, tmp_path):
    # A workdir written by one config, resumed by another whose state differs (a width: shapes; a layer or
    # the EMA: tree structure): a clear error naming `workdir`, never a silent restore or orbax's internals.
    from kexue_jax.core import train
    from tests.core import tiny_config

    config = tiny_config.get_config()
    config.num_steps, config.checkpoint_every = 2, 2
    train.train_and_evaluate(config, str(tmp_path))
    for k, v in change.items():
        config[k] = v
    config.num_steps = 4
    with pytest.raises(ValueError, match=r"`workdir` .* holds a checkpoint \(step 2\) whose state does not match "
                                         r"this config's .*use the config that wrote it or a fresh workdir"):
        train.train_and_evaluate(config, str(tmp_path))
