"""A GPT decoder (token embedding + `TransformerBlock`s with RoPE + tied output) with a KV cache.

    logits = Norm(blocks(E_tok[x] + E_seg[s])) E_tokᵀ

The full-sequence forward (`GPT.__call__`) runs the shared `TransformerBlock` under `causal_mask(t)`
(the bert4keras `LM_Mask`, "GPT = BERT + LM mask", kexue.fm/archives/7877) or, when segment ids are
given, under `unilm_mask(segment_ids)` (bert4keras `UniLM_Mask`, kexue.fm/archives/7115).

Incremental decoding (`GPT.step`) runs a chunk of t new tokens against a cache of keys and values:

    cache = {'k', 'v': [b, L, S, h, k], 'valid': [b, S] bool, 'index': [b] int32 (next slot),
             'position': [b] int32 (next RoPE position)}

Every cache leaf has the batch on axis 0, so a beam search reorders a cache with one `take` per leaf.
A new query sees every earlier valid slot (true of both masks: c = cumsum(s) never decreases), and
inside the chunk it sees keys by the causal rule, or by c_j ≤ c_i when the chunk has segment ids (a
UniLM source run once, bidirectionally). RoPE positions are per example and count valid tokens only, so
a right-padded batch of prompts of different lengths continues each prompt at its own position; since
RoPE scores depend on position differences only, this equals the unpadded training layout.

bert4keras re-runs the whole sequence at every decoding step (about 2 examples/s in Su's UniLM article);
`full_recompute_step_fn` reproduces that strategy here for a throughput comparison.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.attention.core import attention
from kexue_jax.attention.masks import causal_mask, combine_masks, unilm_mask
from kexue_jax.attention.rope import apply_rope
from kexue_jax.attention.transformer import TransformerBlock, layer_norm, rms_norm

__all__ = ["GPT", "init_cache", "reorder_cache", "tile_cache", "full_recompute_step_fn"]


def _check(cond: bool, name: str, expected: str, value) -> None:
    if not cond:
        raise ValueError(f"`{name}` must be {expected}; got {value!r}")


def _is_pos_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1


def reorder_cache(cache: dict, indices: jax.Array) -> dict:
    """Takes rows `indices` [b'] of every cache leaf (batch on axis 0): beam reordering, tiling."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, indices, axis=0), cache)


def tile_cache(cache: dict, n: int) -> dict:
    """Repeats each row n times (row r -> rows r·n … r·n + n − 1), e.g. one prompt per beam."""
    _check(_is_pos_int(n), "n", "a positive int", n)
    b = jax.tree_util.tree_leaves(cache)[0].shape[0]
    return reorder_cache(cache, jnp.repeat(jnp.arange(b), n))


def init_cache(batch: int, max_len: int, *, num_layers: int, num_heads: int, head_dim: int,
               dtype=jnp.float32) -> dict:
    """An empty cache of `max_len` slots for `batch` sequences."""
    _check(_is_pos_int(batch), "batch", "a positive int", batch)
    _check(_is_pos_int(max_len), "max_len", "a positive int", max_len)
    shape = (batch, num_layers, max_len, num_heads, head_dim)
    return dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((batch,), jnp.int32),
                position=jnp.zeros((batch,), jnp.int32))


