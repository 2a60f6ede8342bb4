"""Transformer building blocks: parameter-free norms, multi-head attention with RoPE, a pre/post-norm
block with the article's α-warmup residual and DeepNorm's identity scale, and the gated attention unit.

Post-norm block (RoFormerV2, DeepNorm):  x ← Norm(a·x + α·F(x))   for F = attention, then F = FFN
Pre-norm block:                          x ← a·x + α·F(Norm(x))
a is DeepNorm's identity scale (1 for a plain block); α is the residual-branch weight that Su's
RoFormerV2 article warms up linearly from 0 to 1 during post-norm training from scratch (passed at call
time, so a schedule can drive it; at α = 0 a post-norm block is Norm(Norm(x)) = Norm(x)).

Submodule names are fixed because DeepNorm's init targets them: attention.{query, key, value, out},
ffn.{ffn_in, ffn_out}.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.attention.core import attention
from kexue_jax.attention.masks import combine_masks
from kexue_jax.attention.rope import CONVENTIONS, apply_rope

__all__ = ["rms_norm", "layer_norm", "MultiHeadAttention", "FeedForward", "TransformerBlock",
           "GatedAttentionUnit", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "gelu", "silu", "swish")
Initializer = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]


def rms_norm(x: jax.Array, *, eps: float = 1e-7) -> jax.Array:
    """x / √(mean(x²) + ε) over the last axis, no γ and no β (bert4keras LayerNormalization with
    zero_mean=False, scale=False, offset=False; ε = Keras' epsilon 1e-7).

    References:
      https://kexue.fm/archives/8998
    """
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def layer_norm(x: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """(x − mean(x)) / √(var(x) + ε) over the last axis, without parameters (DeepNorm's LN at init)."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    return (centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu, "swish": jax.nn.silu}[name]


def _check(cond: bool, name: str, expected: str, value) -> None:
    if not cond:
        raise ValueError(f"`{name}` must be {expected}; got {value!r}")


def _is_pos_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1


class MultiHeadAttention(nnx.Module):
    """Self-attention with q/k/v/out projections and optional RoPE on q and k (not v).

    Args:
      d_model: model width d.
      num_heads: h; head dim k = d / h unless `head_dim` is given.
      use_bias: biases on the four projections (RoFormerV2: False).
      rope: None or a RoPE convention ('interleaved' = RoFormer).
      implementation: passed to `attention`.
    """

    def __init__(self, d_model: int, num_heads: int, *, head_dim: int | None = None, use_bias: bool = False,
                 rope: str | None = "interleaved", implementation: str | None = None,
                 kernel_init: Initializer | None = None, rngs: nnx.Rngs):
        _check(_is_pos_int(d_model), "d_model", "a positive int", d_model)
        _check(_is_pos_int(num_heads), "num_heads", "a positive int", num_heads)
        if head_dim is None:
            _check(d_model % num_heads == 0, "num_heads", f"a divisor of d_model={d_model}", num_heads)
            head_dim = d_model // num_heads
        _check(_is_pos_int(head_dim), "head_dim", "a positive int", head_dim)
        _check(rope is None or rope in CONVENTIONS, "rope", f"None or one of {CONVENTIONS}", rope)
        _check(rope is None or head_dim % 2 == 0, "head_dim", "even when rope is used", head_dim)
        kw = dict(use_bias=use_bias, rngs=rngs)
        if kernel_init is not None:
            kw["kernel_init"] = kernel_init
        inner = num_heads * head_dim
        self.query = nnx.Linear(d_model, inner, **kw)
        self.key = nnx.Linear(d_model, inner, **kw)
        self.value = nnx.Linear(d_model, inner, **kw)
        self.out = nnx.Linear(inner, d_model, **kw)
        self.num_heads, self.head_dim, self.rope, self.implementation = num_heads, head_dim, rope, implementation

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, positions: jax.Array | None = None
                 ) -> jax.Array:
        """x [b, t, d]; mask as in `attention`; positions [t] or [b, t] (default 0 … t − 1). Returns [b, t, d]."""
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)  # [b, t, h, k]
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if self.rope is not None:
            positions = jnp.arange(t) if positions is None else positions
            q = apply_rope(q, positions, convention=self.rope)
            k = apply_rope(k, positions, convention=self.rope)
        o = attention(q, k, v, mask=mask, implementation=self.implementation)  # [b, t, h, k]
        return self.out(o.reshape(b, t, self.num_heads * self.head_dim))  # [b, t, d]


