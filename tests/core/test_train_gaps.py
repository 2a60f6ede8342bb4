"""Trainer checks the other core tests left open: a batch larger than the training set, a NaN in the middle of
a metrics fetch, and the exact wording of `sharding.check_batch_size`."""
import math
import os

import jax.numpy as jnp
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
