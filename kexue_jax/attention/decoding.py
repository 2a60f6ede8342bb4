"""Jittable autoregressive decoding driven by `step_fn(cache, tokens) -> (logits, cache)`.

Any model plugs in through `step_fn`: `tokens` is [b, 1] (the token just chosen), `logits` is [b, 1, V]
(the next-token logits) and `cache` is any pytree whose leaves have the batch on axis 0 (so a beam
search reorders it row by row). Decoding starts after the prompt: the caller runs the prompt once
(`logits, cache = step_fn(cache, prompt)`) and passes the last position's logits as `first_logits`
[b, V]. Every decoder runs exactly `max_len` steps inside `lax.scan` (static shapes, one compile);
after `end_id` a row is frozen and padded with `end_id`.

    greedy:   y_t = argmax_w log p(w | y_<t)
    sample:   y_t ~ softmax(logits / T) restricted to the top-k tokens and/or the top-p nucleus (the
              smallest set of most probable tokens whose mass reaches p)
    beam:     keep the K best prefixes by Σ log p; `score_fn(logprobs, tokens, step)` may rewrite the
              per-step log-probabilities (constraints, votes) before the top-K

These are bert4keras' `AutoRegressiveDecoder.{beam_search, random_sample}` (kexue.fm/archives/7115,
anchors §8) with a KV cache instead of re-running the whole sequence each step. One departure: a beam
that ends keeps its slot and its score (later steps add 0), where bert4keras drops finished beams that
are not the best; the returned best sequence is the same whenever the best beam finishes first, since
log-probabilities are ≤ 0. Use `unilm_prefill` for the UniLM mode (bidirectional source once, then the
target incrementally, with segment id 1 as in training).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["greedy_decode", "sample_decode", "beam_search", "top_k_top_p_filter", "unilm_prefill",
           "gpt_step_fn", "NEG_INF"]

NEG_INF = -1e30  # finite "minus infinity" (spec §0.4): a fully masked row stays finite


def _check(cond: bool, name: str, expected: str, value) -> None:
    if not cond:
        raise ValueError(f"`{name}` must be {expected}; got {value!r}")


def _is_pos_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1


def _check_common(first_logits, max_len, end_id):
    first_logits = jnp.asarray(first_logits)
    _check(first_logits.ndim == 2, "first_logits", "an array [b, V]", f"shape {first_logits.shape}")
    _check(_is_pos_int(max_len), "max_len", "a positive int", max_len)
    v = first_logits.shape[1]
    _check(end_id is None or (isinstance(end_id, (int, np.integer)) and 0 <= end_id < v), "end_id",
           f"None or an int in [0, {v})", end_id)
    return first_logits


def gpt_step_fn(model, *, segment: int | None = None) -> Callable:
    """`step_fn` for `kexue_jax.attention.GPT`: model.step on the new tokens (with segment ids `segment`
    everywhere, e.g. 1 for a UniLM target, or None for a plain LM)."""

    def step_fn(cache, tokens):
        seg = None if segment is None else jnp.full(tokens.shape, segment, jnp.int32)
        return model.step(cache, tokens, seg)

    return step_fn


def unilm_prefill(model, source_ids: jax.Array, *, max_len: int, source_valid: jax.Array | None = None,
                  prefix_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """UniLM mode: runs the source once (segment 0, bidirectional), then an optional teacher-forced
    target prefix (segment 1, causal); returns (next-token logits [b, V], cache).

    The target prefix carries segment 1 exactly as in training (`[CLS] P [SEP] Q [SEP] | A [SEP]`).
    """
    source_ids = jnp.asarray(source_ids)
    _check(source_ids.ndim == 2, "source_ids", "an array [b, s]", f"shape {source_ids.shape}")
    _check(_is_pos_int(max_len), "max_len", "a positive int", max_len)
    extra = 0 if prefix_ids is None else jnp.asarray(prefix_ids).shape[1]
    if source_ids.shape[1] + extra > max_len:
        raise ValueError(f"`max_len` must be at least the prompt length {source_ids.shape[1] + extra}; "
                         f"got {max_len}")
    cache = model.init_cache(source_ids.shape[0], max_len)
    logits, cache = model.step(cache, source_ids, jnp.zeros_like(source_ids), valid=source_valid)
    if source_valid is None:
        last = logits[:, -1]
    else:  # the logits of each row's last valid source token
        n = jnp.sum(jnp.asarray(source_valid), axis=1) - 1  # [b]
        last = jnp.take_along_axis(logits, n[:, None, None], axis=1)[:, 0]
    if prefix_ids is not None:
        prefix_ids = jnp.asarray(prefix_ids)
        logits, cache = model.step(cache, prefix_ids, jnp.ones_like(prefix_ids))
        last = logits[:, -1]
    return last, cache


def greedy_decode(step_fn: Callable, cache: Any, first_logits: jax.Array, *, max_len: int,
                  end_id: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding for `max_len` steps.

    Returns:
      tokens [b, max_len] (end_id after the end), lengths [b] (tokens up to and including end_id).
    """
    first_logits = _check_common(first_logits, max_len, end_id)
    return _decode_loop(step_fn, cache, first_logits, max_len=max_len, end_id=end_id,
                        choose=lambda logits, t: jnp.argmax(logits, axis=-1))


