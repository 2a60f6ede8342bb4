"""Performer's FAVOR+: positive random features whose inner product estimates e^{q·k} without bias.

    e^{q·k} = E_{ω∼N(0, I)}[e^{ω·q − ‖q‖²/2} e^{ω·k − ‖k‖²/2}] ≈ q̃·k̃,
    x̃ = m^{−1/2} (e^{ω_r·x − ‖x‖²/2})_{r=1..m}

Su derives it by writing e^{q·k} through ‖q − k‖, using that a Gaussian's Fourier transform is a
Gaussian, and substituting q → −iq, k → ik, which turns the trigonometric features into positive
exponentials. For iid ω the relative variance of one feature product is e^{‖q+k‖²} − 1, so the relative
mean squared error of q̃·k̃ is (e^{‖q+k‖²} − 1)/m. Orthogonal features draw ω in blocks of d mutually
orthogonal directions (QR of a Gaussian matrix, sign-corrected so the directions are exactly Haar) with
chi(d)-distributed norms ('chi', Google's ortho_scaling=0) or norm √d ('sqrt_dim', ortho_scaling=1).

As in google-research `nonnegative_softmax_kernel_feature_creator`: the data are scaled by d^{−1/4}
(folding softmax's 1/√d into q and k), a max is subtracted before exp (per query row; per (batch, head)
over the sequence and the features for keys, non-causally: causal mode below), and eps is added to every
feature. The subtracted maxima
cancel in the normalised output (Su's lesson 1). Departures: (1) the max is taken of ω·x − ‖x‖²/2, not
of ω·x alone, so a query of large norm no longer underflows to all-zero features (for a query this drops
the e^{−‖q‖²/2} factor entirely, exactly as Su's lesson 1 allows); (2) Google takes the key max over the
whole array, batch included, which couples the examples of a batch; here it is per (batch, head). Projections are drawn from explicit keys: redraw per call by passing a fresh key
(e.g. fold_in(key, step)), or every N steps with `performer_redraw_key`.

Causal mode uses no whole-sequence key max: key j, as seen by query i ≥ j, is shifted by the running max
R_i = max_{j' ≤ i, r} (ω_r·k̂_{j'} − ‖k̂_{j'}‖²/2) per (batch, head), i.e. k̃_j = m^{−1/2}(exp(L_j − R_i) + eps)
with eps still added after the shift. That is Google's formula applied to the prefix k[:i+1] alone, so causal
output i equals the non-causal `performer_attention` on (q_i, k[:i+1], v[:i+1]) (same projection and eps)
and a later key can never change an earlier output. (With the whole-sequence max, eps added after it made a
later key ≳ −log(eps) ≈ 14 above the earlier ones shrink their features to eps: review 2026-11-23, one later
key 17 above moved outputs 0–6 by up to 1.70 with |output| ≈ 0.56.) The prefix sums are rescaled
online-softmax style with factors exp(R_j − R_i) ≤ 1 (`linear.causal_attention_from_log_features`); the
eps part is eps·(Σ_r q̃_ir)·Σ_{j ≤ i} v_j. Non-causal mode keeps Google's whole-sequence (per (batch, head))
max, which `performer_features(is_query=False)` computes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.attention.linear import (causal_attention_from_log_features, check_chunk_size,
                                        linear_attention_from_features)

__all__ = ["performer_projection", "performer_features", "performer_attention", "performer_redraw_key",
           "SCALINGS"]

SCALINGS = ("chi", "sqrt_dim")


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}")
    return int(value)


def performer_projection(key: jax.Array, num_features: int, dim: int, *, orthogonal: bool = True,
                         scaling: str = "chi", dtype=jnp.float32) -> jax.Array:
    """Random projection ω [m, d]: iid N(0, I) rows, or orthogonal blocks of d rows.

    Orthogonal: each block is Qᵀ from G = QR with G a d×d Gaussian and Q's columns multiplied by
    sign(diag R) (this makes Q Haar distributed; plain QR fixes the signs by the algorithm). A final
    partial block takes the first m mod d rows of a fresh block. Row norms: 'chi' draws them as norms of
    d-dimensional Gaussian vectors, so each row is marginally N(0, I); 'sqrt_dim' sets them to √d.

    References:
      https://kexue.fm/archives/7921; https://kexue.fm/archives/8338;
      Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794.
    """
    m = _check_positive_int(num_features, "num_features")
    d = _check_positive_int(dim, "dim")
    if scaling not in SCALINGS:
        raise ValueError(f"`scaling` must be one of {SCALINGS}; got {scaling!r}")
    key_dir, key_norm = jax.random.split(key)
    if not orthogonal:
        return jax.random.normal(key_dir, (m, d), dtype)
    num_blocks = -(-m // d)
    gauss = jax.random.normal(key_dir, (num_blocks, d, d), dtype)  # [blocks, d, d]
    qmat, rmat = jnp.linalg.qr(gauss)  # [blocks, d, d] each
    signs = jnp.sign(jnp.diagonal(rmat, axis1=-2, axis2=-1))  # [blocks, d]
    qmat = qmat * jnp.where(signs == 0, 1, signs)[:, None, :]  # flip columns so diag(R) > 0
    directions = jnp.swapaxes(qmat, -1, -2).reshape(num_blocks * d, d)[:m]  # [m, d], rows orthonormal per block
    if scaling == "chi":
        norms = jnp.linalg.norm(jax.random.normal(key_norm, (m, d), dtype), axis=-1)  # [m]
    else:
        norms = jnp.full((m,), np.sqrt(d), dtype)
    return directions * norms[:, None]


def _log_features(x: jax.Array, projection: jax.Array, *, normalize: bool) -> jax.Array:
    """ω·x − ‖x‖²/2 [b, t, h, m] with x ← x·d^{−1/4} if `normalize` (the log of √m·x̃ before any shift)."""
    if normalize:
        x = x * (x.shape[-1] ** -0.25)
    dash = jnp.einsum("bthd,md->bthm", x, projection.astype(x.dtype))  # [b, t, h, m]
    half_sq_norm = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)  # [b, t, h, 1]
    return dash - half_sq_norm


def performer_features(x: jax.Array, projection: jax.Array, *, is_query: bool, eps: float = 1e-6,
                       normalize: bool = True, stabilize: bool = True) -> jax.Array:
    """FAVOR+ features x̃ = m^{−1/2}(exp(ω·x − ‖x‖²/2 − shift) + eps) with x ← x·d^{−1/4} if `normalize`,
    shift = the max of ω·x − ‖x‖²/2 over the features (queries) or the sequence and features (keys).

    Args:
      x: [b, t, h, d] queries or keys.
      projection: ω [m, d] from `performer_projection`.
      is_query: selects the stabiliser shift: max over the m features per query row; for keys the max
        over the sequence and the features per (batch, head).
      eps: added to each feature (google-research `numerical_stabilizer`, default 1e-6).
      normalize: fold softmax attention's 1/√d into x (False gives the bare kernel e^{q·k}).
      stabilize: subtract the max before exp (False with eps = 0 gives the unbiased estimator itself).

    Returns:
      [b, t, h, m], positive.

    References:
      https://kexue.fm/archives/7921; https://kexue.fm/archives/8338;
      Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794.
    """
    x, projection = jnp.asarray(x), jnp.asarray(projection)
    if x.ndim != 4:
        raise ValueError(f"`x` must have rank 4 [b, t, h, d]; got shape {x.shape}")
    if projection.ndim != 2 or projection.shape[1] != x.shape[-1]:
        raise ValueError(f"`projection` must have shape [m, {x.shape[-1]}]; got shape {projection.shape}")
    if not eps >= 0:
        raise ValueError(f"`eps` must be >= 0; got {eps!r}")
    m = projection.shape[0]
    log_features = _log_features(x, projection, normalize=normalize)  # [b, t, h, m]
    if stabilize:
        axes = (-1,) if is_query else (1, 3)
        log_features = log_features - jax.lax.stop_gradient(jnp.max(log_features, axis=axes, keepdims=True))
    return (jnp.exp(log_features) + eps) * (m ** -0.5)


def performer_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, key: jax.Array | None = None,
                        projection: jax.Array | None = None, num_features: int = 256,
                        orthogonal: bool = True, scaling: str = "chi", causal: bool = False,
                        chunk_size: int | None = None, eps: float = 1e-6) -> jax.Array:
    """FAVOR+ estimate of softmax attention softmax(q kᵀ/√d) v in O(n) (causal: chunked prefix sums).

    o_i = q̃_iᵀ Σ_j k̃_j v_jᵀ / q̃_iᵀ Σ_j k̃_j with q̃, k̃ = `performer_features`.

    Args:
      q: [b, t, h, d]; k: [b, s, h, d]; v: [b, s, h, e].
      key: draws a projection with `performer_projection` (a fresh key per call = redraw per call).
      projection: ω [m, d] to use instead of `key` (exactly one of the two).
      num_features, orthogonal, scaling: the projection drawn from `key` (defaults: Google's 256,
        orthogonal, chi norms).
      causal, chunk_size: as in `linear_attention`; causal keys are shifted by the running max (module
        docstring), so output i equals the non-causal call on (q_i, k[:i+1], v[:i+1]).
      eps: the feature stabiliser.

    Returns:
      [b, t, h, e].

    References:
      https://kexue.fm/archives/7921; https://kexue.fm/archives/8338;
      Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"`{name}` must have rank 4 [b, t, h, d]; got shape {x.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"`k` must have the head dim of `q` ({q.shape[-1]}); got shape {k.shape}")
    if (key is None) == (projection is None):
        raise ValueError(f"`key` or `projection` must be given (exactly one); got key={key is not None}, "
                         f"projection={projection is not None}")
    chunk_size = check_chunk_size(q.shape[1], k.shape[1], causal=causal, chunk_size=chunk_size)
    if projection is None:
        projection = performer_projection(key, num_features, q.shape[-1], orthogonal=orthogonal,
                                          scaling=scaling, dtype=jnp.promote_types(q.dtype, jnp.float32))
    phi_q = performer_features(q, projection, is_query=True, eps=eps)
    if causal:
        # Key features with the running max over j ≤ i as query i's shift: Google's formula on each prefix.
        return causal_attention_from_log_features(phi_q, _log_features(k, projection, normalize=True), v,
                                                  chunk_size=chunk_size, eps=eps,
                                                  scale=projection.shape[0] ** -0.5)
    phi_k = performer_features(k, projection, is_query=False, eps=eps)
    return linear_attention_from_features(phi_q, phi_k, v, causal=causal, chunk_size=chunk_size)


def performer_redraw_key(key: jax.Array, step: jax.Array | int, *, redraw_every: int) -> jax.Array:
    """The projection key for `step` when features are redrawn every `redraw_every` steps.

    fold_in(key, step // redraw_every): constant within a period, fresh across periods; redraw_every=1
    redraws every step (Google's JAX default), a large value approximates a fixed projection.
    """
    n = _check_positive_int(redraw_every, "redraw_every")
    return jax.random.fold_in(key, jnp.asarray(step) // n)
