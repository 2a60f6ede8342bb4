"""Masks as boolean arrays, masked reductions and a masked bidirectional RNN (the masks article).

Convention (spec §0.4): True = real token / may attend. Padding uses token id 0, as in bert4keras.

Su's rules from "让Keras更酷一些！"：层中层与mask:
  mean      sum(x ⊗ m) / sum(m)           — independent of the padding length;
  max       max(x − (1 − m)·1e10)          — here a `where`, so all-negative rows are not trapped;
  softmax   softmax(x − (1 − m)·1e10)      — padding gets exactly zero probability;
  BiRNN     reverse only the valid prefix, run forward, reverse the prefix back, so that the backward
            direction never starts on padding.

Attention masks: `causal_mask` (j ≤ i), `unilm_mask` (c_j ≤ c_i with c = cumsum(segment ids), from
bert4keras `UniLM_Mask`), `padding_mask` and `combine_masks`. Padding masks are [b, t]; to mask keys in
`attention`, pass `padding_mask(ids)[:, None, :]` ([b, 1, s]) to `combine_masks`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "padding_mask", "causal_mask", "unilm_mask", "combine_masks", "masked_mean", "masked_max",
    "masked_softmax", "reverse_valid_prefix", "masked_bidirectional_rnn",
]


def padding_mask(lengths_or_ids: jax.Array, *, length: int | None = None, pad_id: int = 0) -> jax.Array:
    """Valid-token mask.

    Args:
      lengths_or_ids: either lengths [b] (then `length` is required) or token ids [b, t] (then a token
        is valid iff its id differs from `pad_id`).
      length: t, the padded length, only with lengths.
      pad_id: the padding id, only with token ids (bert4keras reserves 0).

    Returns:
      [b, t] bool; with lengths, row r is True exactly on positions < lengths[r].

    References:
      https://kexue.fm/archives/6810
    """
    x = jnp.asarray(lengths_or_ids)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"`lengths_or_ids` must be an integer array; got dtype {x.dtype}")
    if x.ndim == 1:
        if length is None or int(length) < 1:
            raise ValueError(f"`length` must be a positive int when `lengths_or_ids` holds lengths [b]; got {length}")
        return jnp.arange(int(length))[None, :] < x[:, None]  # [b, t]
    if x.ndim == 2:
        if length is not None:
            raise ValueError(f"`length` must be None when `lengths_or_ids` holds token ids [b, t]; got {length}")
        return x != pad_id
    raise ValueError(f"`lengths_or_ids` must be lengths [b] or token ids [b, t]; got shape {x.shape}")


def causal_mask(t: int) -> jax.Array:
    """The language-model mask: query i may attend key j iff j ≤ i. Returns [t, t] bool.

    References:
      https://kexue.fm/archives/6933 (bert4keras `LM_Mask`)
    """
    if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or t < 1:
        raise ValueError(f"`t` must be a positive int; got {t!r}")
    return jnp.tril(jnp.ones((int(t), int(t)), dtype=bool))


def unilm_mask(segment_ids: jax.Array) -> jax.Array:
    """The UNILM seq2seq mask: query i may attend key j iff c_j ≤ c_i, with c = cumsum(s).

    With s = 0 on the source and 1 on the target this is the block matrix
    [[bidirectional, 0], [all ones, lower-triangular]]: the source sees only the source, the k-th
    target token sees the source and targets 1..k. Padding after the target keeps the last c, so it
    must also be removed with a key padding mask.

    Args:
      segment_ids: [..., t] integer array of 0/1 segment ids.

    Returns:
      [..., t, t] bool.

    References:
      https://kexue.fm/archives/6933; https://kexue.fm/archives/7115;
      Dong et al. 2019, "Unified Language Model Pre-training", arXiv:1905.03197.
    """
    s = jnp.asarray(segment_ids)
    if s.ndim < 1 or not jnp.issubdtype(s.dtype, jnp.integer):
        raise ValueError(f"`segment_ids` must be an integer array [..., t]; got shape {s.shape} dtype {s.dtype}")
    c = jnp.cumsum(s, axis=-1)
    return c[..., None, :] <= c[..., :, None]  # [..., t(query i), t(key j)]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of attention masks, with the ranks of `attention`: [t, s], [b, t, s] or [b, h, t, s].

    A rank-2 mask gains leading batch (and head) axes; a rank-3 mask gains a head axis at position 1.
    Axes of size 1 broadcast. None entries are skipped; returns None when all are None.

    References:
      https://kexue.fm/archives/6933
    """
    present = [jnp.asarray(m) for m in masks if m is not None]
    if not present:
        return None
    for i, m in enumerate(present):
        if m.dtype != jnp.bool_:
            raise ValueError(f"`masks[{i}]` must be a boolean array; got dtype {m.dtype}")
        if m.ndim not in (2, 3, 4):
            raise ValueError(f"`masks[{i}]` must have rank 2 [t, s], 3 [b, t, s] or 4 [b, h, t, s]; got shape {m.shape}")
    rank = max(m.ndim for m in present)

    def lift(m):
        if m.ndim == 2:
            m = m[None]  # [1, t, s]
        if m.ndim == 3 and rank == 4:
            m = m[:, None]  # [b, 1, t, s]
        return m

    lifted = [lift(m) for m in present]
    try:
        np.broadcast_shapes(*[m.shape for m in lifted])
    except ValueError:
        raise ValueError(f"`masks` must be broadcastable against each other; got shapes "
                         f"{[m.shape for m in present]}") from None
    out = lifted[0]
    for m in lifted[1:]:
        out = jnp.logical_and(out, m)
    return out


