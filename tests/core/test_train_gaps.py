"""Trainer checks the other core tests left open: a batch larger than the training set, a NaN in the middle of
a metrics fetch, and the exact wording of `sharding.check_batch_size`."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kexue_jax.core import checkpoint as ckpt_lib
from kexue_jax.core import sharding, train
from kexue_jax.core.config import ConfigError
from kexue_jax.nn import mlp
from tests.core import tiny_config
from tests.helpers import BACKEND_COMPILES


def nan_only_at_step_loss(model, batch, *, key, nan_step=13):
    """classifier_loss, NaN at the `nan_step`-th update (1-based) and finite before and after it.

    The NaN is a constant added to the loss, so the gradients (and every later step) stay finite: only the
    metric of that one step shows it. Needs tests.core.fixtures.CountingClassifier (its call counter)."""
    loss, aux = mlp.classifier_loss(model, batch, key=key)
    calls = model.calls[...]
    model.calls[...] = calls + 1
    return loss + jnp.where(calls + 1 == nan_step, jnp.nan, 0.0), aux


def nan_update_at_step_sgd(learning_rate, nan_step=13):
    """optax.sgd whose update at the `nan_step`-th step (1-based) is NaN: finite losses and gradients throughout,
    as when an optimizer's own arithmetic overflows (EG's exp of a large step-size exponent, say)."""
    def init(params):
        return jnp.zeros([], jnp.int32)

    def update(updates, count, params=None):
        bad = jnp.where(count + 1 == nan_step, jnp.nan, 0.0)
        return jax.tree.map(lambda u: u + bad.astype(u.dtype), updates), count + 1

    return optax.chain(optax.sgd(learning_rate), optax.GradientTransformation(init, update))


def test_batch_size_above_the_training_set_is_a_config_error_before_compiling(tmp_path):
    config = tiny_config.get_config()
    config.batch_size = 2048  # digits has 1500 training images
    BACKEND_COMPILES.clear()
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert str(e.value) == "`batch_size` must be <= the number of training examples (1500); got 2048"
    assert not BACKEND_COMPILES, BACKEND_COMPILES
    assert not os.path.exists(tmp_path / "checkpoints")


def test_a_nan_in_the_middle_of_a_fetch_stops_training_at_its_step(tmp_path):
    # log_every 16 and one checkpoint at the end: the first fetch holds steps 1-16, and only step 13 is NaN (the
    # last fetched step, 16, is finite), so the guard must look at every fetched step, not just the newest.
    config = tiny_config.get_config()
    config.model = "tests.core.fixtures.CountingClassifier"
    config.loss = "tests.core.test_train_gaps.nan_only_at_step_loss"
    config.log_every, config.checkpoint_every, config.num_steps = 16, 20, 20
    with pytest.raises(train.NonFiniteError, match=r"^metric 'loss' became nan at step 13; training stopped"):
        train.train_and_evaluate(config, str(tmp_path))
    assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() is None  # nothing saved after it
    assert not os.path.exists(tmp_path / "results.json")


def test_the_nan_fixture_is_finite_away_from_its_step(tmp_path):
    # The other half of the test above: with the NaN moved past the last step the same run finishes, so the
    # error there comes from step 13's metric alone.
    config = tiny_config.get_config()
    config.model = "tests.core.fixtures.CountingClassifier"
    config.loss = "tests.core.test_train_gaps.nan_only_at_step_loss"
    config.loss_kwargs = dict(nan_step=21)
    config.log_every, config.checkpoint_every, config.num_steps, config.evaluate = 16, 20, 20, None
    results = train.train_and_evaluate(config, str(tmp_path))
    assert math.isfinite(results["train/loss"])


@pytest.mark.parametrize("batch_size, shown", [("64", "'64'"), (True, "True"), (0, "0"), (2.0, "2.0")])
def test_check_batch_size_message_names_the_value(batch_size, shown):
    # One CPU device in-process: the batch-parallel device count is 1 and every positive int is fine.
    assert sharding.check_batch_size(64, {"data": -1}) == {"data": 1}
    assert sharding.check_batch_size(3, None) == {"data": 1}
    with pytest.raises(ValueError) as e:
        sharding.check_batch_size(batch_size, {"data": -1})
    assert str(e.value) == ("`batch_size` must be a positive multiple of the batch-parallel device count 1 "
                            f"(mesh {{'data': 1}}); got {shown}")


@pytest.mark.parametrize("process", [0, 1])
def test_only_process_0_writes_metrics_and_windows(process, tmp_path, monkeypatch):
    # On a multi-host run every process runs the same loop; N processes appending the same rows to one shared
    # metrics.jsonl (or truncating it at a resume) would corrupt it. Process 1 must leave every file as it was.
    from kexue_jax.core import metrics as metrics_lib

    path = tmp_path / "metrics.jsonl"
    rows = "".join(f'{{"step": {s}, "train/loss": {s / 10}}}\n' for s in range(1, 11))
    path.write_text(rows)
    monkeypatch.setattr(jax, "process_index", lambda: process)
    writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=5)
    writer.write(6, {"train/loss": 0.25})
    train._save_window(str(tmp_path), 6, [(6, {"loss": np.float32(0.25)})], keep=[6])
    if process == 0:
        assert [r["step"] for r in metrics_lib.read_jsonl(str(path))] == [1, 2, 3, 4, 5, 6]
        assert metrics_lib.read_jsonl(str(path))[-1] == {"step": 6, "train/loss": 0.25}
        assert (tmp_path / "train_window" / "6.json").exists()
    else:
        assert path.read_text() == rows
        assert not (tmp_path / "train_window").exists()


@pytest.mark.parametrize("nan_step", [13, 20])
def test_params_made_non_finite_by_an_update_are_never_checkpointed(nan_step, tmp_path):
    # The update of step 13 (or of the last step, 20) makes the parameters NaN while every loss and gradient up to
    # it is finite (a loss is computed before its update; the NaN comes from the optimizer's own arithmetic). Checkpoints at 13 and 20: before the fix the NaN parameters were
    # saved (at 13, then step 14's NaN loss stopped the run saying the last good checkpoint was kept; at 20,
    # the run finished and evaluated a NaN model). Now the run stops at that step's checkpoint, keeping none.
    config = tiny_config.get_config()
    config.optimizer = "tests.core.test_train_gaps.nan_update_at_step_sgd"
    config.optimizer_kwargs = dict(nan_step=nan_step)
    config.log_every, config.checkpoint_every, config.num_steps = 1, 13, 20
    with pytest.raises(train.NonFiniteError, match=rf"^the parameters became non-finite in the update of step "
                                                  rf"{nan_step} \(its loss was finite\); training stopped"):
        train.train_and_evaluate(config, str(tmp_path))
    latest = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step()
    assert latest == (None if nan_step == 13 else 13)
    assert not os.path.exists(tmp_path / "results.json")
    rows = [r for r in metrics_lib_rows(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, nan_step + 1))
    assert all(math.isfinite(r["train/loss"]) for r in rows)


def test_the_nan_update_fixture_is_clean_when_its_step_is_never_reached(tmp_path):
    # The other half: with the bad step past the end the same run finishes with finite parameters.
    config = tiny_config.get_config()
    config.optimizer = "tests.core.test_train_gaps.nan_update_at_step_sgd"
    config.optimizer_kwargs = dict(nan_step=21)
    config.log_every, config.checkpoint_every, config.num_steps, config.evaluate = 1, 13, 20, None
    train.train_and_evaluate(config, str(tmp_path))
    assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 20


def metrics_lib_rows(workdir):
    from kexue_jax.core import metrics as metrics_lib
    return metrics_lib.read_jsonl(str(workdir / "metrics.jsonl"))
