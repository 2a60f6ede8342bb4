"""DeepNorm: x_{l+1} = LN(α x_l + G_l(x_l)) with the FFN, value and output weights scaled by β at init.

Coefficients (DeepNet paper, Table 1; N encoder blocks, M decoder blocks):

    encoder-only            α = (2N)^{1/4}              β = (8N)^{−1/4}
    decoder-only            α = (2M)^{1/4}              β = (8M)^{−1/4}
    encoder-decoder, enc.   α = 0.81 (N⁴M)^{1/16}       β = 0.87 (N⁴M)^{−1/16}
    encoder-decoder, dec.   α = (3M)^{1/4}              β = (12M)^{−1/4}

Su's optimiser-aware reading (archives/8978, 8994): the residual branch's parameter gradients must be
O(1/√N) for the per-step loss change not to grow with depth ("update explosion"). With 2N sublayers,
β/α must be ∝ 1/√(2N) under SGD (the paper takes the looser 1/√(4N), which is the table above); under
Adam the update is ≈ sign(g), so α = (2N)^{1/2}, β = (2N)^{−1/2}; under LAMB (relative updates)
α = 1, β = (2N)^{−1/2}.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.attention.transformer import layer_norm

__all__ = ["DeepNormCoefficients", "deepnorm_coefficients", "deepnorm_residual", "deepnorm_scale_params",
           "deepnorm_init", "DEEPNORM_SCALED", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "lamb")
# Submodule names (transformer.py) whose kernels DeepNorm scales by β; query and key are left alone.
DEEPNORM_SCALED = ("value", "out", "ffn_in", "ffn_out")


class DeepNormCoefficients(NamedTuple):
    alpha: float  # the identity (residual) up-weighting α
    beta: float  # the init scale β of the FFN, value and output projections


def deepnorm_coefficients(*, num_encoder_layers: int = 0, num_decoder_layers: int = 0,
                          optimizer: str = "sgd", stack: str | None = None) -> DeepNormCoefficients:
    """(α, β) for an encoder-only, decoder-only or encoder-decoder stack (see the module docstring).

    Args:
      num_encoder_layers: N (0 = no encoder).
      num_decoder_layers: M (0 = no decoder).
      optimizer: 'sgd' (the paper's table), 'adam' or 'lamb' (Su's versions; single stacks only).
      stack: for encoder-decoder models, 'encoder' or 'decoder'; must be None otherwise.

    Returns:
      DeepNormCoefficients(alpha, beta).

    References:
      https://kexue.fm/archives/8994; https://kexue.fm/archives/8978;
      Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", arXiv:2203.00555.
    """
    for name, value in (("num_encoder_layers", num_encoder_layers), ("num_decoder_layers", num_decoder_layers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative int; got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}; got {optimizer!r}")
    n, m = int(num_encoder_layers), int(num_decoder_layers)
    if n == 0 and m == 0:
        raise ValueError("`num_encoder_layers` or `num_decoder_layers` must be positive; got 0 and 0")
    if n > 0 and m > 0:
        if stack not in ("encoder", "decoder"):
            raise ValueError(f"`stack` must be 'encoder' or 'decoder' for an encoder-decoder model; got {stack!r}")
        if optimizer != "sgd":
            raise ValueError(f"`optimizer` must be 'sgd' for an encoder-decoder model (the articles derive "
                             f"adam/lamb only for a single stack); got {optimizer!r}")
        if stack == "encoder":
            return DeepNormCoefficients(0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16))
        return DeepNormCoefficients((3 * m) ** 0.25, (12 * m) ** -0.25)
    if stack is not None:
        raise ValueError(f"`stack` must be None for a single stack; got {stack!r}")
    layers = n or m
    if optimizer == "sgd":
        return DeepNormCoefficients((2 * layers) ** 0.25, (8 * layers) ** -0.25)
    if optimizer == "adam":
        return DeepNormCoefficients((2 * layers) ** 0.5, (2 * layers) ** -0.5)
    return DeepNormCoefficients(1.0, (2 * layers) ** -0.5)


def deepnorm_residual(x: jax.Array, branch_out: jax.Array, *, alpha: float,
                      norm: Callable[[jax.Array], jax.Array] = layer_norm) -> jax.Array:
    """LN(α x + G(x)) given x and G(x) (both [..., d])."""
    if x.shape != branch_out.shape:
        raise ValueError(f"`branch_out` must have the shape of x {x.shape}; got {branch_out.shape}")
    return norm(alpha * x + branch_out)


def _path_names(path) -> list[str]:
    # Dict and sequence keys only: an nnx.Variable adds a trailing attribute key `.value`, which must not
    # be mistaken for the `value` projection.
    names = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            names.append(str(p.key))
        elif isinstance(p, jax.tree_util.SequenceKey):
            names.append(str(p.idx))
    return names


def deepnorm_scale_params(params, beta: float, *, scaled: Sequence[str] = DEEPNORM_SCALED):
    """Multiplies by β every 'kernel' leaf whose path contains one of `scaled` (pure; any pytree).

    Biases, norms, embeddings and the query/key kernels are returned unchanged.
    """
    if not beta > 0:
        raise ValueError(f"`beta` must be > 0; got {beta!r}")

    def scale(path, leaf):
        names = _path_names(path)
        # the kernel's owner is the key just before 'kernel' (e.g. ['attention', 'value', 'kernel'])
        hit = len(names) >= 2 and names[-1] == "kernel" and names[-2] in scaled
        return leaf * jnp.asarray(beta, leaf.dtype) if hit else leaf

    return jax.tree_util.tree_map_with_path(scale, params)


def deepnorm_init(model: nnx.Module, beta: float, *, scaled: Sequence[str] = DEEPNORM_SCALED) -> nnx.Module:
    """Scales the FFN, value and output kernels of `model` by β in place (torchscale: normal init, then
    divide by 1/β); returns the model."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, deepnorm_scale_params(state, beta, scaled=scaled))
    return model