def _expand_mask(x: jax.Array, mask: jax.Array, axis: int) -> tuple[jax.Array, int]:
    """Checks that `mask` covers the leading axes of `x` and appends trailing singleton axes."""
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be a boolean array; got dtype {mask.dtype}")
    if mask.ndim < 1 or mask.ndim > x.ndim:
        raise ValueError(f"`mask` must have rank 1..{x.ndim} (the leading axes of x {x.shape}); got shape {mask.shape}")
    for size, full in zip(mask.shape, x.shape):
        if size not in (1, full):
            raise ValueError(f"`mask` must match the leading axes of x {x.shape}; got shape {mask.shape}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"`axis` must be in [-{x.ndim}, {x.ndim}); got {axis}")
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), axis % x.ndim


def masked_mean(x: jax.Array, mask: jax.Array, *, axis: int = 1, keepdims: bool = False) -> jax.Array:
    """sum(x ⊗ m) / sum(m) along `axis`; 0 where a row has no valid entry.

    Args:
      x: e.g. [b, t, d].
      mask: bool over the leading axes of x, e.g. [b, t]; trailing axes broadcast.
      axis: the reduced axis (the sequence axis by default).

    References:
      https://kexue.fm/archives/6810
    """
    x = jnp.asarray(x)
    m, axis = _expand_mask(x, mask, axis)
    total = jnp.sum(jnp.where(m, x, 0), axis=axis, keepdims=keepdims)
    count = jnp.sum(jnp.broadcast_to(m, x.shape), axis=axis, keepdims=keepdims).astype(total.dtype)
    return total / jnp.maximum(count, 1)


def masked_max(x: jax.Array, mask: jax.Array, *, axis: int = 1, keepdims: bool = False) -> jax.Array:
    """max over valid entries along `axis`; 0 where a row has no valid entry.

    Uses a `where` instead of the article's x − (1 − m)·1e10: the result is then exactly the max of the
    valid entries even for all-negative inputs and in low precision.

    References:
      https://kexue.fm/archives/6810
    """
    x = jnp.asarray(x)
    m, axis = _expand_mask(x, mask, axis)
    low = jnp.finfo(x.dtype).min if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    out = jnp.max(jnp.where(m, x, low), axis=axis, keepdims=keepdims)
    any_valid = jnp.any(jnp.broadcast_to(m, x.shape), axis=axis, keepdims=keepdims)
    return jnp.where(any_valid, out, jnp.zeros_like(out))


def masked_softmax(x: jax.Array, mask: jax.Array, *, axis: int = -1) -> jax.Array:
    """softmax(x) over the valid entries of `axis`; exactly 0 on invalid entries and on empty rows.

    References:
      https://kexue.fm/archives/6810
    """
    x = jnp.asarray(x)
    m, axis = _expand_mask(x, mask, axis)
    m = jnp.broadcast_to(m, x.shape)
    top = jax.lax.stop_gradient(jnp.max(jnp.where(m, x, jnp.finfo(x.dtype).min), axis=axis, keepdims=True))
    # The inner where keeps exp's argument finite on invalid entries (no inf, no NaN gradient).
    e = jnp.where(m, jnp.exp(jnp.where(m, x - top, 0)), 0)
    return e / jnp.maximum(jnp.sum(e, axis=axis, keepdims=True), jnp.finfo(x.dtype).tiny)


def reverse_valid_prefix(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverses x[r, :lengths[r]] and leaves the padding x[r, lengths[r]:] in place (tf.reverse_sequence).

    Args:
      x: [b, t, ...].
      lengths: [b] integers in [0, t].

    Returns:
      [b, t, ...]; applying it twice is the identity.
    """
    x, lengths = jnp.asarray(x), jnp.asarray(lengths)
    if x.ndim < 2:
        raise ValueError(f"`x` must have rank >= 2 [b, t, ...]; got shape {x.shape}")
    if lengths.shape != x.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"`lengths` must be an integer array of shape {x.shape[:1]}; got shape "
                         f"{lengths.shape} dtype {lengths.dtype}")
    t = x.shape[1]
    pos = jnp.arange(t)[None, :]  # [1, t]
    source = jnp.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # [b, t]
    return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=1)


def masked_bidirectional_rnn(forward: Callable[[jax.Array], jax.Array],
                             backward: Callable[[jax.Array], jax.Array],
                             x: jax.Array, mask: jax.Array) -> jax.Array:
    """Su's BiRNN wrapper: the backward direction runs on the reversed *valid prefix* of each sequence.

    y = concat(forward(x), R(backward(R(x)))) ⊗ m, where R reverses the first len(m_r) steps of each row.
    A plain flip would start the backward RNN on padding, so its outputs would depend on how much
    padding the batch happens to have.

    Args:
      forward, backward: sequence maps [b, t, d] -> [b, t, e] that are causal in time (RNNs, e.g. a
        `lax.scan` or `nnx.RNN`).
      x: inputs [b, t, d].
      mask: [b, t] bool prefix mask (True on the first lengths[r] positions of row r).

    Returns:
      [b, t, 2e]; 0 on padding.

    References:
      https://kexue.fm/archives/6810
    """
    x = jnp.asarray(x)
    mask = jnp.asarray(mask)
    if x.ndim != 3:
        raise ValueError(f"`x` must have rank 3 [b, t, d]; got shape {x.shape}")
    if mask.shape != x.shape[:2] or mask.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be a boolean array of shape {x.shape[:2]}; got shape {mask.shape} "
                         f"dtype {mask.dtype}")
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    y_fw = forward(x)
    y_bw = reverse_valid_prefix(backward(reverse_valid_prefix(x, lengths)), lengths)
    y = jnp.concatenate([y_fw, y_bw], axis=-1)  # [b, t, 2e]
    return jnp.where(mask[:, :, None], y, 0)