class FeedForward(nnx.Module):
    """ffn_out(act(ffn_in(x))), d -> ffn_dim -> d."""

    def __init__(self, d_model: int, ffn_dim: int, *, activation: str = "relu", use_bias: bool = False,
                 kernel_init: Initializer | None = None, rngs: nnx.Rngs):
        _check(_is_pos_int(ffn_dim), "ffn_dim", "a positive int", ffn_dim)
        _check(activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}", activation)
        kw = dict(use_bias=use_bias, rngs=rngs)
        if kernel_init is not None:
            kw["kernel_init"] = kernel_init
        self.ffn_in = nnx.Linear(d_model, ffn_dim, **kw)
        self.ffn_out = nnx.Linear(ffn_dim, d_model, **kw)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.ffn_out(_activation(self.activation)(self.ffn_in(x)))


class TransformerBlock(nnx.Module):
    """Attention + FFN sublayers, each post-norm Norm(a·x + α·F(x)) or pre-norm a·x + α·F(Norm(x)).

    Args:
      d_model, num_heads, ffn_dim: sizes.
      norm: 'rms' (x/√(mean x² + ε)) or 'layer' (zero mean, unit variance).
      norm_params: learn a scale (and, for 'layer', an offset); RoFormerV2: False.
      use_bias: biases in all projections; RoFormerV2: False.
      placement: 'post' (RoFormerV2, DeepNorm) or 'pre'.
      identity_scale: a, DeepNorm's α (1 = plain residual).
      activation: the FFN nonlinearity (RoFormerV2: relu).
      rope: None or a RoPE convention for q and k.
      dropout_rate: dropout on each branch output before the residual add.
      kernel_init: initializer for every projection kernel (default nnx.Linear's).
      norm_eps: ε of the norm.

    References:
      https://kexue.fm/archives/8998 (α warmup, RoFormerV2); https://kexue.fm/archives/8994 and
      https://kexue.fm/archives/8978 (DeepNorm); Vaswani et al. 2017, arXiv:1706.03762.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, *, norm: str = "rms",
                 norm_params: bool = False, use_bias: bool = False, placement: str = "post",
                 identity_scale: float = 1.0, activation: str = "relu", rope: str | None = "interleaved",
                 dropout_rate: float = 0.0, kernel_init: Initializer | None = None, norm_eps: float | None = None,
                 implementation: str | None = None, rngs: nnx.Rngs):
        _check(norm in ("rms", "layer"), "norm", "one of ('rms', 'layer')", norm)
        _check(placement in ("post", "pre"), "placement", "one of ('post', 'pre')", placement)
        _check(0.0 <= dropout_rate < 1.0, "dropout_rate", "in [0, 1)", dropout_rate)
        _check(identity_scale > 0, "identity_scale", "> 0", identity_scale)
        self.attention = MultiHeadAttention(d_model, num_heads, use_bias=use_bias, rope=rope,
                                            implementation=implementation, kernel_init=kernel_init, rngs=rngs)
        self.ffn = FeedForward(d_model, ffn_dim, activation=activation, use_bias=use_bias,
                               kernel_init=kernel_init, rngs=rngs)
        eps = norm_eps if norm_eps is not None else (1e-7 if norm == "rms" else 1e-5)
        if norm_params:
            make = (lambda: nnx.RMSNorm(d_model, epsilon=eps, rngs=rngs)) if norm == "rms" else (
                lambda: nnx.LayerNorm(d_model, epsilon=eps, rngs=rngs))
            self.norm1, self.norm2 = make(), make()
        else:
            self.norm1 = self.norm2 = None
        self.norm_kind, self.norm_eps = norm, float(eps)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None
        self.placement, self.identity_scale = placement, float(identity_scale)

    def _norm(self, which: int, x: jax.Array) -> jax.Array:
        layer = self.norm1 if which == 1 else self.norm2
        if layer is not None:
            return layer(x)
        return (rms_norm if self.norm_kind == "rms" else layer_norm)(x, eps=self.norm_eps)

    def _drop(self, y: jax.Array, deterministic: bool | None) -> jax.Array:
        return y if self.dropout is None else self.dropout(y, deterministic=deterministic)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, positions: jax.Array | None = None,
                 alpha: float | jax.Array = 1.0, deterministic: bool | None = None) -> jax.Array:
        """x [b, t, d] -> [b, t, d]; `alpha` is the residual-branch weight α (warmup from 0 to 1)."""
        a = self.identity_scale
        sublayers = ((1, lambda h: self.attention(h, mask=mask, positions=positions)), (2, self.ffn))
        for which, branch in sublayers:
            if self.placement == "post":
                x = self._norm(which, a * x + alpha * self._drop(branch(x), deterministic))
            else:
                x = a * x + alpha * self._drop(branch(self._norm(which, x)), deterministic)
        return x


class GatedAttentionUnit(nnx.Module):
    """The gated attention unit (GAU) of FLASH, as in bert4keras `GatedAttentionUnit` (self-attention).

    [u, v, z] = act(x W_i + b_i) with widths (e, e, s); q = z ⊙ γ_q + β_q, k = z ⊙ γ_k + β_k (γ init 1,
    β init 0; RoPE on q and k); a = q kᵀ / √s; A = relu(a)² / l (l = number of valid keys) or softmax(a);
    o = (u ⊙ A v) W_o + b_o.

    Args:
      d_model: d; units: e (2d in the paper); key_size: s (128 in the paper).
      activation: 'swish' (bert4keras default) or another of ACTIVATIONS.
      normalization: 'squared_relu' (default) or 'softmax'.
      use_bias: biases on the dense layers and the β offsets.
      rope: None or a RoPE convention.

    References:
      https://kexue.fm/archives/8934; Hua et al. 2022, "Transformer Quality in Linear Time",
      arXiv:2202.10447.
    """

    def __init__(self, d_model: int, *, units: int, key_size: int, activation: str = "swish",
                 normalization: str = "squared_relu", use_bias: bool = True, rope: str | None = "interleaved",
                 rngs: nnx.Rngs):
        for name, value in (("d_model", d_model), ("units", units), ("key_size", key_size)):
            _check(_is_pos_int(value), name, "a positive int", value)
        _check(activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}", activation)
        _check(normalization in ("squared_relu", "softmax"), "normalization", "one of ('squared_relu', 'softmax')",
               normalization)
        _check(rope is None or rope in CONVENTIONS, "rope", f"None or one of {CONVENTIONS}", rope)
        _check(rope is None or key_size % 2 == 0, "key_size", "even when rope is used", key_size)
        self.i_dense = nnx.Linear(d_model, 2 * units + key_size, use_bias=use_bias, rngs=rngs)
        self.o_dense = nnx.Linear(units, d_model, use_bias=use_bias, rngs=rngs)
        self.q_scale = nnx.Param(jnp.ones((key_size,)))
        self.k_scale = nnx.Param(jnp.ones((key_size,)))
        self.q_offset = nnx.Param(jnp.zeros((key_size,))) if use_bias else None
        self.k_offset = nnx.Param(jnp.zeros((key_size,))) if use_bias else None
        self.units, self.key_size, self.activation = units, key_size, activation
        self.normalization, self.rope = normalization, rope

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, positions: jax.Array | None = None
                 ) -> jax.Array:
        """x [b, t, d]; mask [t, s] or [b, t, s] bool (True = attend); returns [b, t, d]."""
        b, t, _ = x.shape
        e, s = self.units, self.key_size
        h = _activation(self.activation)(self.i_dense(x))  # [b, t, 2e + s]
        u, v, z = h[..., :e], h[..., e:2 * e], h[..., 2 * e:]
        q = z * self.q_scale[...][None, None, :]
        k = z * self.k_scale[...][None, None, :]
        if self.q_offset is not None:
            q = q + self.q_offset[...][None, None, :]
            k = k + self.k_offset[...][None, None, :]
        if self.rope is not None:
            positions = jnp.arange(t) if positions is None else positions
            q = apply_rope(q, positions, convention=self.rope)
            k = apply_rope(k, positions, convention=self.rope)
        logits = jnp.einsum("bts,bus->btu", q, k) / np.sqrt(s)  # [b, t, t]
        full = jnp.ones((1, t, t), dtype=bool)
        m = full if mask is None else combine_masks(full, mask)
        if m.ndim != 3:
            raise ValueError(f"`mask` must have rank 2 [t, t] or 3 [b, t, t]; got shape {jnp.shape(mask)}")
        m = jnp.broadcast_to(m, (b, t, t))
        if self.normalization == "squared_relu":
            count = jnp.sum(m, axis=-1, keepdims=True).astype(logits.dtype)  # [b, t, 1]
            weights = jnp.where(m, jax.nn.relu(logits) ** 2, 0) / jnp.maximum(count, 1)
        else:
            weights = jax.nn.softmax(jnp.where(m, logits, -0.7 * np.finfo(np.float32).max), axis=-1)
        return self.o_dense(u * jnp.einsum("btu,bue->bte", weights, v))  # [b, t, d]