class GPT(nnx.Module):
    """Decoder-only transformer: embedding, `TransformerBlock`s (RoPE on q, k), final norm, tied output.

    Args:
      vocab_size: V.
      d_model, num_heads, num_layers, ffn_dim: sizes.
      type_vocab_size: number of segment embeddings (2 for UniLM seq2seq, 0 for a plain LM).
      placement: 'pre' (GPT-2 style, plus a final norm) or 'post' (BERT/RoFormer style).
      norm: 'rms' or 'layer' (parameter-free, as in `TransformerBlock`).
      activation: FFN nonlinearity.
      implementation: passed to `attention`.

    References:
      https://kexue.fm/archives/7877 (GPT on Xiangqi); https://kexue.fm/archives/7115 (UniLM seq2seq);
      https://kexue.fm/archives/6933 (LM and UniLM masks); Radford et al. 2019 (GPT-2);
      Dong et al. 2019, arXiv:1905.03197.
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, ffn_dim: int, *,
                 type_vocab_size: int = 0, placement: str = "pre", norm: str = "rms", activation: str = "gelu",
                 implementation: str | None = None, rngs: nnx.Rngs):
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("num_heads", num_heads),
                            ("num_layers", num_layers), ("ffn_dim", ffn_dim)):
            _check(_is_pos_int(value), name, "a positive int", value)
        _check(isinstance(type_vocab_size, (int, np.integer)) and type_vocab_size >= 0, "type_vocab_size",
               "a non-negative int", type_vocab_size)
        _check(d_model % num_heads == 0 and (d_model // num_heads) % 2 == 0, "num_heads",
               f"a divisor of d_model={d_model} giving an even head dim", num_heads)
        _check(placement in ("pre", "post"), "placement", "one of ('pre', 'post')", placement)
        init = nnx.initializers.normal(0.02)
        self.token_embedding = nnx.Embed(vocab_size, d_model, embedding_init=init, rngs=rngs)
        self.segment_embedding = (nnx.Embed(type_vocab_size, d_model, embedding_init=init, rngs=rngs)
                                  if type_vocab_size else None)
        self.layers = nnx.List([
            TransformerBlock(d_model, num_heads, ffn_dim, norm=norm, placement=placement, activation=activation,
                             rope="interleaved", implementation=implementation, rngs=rngs)
            for _ in range(num_layers)])
        self.vocab_size, self.d_model, self.num_heads, self.num_layers = vocab_size, d_model, num_heads, num_layers
        self.head_dim = d_model // num_heads
        self.type_vocab_size, self.placement, self.norm_kind = type_vocab_size, placement, norm

    # ---------------------------------------------------------------- helpers
    def _final_norm(self, x):
        if self.placement == "post":  # a post-norm block already ends in a norm
            return x
        return (rms_norm if self.norm_kind == "rms" else layer_norm)(x, eps=self.layers[0].norm_eps)

    def _embed(self, token_ids, segment_ids):
        x = self.token_embedding(token_ids)  # [b, t, d]
        if self.segment_embedding is not None:
            seg = jnp.zeros_like(token_ids) if segment_ids is None else segment_ids
            x = x + self.segment_embedding(seg)
        return x

    def _check_tokens(self, token_ids, segment_ids, name="token_ids"):
        token_ids = jnp.asarray(token_ids)
        _check(token_ids.ndim == 2 and jnp.issubdtype(token_ids.dtype, jnp.integer), name,
               "an integer array [b, t]", f"shape {token_ids.shape} dtype {token_ids.dtype}")
        if not isinstance(token_ids, jax.core.Tracer):
            bad = np.asarray(token_ids)
            if bad.size and (bad.min() < 0 or bad.max() >= self.vocab_size):
                raise ValueError(f"`{name}` must hold ids in [0, {self.vocab_size}); got values in "
                                 f"[{bad.min()}, {bad.max()}]")
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids)
            _check(segment_ids.shape == token_ids.shape, "segment_ids", f"of shape {token_ids.shape}",
                   f"shape {segment_ids.shape}")
            _check(self.type_vocab_size > 0, "segment_ids", "None for a model with type_vocab_size=0",
                   "an array")
        return token_ids, segment_ids

    # ---------------------------------------------------------------- full sequence
    def __call__(self, token_ids: jax.Array, segment_ids: jax.Array | None = None, *,
                 key_mask: jax.Array | None = None, positions: jax.Array | None = None) -> jax.Array:
        """Full-sequence logits [b, t, V].

        Args:
          token_ids: [b, t] ints in [0, V).
          segment_ids: None (causal LM mask) or [b, t] 0/1 (UniLM mask c_j ≤ c_i, c = cumsum(s)).
          key_mask: optional [b, t] bool, False = padding key (needed after a UniLM target).
          positions: optional RoPE positions [t] or [b, t] (default 0 … t − 1).
        """
        token_ids, segment_ids = self._check_tokens(token_ids, segment_ids)
        t = token_ids.shape[1]
        mask = causal_mask(t) if segment_ids is None else unilm_mask(segment_ids)  # [t, t] | [b, t, t]
        if key_mask is not None:
            mask = combine_masks(mask, jnp.asarray(key_mask)[:, None, :])
        x = self._embed(token_ids, segment_ids)
        for layer in self.layers:
            x = layer(x, mask=mask, positions=positions, deterministic=True)
        return self.token_embedding.attend(self._final_norm(x))  # [b, t, V]

    # ---------------------------------------------------------------- incremental
    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> dict:
        """An empty KV cache of `max_len` slots (see the module docstring for its layout)."""
        return init_cache(batch, max_len, num_layers=self.num_layers, num_heads=self.num_heads,
                          head_dim=self.head_dim, dtype=dtype)

    def step(self, cache: dict, token_ids: jax.Array, segment_ids: jax.Array | None = None, *,
             valid: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Runs t new tokens against the cache; returns (logits [b, t, V], new cache).

        Args:
          cache: from `init_cache` / a previous `step`.
          token_ids: [b, t] ints.
          segment_ids: None (the chunk is causal) or [b, t] 0/1 (inside the chunk, query i sees key j iff
            c_j ≤ c_i: a UniLM source chunk of zeros is bidirectional, a target chunk of ones is causal).
          valid: optional [b, t] bool; False marks right padding of a chunk (never attended, no position).
        """
        token_ids, segment_ids = self._check_tokens(token_ids, segment_ids)
        b, t = token_ids.shape
        _check(isinstance(cache, dict) and set(cache) == {"k", "v", "valid", "index", "position"}, "cache",
               "a dict from GPT.init_cache", type(cache).__name__)
        size = cache["k"].shape[2]
        _check(cache["k"].shape[0] == b, "token_ids", f"a batch of {cache['k'].shape[0]} (the cache's)",
               f"shape {token_ids.shape}")
        _check(t <= size, "token_ids", f"at most {size} tokens (the cache length)", f"shape {token_ids.shape}")
        if not isinstance(cache["index"], jax.core.Tracer):
            used = int(np.asarray(cache["index"])[0])
            if used + t > size:
                raise ValueError(f"`token_ids` must fit in the cache ({size} slots, {used} used); got {t} "
                                 f"new tokens")
        valid = jnp.ones((b, t), bool) if valid is None else jnp.asarray(valid, bool)
        _check(valid.shape == (b, t), "valid", f"of shape {(b, t)}", f"shape {valid.shape}")

        index = cache["index"][0]  # all rows share the slot index
        positions = cache["position"][:, None] + jnp.cumsum(valid, axis=1) - 1  # [b, t]
        slots = jnp.arange(size)  # [S]
        new_valid = jax.lax.dynamic_update_slice(cache["valid"], valid, (0, index))  # [b, S]
        # Keys: earlier valid slots, plus the chunk's slots under the chunk rule.
        earlier = (slots < index)[None, None, :] & new_valid[:, None, :]  # [b, 1, S]
        if segment_ids is None:
            inner = causal_mask(t)[None]  # [1, t, t]
        else:
            inner = unilm_mask(segment_ids)  # [b, t, t]
        inner = inner & valid[:, None, :]  # [b, t, t]
        in_chunk = jnp.zeros((b, t, size), bool)
        in_chunk = jax.lax.dynamic_update_slice(in_chunk, inner, (0, 0, index))  # [b, t, S]
        mask = earlier | in_chunk  # [b, t, S]

        x = self._embed(token_ids, segment_ids)  # [b, t, d]
        ks, vs = [], []
        for li, layer in enumerate(self.layers):
            x, k_l, v_l = self._cached_block(layer, x, cache["k"][:, li], cache["v"][:, li], index, positions,
                                             mask)
            ks.append(k_l)
            vs.append(v_l)
        logits = self.token_embedding.attend(self._final_norm(x))  # [b, t, V]
        new_cache = dict(k=jnp.stack(ks, axis=1), v=jnp.stack(vs, axis=1), valid=new_valid,
                         index=cache["index"] + t, position=cache["position"] + jnp.sum(valid, axis=1,
                                                                                        dtype=jnp.int32))
        return logits, new_cache

    def _cached_block(self, layer: TransformerBlock, x, k_cache, v_cache, index, positions, mask):
        """`TransformerBlock.__call__` with its attention reading and writing the cache (α = 1, no dropout)."""
        mha = layer.attention
        b, t, _ = x.shape
        a = layer.identity_scale
        new_k, new_v = k_cache, v_cache

        def attn(h):
            nonlocal new_k, new_v
            split = lambda y: y.reshape(b, t, mha.num_heads, mha.head_dim)  # [b, t, h, k]
            q = apply_rope(split(mha.query(h)), positions, convention=mha.rope)
            k = apply_rope(split(mha.key(h)), positions, convention=mha.rope)
            v = split(mha.value(h))
            new_k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            new_v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
            o = attention(q, new_k.astype(q.dtype), new_v.astype(q.dtype), mask=mask,
                          implementation=mha.implementation)  # [b, t, h, k]
            return mha.out(o.reshape(b, t, mha.num_heads * mha.head_dim))

        for which, branch in ((1, attn), (2, layer.ffn)):
            if layer.placement == "post":
                x = layer._norm(which, a * x + branch(x))
            else:
                x = a * x + branch(layer._norm(which, x))
        return x, new_k, new_v