def _decode_loop(step_fn: Callable, cache: Any, first_logits: jax.Array, *, max_len: int, end_id: int | None,
                 choose: Callable[[jax.Array, jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The scan shared by greedy and sampled decoding: `choose(logits [b, v], t) -> tokens [b]` picks each
    step's token; rows that produced `end_id` keep emitting it and stop counting towards their length."""
    b = first_logits.shape[0]

    def body(carry, t):
        cache, logits, done, length = carry
        tok = choose(logits, t).astype(jnp.int32)  # [b]
        if end_id is not None:
            tok = jnp.where(done, end_id, tok)
            length = length + (~done).astype(jnp.int32)
            done = done | (tok == end_id)
        else:
            length = length + 1
        new_logits, cache = step_fn(cache, tok[:, None])
        return (cache, new_logits[:, -1], done, length), tok

    init = (cache, first_logits, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32))
    (_, _, _, lengths), toks = jax.lax.scan(body, init, jnp.arange(max_len))
    return toks.T, lengths


def top_k_top_p_filter(logits: jax.Array, *, top_k: int | None = None, top_p: float | None = None
                       ) -> jax.Array:
    """Sets logits outside the top-k and/or the top-p nucleus to NEG_INF (last axis).

    The nucleus is the smallest set of most probable tokens with Σ p ≥ top_p (the token that crosses p is
    kept); ties at the k-th value are broken by index, so exactly k tokens survive.
    """
    logits = jnp.asarray(logits)
    v = logits.shape[-1]
    _check(top_k is None or (_is_pos_int(top_k) and top_k <= v), "top_k", f"None or an int in [1, {v}]", top_k)
    _check(top_p is None or (isinstance(top_p, (float, int)) and 0 < top_p <= 1), "top_p", "None or in (0, 1]",
           top_p)
    order = jnp.argsort(-logits, axis=-1)  # descending, stable: ties by index
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    keep_sorted = jnp.ones(logits.shape, bool)
    rank = jnp.arange(v).reshape((1,) * (logits.ndim - 1) + (v,))
    if top_k is not None:
        keep_sorted = keep_sorted & (rank < top_k)
    if top_p is not None:
        probs = jax.nn.softmax(jnp.where(keep_sorted, sorted_logits, NEG_INF), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before this token
        keep_sorted = keep_sorted & (before < top_p)
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocab order
    return jnp.where(keep, logits, NEG_INF)


def sample_decode(step_fn: Callable, cache: Any, first_logits: jax.Array, *, key: jax.Array, max_len: int,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  end_id: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Random sampling from softmax(logits / temperature) filtered by top-k / top-p; step t uses
    `fold_in(key, t)`. Returns (tokens [b, max_len], lengths [b]) as `greedy_decode`."""
    first_logits = _check_common(first_logits, max_len, end_id)
    _check(isinstance(temperature, (float, int)) and temperature > 0, "temperature", "> 0", temperature)
    top_k_top_p_filter(first_logits[:1], top_k=top_k, top_p=top_p)  # validates the options eagerly

    def choose(logits, t):
        filtered = top_k_top_p_filter(logits / temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(jax.random.fold_in(key, t), filtered, axis=-1)

    return _decode_loop(step_fn, cache, first_logits, max_len=max_len, end_id=end_id, choose=choose)


def beam_search(step_fn: Callable, cache: Any, first_logits: jax.Array, *, beam_size: int, max_len: int,
                end_id: int | None = None, score_fn: Callable | None = None, logits_are_logprobs: bool = False
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Beam search over Σ_t log p(y_t | y_<t).

    Args:
      step_fn: as in the module docstring; called on a batch of b·K rows (row r·K + i = beam i of r).
      cache: the prompt's cache for b rows; it is tiled to b·K rows here.
      first_logits: [b, V] next-token logits after the prompt.
      beam_size: K ≥ 1.
      max_len: number of decoding steps.
      end_id: a beam that emits it is finished (its score no longer changes).
      score_fn: per-step hook `score_fn(logprobs [b, K, V], tokens [b, K, max_len], step) -> [b, K, V]`
        applied before the top-K (e.g. a constraint setting banned tokens to NEG_INF).
      logits_are_logprobs: use the step outputs as log-probabilities as they are (not log_softmax), e.g.
        the un-normalised UniLM vote log p̄.

    Returns:
      best tokens [b, max_len], their scores [b], lengths [b] (up to and including end_id).
    """
    first_logits = _check_common(first_logits, max_len, end_id)
    _check(_is_pos_int(beam_size), "beam_size", "a positive int", beam_size)
    b, v = first_logits.shape
    k = int(beam_size)
    cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0), cache)  # [b·K, ...]
    norm = (lambda x: x) if logits_are_logprobs else (lambda x: jax.nn.log_softmax(x, axis=-1))

    def body(carry, t):
        cache, logits, scores, tokens, done, length = carry
        logp = norm(logits.reshape(b, k, v).astype(jnp.float32))  # [b, K, V]
        if score_fn is not None:
            logp = score_fn(logp, tokens, t)
        if end_id is not None:  # a finished beam extends only with end_id, at no cost
            frozen = jnp.full((v,), NEG_INF).at[end_id].set(0.0)
            logp = jnp.where(done[:, :, None], frozen[None, None, :], logp)
        cand = scores[:, :, None] + logp  # [b, K, V]
        # At step 0 all beams are copies of the prompt: only beam 0 may expand (no duplicates).
        cand = jnp.where((t == 0) & (jnp.arange(k) > 0)[None, :, None], NEG_INF * 2, cand)
        top_scores, flat = jax.lax.top_k(cand.reshape(b, k * v), k)  # [b, K]
        parent, tok = flat // v, (flat % v).astype(jnp.int32)  # [b, K]
        tokens = jnp.take_along_axis(tokens, parent[:, :, None], axis=1).at[:, :, t].set(tok)
        done_parent = jnp.take_along_axis(done, parent, axis=1)
        length = jnp.take_along_axis(length, parent, axis=1) + (~done_parent).astype(jnp.int32)
        done = done_parent | ((tok == end_id) if end_id is not None else False)
        rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)  # [b·K]
        cache = jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=0), cache)
        new_logits, cache = step_fn(cache, tok.reshape(b * k, 1))
        return (cache, new_logits[:, -1], top_scores, tokens, done, length), None

    init = (cache, jnp.repeat(first_logits, k, axis=0), jnp.zeros((b, k), jnp.float32),
            jnp.zeros((b, k, max_len), jnp.int32), jnp.zeros((b, k), bool), jnp.zeros((b, k), jnp.int32))
    (_, _, scores, tokens, _, length), _ = jax.lax.scan(body, init, jnp.arange(max_len))
    best = jnp.argmax(scores, axis=1)  # [b]
    pick = lambda x: jnp.take_along_axis(x, best.reshape((b,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
    return pick(tokens), pick(scores), pick(length)
