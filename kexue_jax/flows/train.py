"""Training and evaluation of flows through the shared trainer: loss, data-dependent init, evaluation.

Config wiring (experiments/flows/*.py):
    config.loss = 'kexue_jax.flows.train.flow_loss';  config.loss_kwargs = dict(levels=17)
    config.data_init = 'kexue_jax.flows.train.data_init'      # ActNorm init from the first batch
    config.evaluate = 'kexue_jax.flows.train.evaluate'
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.flows.bijector import data_dependent_init
from kexue_jax.flows.likelihood import bits_per_dim, check_levels, dequantize

__all__ = ["flow_loss", "data_init", "evaluate", "EVAL_DEQUANT_SEED", "SAMPLE_TEMPERATURES"]

# The test split is dequantised with this fixed seed (independent of the evaluation key), so every run and
# checkpoint is scored on the same points.
EVAL_DEQUANT_SEED = 0
SAMPLE_TEMPERATURES = (0.5, 0.7, 1.0)


def _centred(images: jax.Array, *, key: jax.Array, levels: int) -> jax.Array:
    """Dequantised images shifted to [−½, ½) (unit Jacobian: bits/dim unchanged)."""
    return dequantize(images, key=key, levels=levels) - 0.5


def flow_loss(model: Any, batch: dict, *, key: jax.Array, levels: int) -> tuple[jax.Array, dict]:
    """Mean negative log-likelihood in bits/dim of uniformly dequantised integer images.

    loss = mean_b [(−log p(y_b − ½) + D·ln levels)/(D·ln 2)],  y = (x + u)/levels, u ~ U[0, 1).

    Args:
      model: a flow model with `log_prob` and `event_shape` (NICE, RealNVP, Glow).
      batch: {'image': integer array [b, *event_shape]}.
      key: the step's key (dequantisation noise).
      levels: grey levels of the data (17 for digits, 256 for 8-bit images); must match `model.levels`.
    Returns:
      (loss, {'bpd', 'nll_nats'}): nll_nats is −log p(y) per image, y in [0, 1)^D.
    """
    levels = check_levels(levels)
    model_levels = getattr(model, "levels", levels)
    if model_levels != levels:
        raise ValueError(f"`levels` must equal the model's levels ({model_levels}); got {levels}")
    images = batch["image"]
    num_dims = int(np.prod(images.shape[1:]))
    log_p = model.log_prob(_centred(images, key=key, levels=levels))
    bpd = jnp.mean(bits_per_dim(log_p, num_dims, levels))
    return bpd, {"bpd": bpd, "nll_nats": -jnp.mean(log_p)}


def data_init(model: Any, batch: dict, *, key: jax.Array) -> None:
    """The shared trainer's `data_init` hook: one forward pass of the dequantised first batch under
    `data_dependent_init()`, which sets every ActNorm to standardise its input on that batch (openai/glow)."""
    with data_dependent_init():
        model.forward_and_log_det(_centred(batch["image"], key=key, levels=model.levels))


def _check_positive_int(config: Any, name: str, default: int) -> int:
    value = config.get(name, default) if config is not None else default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
    return int(value)


def _pad_to_chunks(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """`images` zero-padded to a whole number of `batch_size` chunks (one compiled shape), and that number."""
    num_chunks = -(-images.shape[0] // batch_size)
    padded = np.zeros((num_chunks * batch_size,) + images.shape[1:], images.dtype)
    padded[:images.shape[0]] = images
    return padded, num_chunks


def evaluate(model: Any, dataset: Any, *, key: jax.Array, config: Any, workdir: str | None) -> dict[str, float]:
    """Test bits/dim, the closed-form baselines on the same split, and temperature sample grids.

    The test split is dequantised `eval_dequant_samples` times (default 4) with keys derived from the fixed
    EVAL_DEQUANT_SEED; bits/dim is averaged over images and draws. When `config.dataset` is set, the
    uniform, diagonal-Gaussian and full-covariance-Gaussian baselines (kexue_jax.data.baselines, fitted on
    the train split of the same dataset, closed-form expectation over the noise) are computed in the same
    run. Sample grids `samples_T0.5.png`, `samples_T0.7.png`, `samples_T1.0.png` (64 samples each, from
    `key`) go to `workdir`.

    Returns:
      {'test/bpd', 'test/nll_nats', 'test/bpd_median' and 'test/bpd_max' (over images, each averaged over
       the draws), 'test/baseline_uniform_bpd', 'test/baseline_diagonal_gaussian_bpd',
       'test/baseline_full_gaussian_bpd'} (baselines only when config.dataset is set).
    """
    images = np.asarray(dataset.arrays["image"])
    levels = check_levels(dataset.levels)
    if tuple(images.shape[1:]) != tuple(model.event_shape):
        raise ValueError(f"`dataset.arrays['image']` must be [N, *{tuple(model.event_shape)}]; got {images.shape}")
    draws = _check_positive_int(config, "eval_dequant_samples", 4)
    batch_size = _check_positive_int(config, "eval_batch_size", 500)
    n, num_dims = images.shape[0], int(np.prod(images.shape[1:]))
    padded, num_chunks = _pad_to_chunks(images, batch_size)
    graphdef, state = nnx.split(model)

    @jax.jit
    def chunk_log_prob(state, chunk, k):
        m = nnx.merge(graphdef, state)
        return m.log_prob(_centred(chunk, key=k, levels=levels))

    base = jax.random.key(EVAL_DEQUANT_SEED)
    log_p = np.stack([
        np.concatenate([np.asarray(chunk_log_prob(state, padded[i * batch_size:(i + 1) * batch_size],
                                                  jax.random.fold_in(jax.random.fold_in(base, d), i)), np.float64)
                        for i in range(num_chunks)])[:n] for d in range(draws)])  # [draws, n]
    per_image = np.mean(bits_per_dim(log_p, num_dims, levels), axis=0)  # [n], averaged over the draws
    results = {"test/bpd": float(np.mean(per_image)), "test/nll_nats": float(-np.mean(log_p)),
               # a mean over images can be dominated by one image the model finds absurdly unlikely
               "test/bpd_median": float(np.median(per_image)), "test/bpd_max": float(np.max(per_image))}
    if not np.isfinite(results["test/bpd"]):
        results["test/bpd"] = float("nan")

    dataset_name = config.get("dataset") if config is not None else None
    if dataset_name:
        from kexue_jax.data import baselines, load

        train = load(dataset_name, "train", data_dir=config.get("data_dir"))
        results["test/baseline_uniform_bpd"] = baselines.gaussian_baseline_bpd(train, dataset, kind="uniform")
        results["test/baseline_diagonal_gaussian_bpd"] = baselines.gaussian_baseline_bpd(train, dataset,
                                                                                         kind="diagonal")
        results["test/baseline_full_gaussian_bpd"] = baselines.gaussian_baseline_bpd(train, dataset, kind="full")

    if workdir is not None:
        from kexue_jax.core.metrics import save_image_grid

        os.makedirs(workdir, exist_ok=True)

        @functools.partial(jax.jit, static_argnums=2)
        def draw(state, k, t):
            return nnx.merge(graphdef, state).sample(64, key=k, temperature=t)

        for i, t in enumerate(SAMPLE_TEMPERATURES):
            samples = np.clip(np.asarray(draw(state, jax.random.fold_in(key, i), t)) + 0.5, 0.0, 1.0)
            save_image_grid(samples, os.path.join(workdir, f"samples_T{t}.png"), ncol=8,
                            title=f"{type(model).__name__} samples, temperature {t}")
    return results


def check_config(config: Any) -> None:
    """The keys only `evaluate` reads (same defaults), checked by the shared trainer before training."""
    from kexue_jax.core.config import check_int

    check_int(config.get("eval_dequant_samples", 4), "eval_dequant_samples")
    check_int(config.get("eval_batch_size", 500), "eval_batch_size")


evaluate.check_config = check_config
