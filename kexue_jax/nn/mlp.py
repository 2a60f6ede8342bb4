"""A plain MLP and the in-repo image classifier built on it.

The classifier serves two purposes: it is the smallest complete technique for the shared trainer (its
tests and the trainer-overhead benchmark use it), and later families use its penultimate features for
the "FD-digits" Fréchet distance (a stand-in for Inception features, which cannot be downloaded here).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = ["MLP", "ImageClassifier", "classifier_loss", "classifier_evaluate"]


class MLP(nnx.Module):
    """x -> Linear -> act -> ... -> Linear (no activation on the output)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
                 activation: str = "relu", rngs: nnx.Rngs):
        if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"`in_features`, `hidden` and `out_features` must be positive; got "
                             f"{in_features}, {tuple(hidden)}, {out_features}")
        if activation not in ("relu", "tanh", "silu", "gelu"):
            raise ValueError(f"`activation` must be one of 'relu', 'tanh', 'silu', 'gelu'; got {activation!r}")
        sizes = [in_features, *hidden, out_features]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation = activation

    def features(self, x: jax.Array) -> jax.Array:
        """Activations of the last hidden layer, [b, hidden[-1]]."""
        act = getattr(jax.nn, self.activation)
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layers[-1](self.features(x)) if len(self.layers) > 1 else self.layers[0](x)


class ImageClassifier(nnx.Module):
    """Flattens uint8 images of `levels` grey levels to [0, 1] and classifies them with an MLP."""

    def __init__(self, *, image_shape: Sequence[int], hidden: Sequence[int], num_classes: int,
                 levels: int = 256, rngs: nnx.Rngs):
        self.levels = int(levels)
        self.mlp = MLP(int(np.prod(image_shape)), hidden, num_classes, rngs=rngs)

    def preprocess(self, images: jax.Array) -> jax.Array:
        x = images.reshape(images.shape[0], -1).astype(jnp.float32)  # [b, h*w*c]
        return x / (self.levels - 1)

    def features(self, images: jax.Array) -> jax.Array:
        return self.mlp.features(self.preprocess(images))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.mlp(self.preprocess(images))


def classifier_loss(model: ImageClassifier, batch: dict[str, jax.Array], *, key: jax.Array
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean softmax cross-entropy; aux: accuracy. `key` is unused (deterministic model)."""
    del key
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"accuracy": accuracy}


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, images):
    # Module level, graphdef static: compiled once per model structure and split shape (a jit built inside
    # classifier_evaluate was traced and compiled anew on every evaluation).
    return nnx.merge(graphdef, state)(images)


def classifier_evaluate(model: ImageClassifier, dataset: Any, *, key: jax.Array, config: Any,
                        workdir: str | None) -> dict[str, float]:
    """Test cross-entropy and accuracy on the whole split."""
    del key, config, workdir
    logits = _logits(*nnx.split(model), jnp.asarray(dataset.arrays["image"]))
    labels = jnp.asarray(dataset.arrays["label"])
    return {"test/loss": float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()),
            "test/accuracy": float(jnp.mean(jnp.argmax(logits, -1) == labels))}
