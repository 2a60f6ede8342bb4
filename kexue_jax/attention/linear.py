"""Linear attention: softmax's e^{q·k} replaced by φ(q)·φ(k), computed in O(n) memory and time.

    o_i = Σ_j φ(q_i)ᵀφ(k_j) v_j / Σ_j φ(q_i)ᵀφ(k_j) = φ(q_i)ᵀ(Σ_j φ(k_j) v_jᵀ) / φ(q_i)ᵀ Σ_j φ(k_j)

Causal attention replaces the sums by prefix sums over j ≤ i. Here they are chunked: within a chunk of
C positions the (masked) C×C form is computed directly, and across chunks an exclusive cumulative sum of
the per-chunk states Σ φ(k_j) v_jᵀ [m, e] carries the past, so memory is O(n·m·e / C + n·C) (for causal
'exp' features the sum is rescaled by the running max, below).

Feature maps: 'elu_plus_one' (1 + elu, Katharopoulos et al.), 'exp' (the article's recommendation, with
a key size m larger than the head size — make the q/k projections m-dimensional) and 'relu'.
Su's lesson 1: multiplying φ(q_i) by any c_i > 0, or all φ(k_j) by one c > 0, leaves o unchanged. So
'exp' subtracts the per-query max from q_i and, non-causally, one max per (batch, head) over the whole
sequence and the features from the keys before exp (as Google's Performer code does); this is exact, not an
approximation, and it keeps exp finite. Features are computed in at least float32.

Causal 'exp' (and the causal Performer) shift key j, as seen by query i ≥ j, by the running max
R_i = max_{j' ≤ i, r} L_{j',r} per (batch, head), L being the keys' log-features (here k itself) and masked
keys left out: φ(k_j; R_i) = exp(L_j − R_i). That is the shift a non-causal call on the prefix k[:i+1] uses,
so causal output i equals the non-causal formula on (q_i, k[:i+1], v[:i+1]) exactly, and no later key can
change it (a whole-sequence max let a later key ≈ 87 above the earlier ones underflow all their float32
features to 0). `causal_attention_from_log_features` computes it in O(n) with factors ≤ 1 only:
ψ_j = exp(L_j − R_j) and exp(L_j − R_i) = ψ_j·exp(R_j − R_i); within a chunk the masked C×C scores are
multiplied by exp(R_j − R_i), and across chunks the state Σ exp(R_j − R_end) ψ_j v_jᵀ is kept relative to
the running max R_end at the end of the previous chunk (an associative scan with decays
exp(R_end(c−1) − R_end(c)) ≤ 1), then scaled by exp(R_end(c−1) − R_i) for query i (online-softmax style).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["linear_attention", "linear_attention_from_features", "elu_plus_one", "FEATURE_MAPS",
           "default_chunk_size"]


def elu_plus_one(x: jax.Array) -> jax.Array:
    """φ(x) = 1 + elu(x) > 0, the first-order Taylor expansion 1 + x of eˣ made positive."""
    return jax.nn.elu(x) + 1


FEATURE_MAPS = ("elu_plus_one", "exp", "relu")


def default_chunk_size(t: int, *, max_chunk: int = 64) -> int:
    """The largest divisor of t that is ≤ max_chunk (the causal chunk size when none is given)."""
    return max(c for c in range(1, min(t, max_chunk) + 1) if t % c == 0)


def _features(x: jax.Array, feature_map: str | Callable, *, is_query: bool) -> jax.Array:
    if callable(feature_map):
        return feature_map(x)
    if feature_map == "elu_plus_one":
        return elu_plus_one(x)
    if feature_map == "relu":
        return jax.nn.relu(x)
    # 'exp': shift by a max that cancels in the normalised output (per query row; per (b, h) for keys).
    axes = (-1,) if is_query else (1, 3)
    return jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=axes, keepdims=True)))


def check_chunk_size(t: int, s: int, *, causal: bool, chunk_size: int | None) -> int | None:
    """Validates `chunk_size` for lengths t (queries) and s (keys) before any array work; returns the
    causal chunk size to use (None when not causal)."""
    if not causal:
        if chunk_size is not None:
            raise ValueError(f"`chunk_size` must be None when causal=False; got {chunk_size!r}")
        return None
    if s != t:
        raise ValueError(f"`k` must have the length of `q` ({t}) when causal=True; got length {s}")
    if chunk_size is None:
        return default_chunk_size(t)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1 or t % chunk_size:
        raise ValueError(f"`chunk_size` must be a positive int dividing the length {t}; got {chunk_size!r}")
    return chunk_size


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
    """Σ over earlier chunks (axis 1); shifting avoids the cancellation of cumsum(x) − x."""
    shifted = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)  # [b, n, ...]
    return jnp.cumsum(shifted, axis=1)


def linear_attention_from_features(phi_q: jax.Array, phi_k: jax.Array, v: jax.Array, *,
                                   causal: bool = False, chunk_size: int | None = None) -> jax.Array:
    """Normalised linear attention from non-negative features (shared by `linear_attention` and Performer).

    Args:
      phi_q: φ(q) [b, t, h, m], non-negative.
      phi_k: φ(k) [b, s, h, m], non-negative (zero rows act as masked keys).
      v: values [b, s, h, e].
      causal: prefix sums over j ≤ i (then s must equal t).
      chunk_size: causal chunk size C dividing t (default `default_chunk_size(t)`); must be None when
        not causal.

    Returns:
      [b, t, h, e]; a query whose denominator is exactly 0 (e.g. relu features all zero) gives 0.

    References:
      https://kexue.fm/archives/8338; https://kexue.fm/archives/7546;
      Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236.
    """
    if phi_q.ndim != 4 or phi_k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"`phi_q`, `phi_k`, `v` must have rank 4; got shapes {phi_q.shape}, {phi_k.shape}, {v.shape}")
    if phi_k.shape[-1] != phi_q.shape[-1]:
        raise ValueError(f"`k` features must have the feature dim of `q` ({phi_q.shape[-1]}); got shape {phi_k.shape}")
    if phi_k.shape[:3] != v.shape[:3]:
        raise ValueError(f"`v` must share [b, s, h] = {phi_k.shape[:3]} with `k`; got shape {v.shape}")
    if phi_q.shape[0] != phi_k.shape[0] or phi_q.shape[2] != phi_k.shape[2]:
        raise ValueError(f"`k` must share batch and heads with `q` {(phi_q.shape[0], phi_q.shape[2])}; "
                         f"got shape {phi_k.shape}")
    chunk_size = check_chunk_size(phi_q.shape[1], phi_k.shape[1], causal=causal, chunk_size=chunk_size)
    tiny = jnp.finfo(jnp.promote_types(phi_q.dtype, jnp.float32)).tiny
    if not causal:
        state = jnp.einsum("bshm,bshe->bhme", phi_k, v)  # [b, h, m, e]
        z = jnp.sum(phi_k, axis=1)  # [b, h, m]
        num = jnp.einsum("bthm,bhme->bthe", phi_q, state)  # [b, t, h, e]
        den = jnp.einsum("bthm,bhm->bth", phi_q, z)[..., None]  # [b, t, h, 1]
        return num / jnp.maximum(den, tiny)

    b, t, h, m = phi_q.shape
    c, n, e = chunk_size, t // chunk_size, v.shape[-1]
    fq = phi_q.reshape(b, n, c, h, m)  # [b, n, c, h, m]
    fk = phi_k.reshape(b, n, c, h, m)  # [b, n, c, h, m]
    vc = v.reshape(b, n, c, h, e)  # [b, n, c, h, e]
    # Past chunks: exclusive prefix sums of the per-chunk states (zeros before the first chunk).
    state = jnp.einsum("bnchm,bnche->bnhme", fk, vc)  # [b, n, h, m, e]
    z = jnp.sum(fk, axis=2)  # [b, n, h, m]
    state = _exclusive_cumsum(state)  # [b, n, h, m, e]
    z = _exclusive_cumsum(z)  # [b, n, h, m]
    num = jnp.einsum("bnchm,bnhme->bnche", fq, state)  # [b, n, c, h, e]
    den = jnp.einsum("bnchm,bnhm->bnch", fq, z)  # [b, n, c, h]
    # The current chunk: the masked quadratic form on C positions.
    scores = jnp.einsum("bnihm,bnjhm->bnhij", fq, fk)  # [b, n, h, c, c]
    scores = jnp.where(jnp.tril(jnp.ones((1, 1, 1, c, c), dtype=bool)), scores, 0)
    num = num + jnp.einsum("bnhij,bnjhe->bnihe", scores, vc)  # [b, n, c, h, e]
    den = den + jnp.einsum("bnhij->bnih", scores)  # [b, n, c, h]
    out = num / jnp.maximum(den, tiny)[..., None]  # [b, n, c, h, e]
    return out.reshape(b, t, h, e)


def causal_attention_from_log_features(phi_q: jax.Array, log_k: jax.Array, v: jax.Array, *, chunk_size: int,
                                       eps: float = 0.0, scale: float = 1.0,
                                       key_mask: jax.Array | None = None) -> jax.Array:
    """Causal normalised linear attention with exp key features shifted by the running max (exactly causal).

    Key j's feature as seen by query i ≥ j is φ(k_j; R_i) = scale·(exp(L_j − R_i) + eps) with
    R_i = max_{j' ≤ i, r} L_{j',r} per (batch, head): the shift a non-causal call on the prefix k[:i+1] would
    use. So output i equals the non-causal formula on (q_i, k[:i+1], v[:i+1]) and no later key can change it.
    With ψ_j = exp(L_j − R_j) ≤ 1 and exp(L_j − R_i) = ψ_j·exp(R_j − R_i) (R is non-decreasing), every factor
    is ≤ 1: within a chunk the masked C×C scores are multiplied by exp(R_j − R_i); across chunks the state
    Σ exp(R_j − R_end) ψ_j v_jᵀ, relative to the running max at the end of the previous chunk, is carried by
    an associative scan with the decay exp(R_end(c−1) − R_end(c)) and scaled by exp(R_end(c−1) − R_i) for
    query i. The eps part is eps·(Σ_r φ(q_i)_r)·Σ_{j ≤ i} v_j (and the count for the denominator).

    Args:
      phi_q: φ(q) [b, t, h, m], non-negative (any per-query positive factor cancels).
      log_k: the keys' log-features L [b, t, h, m] before any shift.
      v: values [b, t, h, e].
      chunk_size: a divisor of t.
      eps, scale: the feature's additive stabiliser and constant factor (Performer: eps, m^{−1/2}).
      key_mask: optional [b, t] bool; False keys contribute nothing and stay out of the running max.

    Returns:
      [b, t, h, e]; a query with no unmasked key at or before it gives 0.
    """
    b, t, h, m = phi_q.shape
    c, n, e = chunk_size, t // chunk_size, v.shape[-1]
    low = jnp.finfo(jnp.result_type(phi_q, log_k)).min
    if key_mask is not None:
        valid = key_mask[:, :, None, None]  # [b, t, 1, 1]
        log_k = jnp.where(valid, log_k, low)  # out of the running max (finite: no inf − inf below)
        v = jnp.where(valid, v, 0)
    run_max = jax.lax.cummax(jax.lax.stop_gradient(jnp.max(log_k, axis=-1)), axis=1)  # R [b, t, h]
    psi = jnp.exp(log_k - run_max[..., None])  # ψ ∈ [0, 1], [b, t, h, m]
    if key_mask is not None:
        psi = jnp.where(valid, psi, 0)  # masked keys before any valid one have L = R = low
    fq = phi_q.reshape(b, n, c, h, m)  # [b, n, c, h, m]
    fk = psi.reshape(b, n, c, h, m)  # [b, n, c, h, m]
    vc = v.reshape(b, n, c, h, e)  # [b, n, c, h, e]
    rc = run_max.reshape(b, n, c, h)  # [b, n, c, h]
    # The current chunk: masked C×C scores times exp(R_j − R_i) ≤ 1 for j ≤ i.
    r_ij = jnp.swapaxes(rc, 2, 3)  # [b, n, h, c]
    decay = jnp.exp(jnp.minimum(r_ij[..., None, :] - r_ij[..., :, None], 0))  # [b, n, h, i, j]
    scores = jnp.einsum("bnihm,bnjhm->bnhij", fq, fk)  # [b, n, h, c, c]
    scores = jnp.where(jnp.tril(jnp.ones((1, 1, 1, c, c), dtype=bool)), scores * decay, 0)
    num = jnp.einsum("bnhij,bnjhe->bnihe", scores, vc)  # [b, n, c, h, e]
    den = jnp.einsum("bnhij->bnih", scores)  # [b, n, c, h]
    # Past chunks: per-chunk states relative to the chunk's last running max, then scanned with decays.
    r_end = rc[:, :, -1]  # [b, n, h]
    r_ref = jnp.concatenate([rc[:, :1, 0], r_end[:, :-1]], axis=1)  # R_end(c−1); chunk 0: R_0 (no past)
    to_end = fk * jnp.exp(rc - r_end[:, :, None])[..., None]  # [b, n, c, h, m]
    chunk_state = jnp.einsum("bnchm,bnche->bnhme", to_end, vc)  # [b, n, h, m, e]
    chunk_z = jnp.sum(to_end, axis=2)  # [b, n, h, m]

    def combine(x, y):  # (a, S, z) then (a', S', z'): S' + a'·S, all relative to the later end
        return x[0] * y[0], x[1] * y[0][..., None, None] + y[1], x[2] * y[0][..., None] + y[2]

    _, state, z = jax.lax.associative_scan(combine, (jnp.exp(r_ref - r_end), chunk_state, chunk_z), axis=1)
    state = jnp.concatenate([jnp.zeros_like(state[:, :1]), state[:, :-1]], axis=1)  # rel. to r_ref
    z = jnp.concatenate([jnp.zeros_like(z[:, :1]), z[:, :-1]], axis=1)  # [b, n, h, m]
    past = jnp.exp(r_ref[:, :, None] - rc)  # exp(R_end(c−1) − R_i) ≤ 1, [b, n, c, h]
    num = num + past[..., None] * jnp.einsum("bnchm,bnhme->bnche", fq, state)
    den = den + past * jnp.einsum("bnchm,bnhm->bnch", fq, z)
    num, den = num.reshape(b, t, h, e), den.reshape(b, t, h)
    if not (isinstance(eps, (int, float)) and eps == 0):
        q_sum = jnp.sum(phi_q, axis=-1)  # [b, t, h]
        count = jnp.cumsum(jnp.ones((1, t, 1)) if key_mask is None else key_mask[:, :, None], axis=1)
        num = num + eps * q_sum[..., None] * jnp.cumsum(v.astype(num.dtype), axis=1)
        den = den + eps * q_sum * count.astype(den.dtype)
    num, den = scale * num, scale * den
    # num / max(den, tiny) as in the non-causal form; a query with den = 0 (no unmasked key yet) gives 0, and
    # the inner where keeps its gradient finite (the quotient rule's 1/tiny² overflows).
    tiny = jnp.finfo(jnp.promote_types(phi_q.dtype, jnp.float32)).tiny
    seen = (den > 0)[..., None]  # [b, t, h, 1]
    return jnp.where(seen, num / jnp.where(seen, jnp.maximum(den, tiny)[..., None], 1), 0)


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     feature_map: str | Callable[[jax.Array], jax.Array] = "elu_plus_one",
                     causal: bool = False, chunk_size: int | None = None,
                     key_mask: jax.Array | None = None) -> jax.Array:
    """o_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j), over all j or j ≤ i (causal).

    Args:
      q: [b, t, h, m]; k: [b, s, h, m]; v: [b, s, h, e]. m is the key size (the article: m > head size
        for 'exp').
      feature_map: 'elu_plus_one', 'exp', 'relu' or a callable producing non-negative features.
      causal: attend to j ≤ i only (chunked prefix sums; needs s = t).
      chunk_size: causal chunk size, a divisor of t (default: the largest divisor ≤ 64).
      key_mask: optional [b, s] bool; False keys are dropped (their features are zeroed).

    Returns:
      [b, t, h, e].

    References:
      https://kexue.fm/archives/8338; https://kexue.fm/archives/7546;
      Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236.
    """
    if not callable(feature_map) and feature_map not in FEATURE_MAPS:
        raise ValueError(f"`feature_map` must be one of {FEATURE_MAPS} or a callable; got {feature_map!r}")
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"`{name}` must have rank 4 [b, t, h, m]; got shape {x.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"`k` must have the head dim of `q` ({q.shape[-1]}); got shape {k.shape}")
    chunk_size = check_chunk_size(q.shape[1], k.shape[1], causal=causal, chunk_size=chunk_size)
    # Features in at least float32 (like core.attention's softmax): float16's exp underflows below e^{−17},
    # so a key shift would zero whole rows of features (non-causally: every key 17 below the max).
    dtype = jnp.promote_types(jnp.result_type(q, k), jnp.float32)
    q, k = q.astype(dtype), k.astype(dtype)
    phi_q = _features(q, feature_map, is_query=True)
    if key_mask is not None:
        key_mask = jnp.asarray(key_mask)
        if key_mask.shape != k.shape[:2] or key_mask.dtype != jnp.bool_:
            raise ValueError(f"`key_mask` must be a boolean array of shape {k.shape[:2]}; got shape "
                             f"{key_mask.shape} dtype {key_mask.dtype}")
    if causal and feature_map == "exp":
        # Query i's key shift is the running max over j ≤ i, so no later key can change output i.
        return causal_attention_from_log_features(phi_q, k, v, chunk_size=chunk_size, key_mask=key_mask)
    if key_mask is None:
        phi_k = _features(k, feature_map, is_query=False)
    else:
        m4 = key_mask[:, :, None, None]  # [b, s, 1, 1]
        if feature_map == "exp":
            # The key max must ignore masked keys, or a huge padded key would underflow all real ones.
            k = jnp.where(m4, k, jnp.finfo(k.dtype).min)
        phi_k = jnp.where(m4, _features(k, feature_map, is_query=False), 0)
    return linear_attention_from_features(phi_q, phi_k, v, causal=causal, chunk_size=chunk_size)
