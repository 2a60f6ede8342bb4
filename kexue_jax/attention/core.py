"""One scaled dot-product attention op that accepts the boolean masks built in `masks.py`.

    o_i = Σ_j softmax_j(q_i·k_j / √k + bias_ij, masked to mask_ij) v_j

`implementation` picks the backend: `jax.nn.dot_product_attention` ('xla', or 'cudnn' on a GPU) or a
plain einsum path ('einsum'), which also allows a value head size different from the key head size.
Logits and the softmax are float32 for float32/bfloat16/float16 inputs (float64 stays float64: such
inputs take the einsum path, since `jax.nn`'s xla softmax is always float32). Masked logits are replaced by a large
finite negative number (as `jax.nn` does, not −inf), so a fully masked row is finite: it becomes the
uniform average of the values, on every path alike.

Masks and biases may have rank 2 ([t, s], shared by the batch), 3 ([b, t, s], one per example) or
4 ([b, h, t, s]); every axis is either full size or 1.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["attention", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = (None, "xla", "cudnn", "einsum")


def _as_4d(x: jax.Array | None, name: str, b: int, h: int, t: int, s: int) -> jax.Array | None:
    """Validates a mask/bias of rank 2, 3 or 4 and returns it as [b|1, h|1, t|1, s|1]."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.ndim == 2:
        x = x[None, None]  # [1, 1, t, s]
    elif x.ndim == 3:
        x = x[:, None]  # [b, 1, t, s]
    elif x.ndim != 4:
        raise ValueError(f"`{name}` must have rank 2 [t, s], 3 [b, t, s] or 4 [b, h, t, s]; got shape {x.shape}")
    for size, full in zip(x.shape, (b, h, t, s)):
        if size not in (1, full):
            raise ValueError(f"`{name}` must be broadcastable to [b, h, t, s] = {(b, h, t, s)}; got shape "
                             f"{x.shape} (as rank 4)")
    return x


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
              bias: jax.Array | None = None, implementation: str | None = None,
              scale: float | None = None) -> jax.Array:
    """Multi-head softmax attention.

    o_{b,i,h} = Σ_j p_{b,h,i,j} v_{b,j,h},  p = softmax_j(scale · q_{b,i,h}·k_{b,j,h} + bias), where masked
    logits (mask False) are replaced by −0.7·float32_max before the softmax.

    Args:
      q: queries [b, t, h, k].
      k: keys [b, s, h, k].
      v: values [b, s, h, e] (e = k except on the 'einsum' path, which allows any e).
      mask: boolean, True = may attend; shape [t, s], [b, t, s] or [b, h, t, s] (axes may be 1).
      bias: additive logits bias, same shape rules as `mask`.
      implementation: None (cudnn on a GPU when it accepts the inputs, else xla), 'xla', 'cudnn'
        (falls back to xla with a warning when cudnn rejects the inputs, e.g. float32 or on CPU) or
        'einsum'.
      scale: logits scale; default 1/√k.

    Returns:
      [b, t, h, e] in the dtype of `v`.

    References:
      https://kexue.fm/archives/6810 (masks), https://kexue.fm/archives/6933 (attention masks);
      Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}; got {implementation!r}")
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"`{name}` must have rank 4 [b, t, h, k]; got shape {x.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"`k` must have the head dim of `q` ({q.shape[-1]}); got shape {k.shape}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"`v` must share [b, s, h] = {k.shape[:3]} with `k`; got shape {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"`k` must share batch and heads with `q` {(q.shape[0], q.shape[2])}; got shape {k.shape}")
    b, t, h, _ = q.shape
    s = k.shape[1]
    if mask is not None and jnp.asarray(mask).dtype != jnp.bool_:
        raise ValueError(f"`mask` must be a boolean array; got dtype {jnp.asarray(mask).dtype}")
    mask4 = _as_4d(mask, "mask", b, h, t, s)
    bias4 = _as_4d(bias, "bias", b, h, t, s)
    if scale is None:
        scale = 1.0 / float(np.sqrt(q.shape[-1]))
    same_kv = k.shape == v.shape and q.dtype == k.dtype == v.dtype

    if implementation is None:
        implementation = "cudnn" if (jax.default_backend() == "gpu" and same_kv) else (
            "xla" if same_kv else "einsum")
        quiet = True
    else:
        quiet = False
    if implementation in ("xla", "cudnn") and not same_kv:
        raise ValueError(f"`v` must have the shape and dtype of `k` for implementation={implementation!r} "
                         f"(use 'einsum'); got {v.shape} {v.dtype} vs {k.shape} {k.dtype}")
    if implementation == "einsum":
        return _einsum_attention(q, k, v, mask4, bias4, scale)
    if implementation == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, bias=bias4, mask=mask4, scale=scale,
                                                implementation="cudnn")
        except Exception as err:  # cudnn rejects dtypes/shapes/platforms at trace time; xla takes all.
            if not quiet:
                warnings.warn(f"cudnn attention unavailable ({type(err).__name__}: {err}); using xla",
                              RuntimeWarning, stacklevel=2)
    if q.dtype == jnp.float64:
        # jax.nn's xla path always takes the softmax in float32; the einsum path keeps float64 (module doc).
        return _einsum_attention(q, k, v, mask4, bias4, scale)
    return jax.nn.dot_product_attention(q, k, v, bias=bias4, mask=mask4, scale=scale, implementation="xla")


def _einsum_attention(q, k, v, mask, bias, scale):
    dtype = jnp.promote_types(q.dtype, jnp.float32)  # float32 softmax for bf16/f16, float64 kept
    logits = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=dtype)  # [b, h, t, s]
    logits = logits * jnp.asarray(scale, dtype)
    if bias is not None:
        logits = logits + bias.astype(dtype)
    if mask is not None:
        # Finite, like jax.nn: a fully masked row gets equal logits (a uniform average), never NaN.
        logits = jnp.where(mask, logits, jnp.asarray(-0.7 * np.finfo(np.float32).max, dtype))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshe->bthe", probs, v)  # [b, t, h, e]