def full_recompute_step_fn(model: GPT, *, unilm: bool = False) -> Callable:
    """A `step_fn(state, tokens) -> (logits, state)` that re-runs the whole sequence every step, as
    bert4keras' `AutoRegressiveDecoder` does (no KV cache); for throughput comparisons and as a reference.

    state = {'tokens', 'segments': [b, S] ints, 'valid': [b, S] bool, 'length': [b] int32 (next slot,
    shared)}, e.g. a right-padded prompt with `valid` marking its real tokens. New tokens are appended
    (segment 1 when `unilm`); RoPE positions count valid tokens only, as in `GPT.step`.
    """

    def step_fn(state, tokens):
        tokens = jnp.asarray(tokens)
        b, t = tokens.shape
        n = state["length"][0]
        buf = jax.lax.dynamic_update_slice(state["tokens"], tokens.astype(state["tokens"].dtype), (0, n))
        seg = state["segments"]
        if unilm:
            seg = jax.lax.dynamic_update_slice(seg, jnp.ones_like(tokens, seg.dtype), (0, n))
        valid = jax.lax.dynamic_update_slice(state["valid"], jnp.ones((b, t), bool), (0, n))  # [b, S]
        positions = jnp.cumsum(valid, axis=1) - 1  # [b, S]
        logits = model(buf, seg if unilm else None, key_mask=valid, positions=positions)  # [b, S, V]
        out = jax.lax.dynamic_slice_in_dim(logits, n, t, axis=1)  # [b, t, V]
        return out, dict(tokens=buf, segments=seg, valid=valid, length=state["length"] + t)

    return step_fn
