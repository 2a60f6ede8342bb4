"""Importable test techniques for the trainer tests (configs name them by import path)."""
import jax
import jax.numpy as jnp
from flax import nnx

from kexue_jax.nn import mlp


class Counter(nnx.Variable):
    """Non-trainable state: how many times the model has been called in training."""


class CountingClassifier(mlp.ImageClassifier):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = Counter(jnp.zeros((), jnp.int32))


def nan_at_step_loss(model, batch, *, key, nan_step=13):
    """classifier_loss, but NaN from the `nan_step`-th update on (1-based), via the carried counter."""
    loss, aux = mlp.classifier_loss(model, batch, key=key)
    calls = model.calls[...]
    model.calls[...] = calls + 1
    return loss + jnp.where(calls + 1 >= nan_step, jnp.nan, 0.0), aux


def mean_bias_data_init(model, batch, *, key):
    """Sets the output bias to minus the mean first-layer logit on the batch (a toy data-dependent init)."""
    del key
    logits = model(batch["image"])
    model.mlp.layers[-1].bias[...] = model.mlp.layers[-1].bias[...] - logits.mean(0)
