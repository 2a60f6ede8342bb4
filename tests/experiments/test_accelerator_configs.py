"""The accelerator-scale configs (CIFAR-10) are valid at full size: config checks pass and the model's
forward pass traces on a [2, 32, 32, 3] batch (abstractly: `jax.eval_shape`, nothing runs), so a user with a
GPU and a prepared tfds cifar10 does not discover a shape error after the data pipeline starts."""
import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from experiments import reproduce
from kexue_jax.core import config as config_lib

CIFAR = ["flows/glow_cifar10.py", "flows/realnvp_cifar10.py", "diffusion/ddpm_cifar10.py",
         "diffusion/nfe_table.py:cifar10"]


@pytest.mark.parametrize("rel", CIFAR)
def test_full_size_cifar10_config_validates_and_traces(rel):
    rel, _, arg = rel.partition(":")
    config = reproduce.load_config(os.path.join(reproduce.REPO, "experiments", rel), arg or None)
    assert config.dataset.startswith("tfds:cifar10")
    resolved = config_lib.validate_train_config(config, num_devices=1)
    kwargs = dict(config.model_kwargs)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.uint8)

    def loss(x):
        model = resolved["model"](rngs=nnx.Rngs(0), **kwargs)
        value, _ = resolved["loss"](model, {"image": x}, key=jax.random.key(0), **dict(config.loss_kwargs))
        return value

    out = jax.eval_shape(loss, x)
    assert out.shape == () and out.dtype == jnp.float32
