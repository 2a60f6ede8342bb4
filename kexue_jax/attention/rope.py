"""Rotary position embedding (RoPE) in the two layouts in use, and the permutation between them.

With θ_i = base^{−2i/k}, i = 0 … k/2 − 1, position p rotates pair i by the angle p·θ_i:

    (x'_a, x'_b) = (x_a cos pθ_i − x_b sin pθ_i,  x_b cos pθ_i + x_a sin pθ_i)

'interleaved' (RoFormer, bert4keras `apply_rotary_position_embeddings`): pair i = dims (2i, 2i+1).
'half' (GPT-NeoX/LLaMA/MaxText `rotate_half`): pair i = dims (i, i + k/2).
The rotation matrices R_p satisfy R_mᵀ R_n = R_{n−m}, so ⟨R_m q, R_n k⟩ = ⟨q, R_{n−m} k⟩: the score
depends on positions only through n − m. If `perm = rope_permutation(k)` then
apply_rope(x[..., perm], p, convention='half') == apply_rope(x, p, convention='interleaved')[..., perm],
which is how interleaved checkpoints (q/k projection columns, per head) convert to the half layout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["apply_rope", "rope_frequencies", "rope_permutation", "CONVENTIONS"]

CONVENTIONS = ("interleaved", "half")


def rope_frequencies(head_dim: int, *, base: float = 10000.0, dtype=jnp.float32) -> jax.Array:
    """θ_i = base^{−2i/k} for i = 0 … k/2 − 1; returns [k/2]."""
    if not isinstance(head_dim, (int, np.integer)) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"`head_dim` must be a positive even int; got {head_dim!r}")
    if not base > 1:
        raise ValueError(f"`base` must be > 1; got {base!r}")
    return jnp.asarray(base, dtype) ** (-jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim)


def rope_permutation(head_dim: int) -> np.ndarray:
    """Indices taking the interleaved layout to the half layout: [0, 2, 4, …, 1, 3, 5, …], shape [k]."""
    if not isinstance(head_dim, (int, np.integer)) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"`head_dim` must be a positive even int; got {head_dim!r}")
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def apply_rope(x: jax.Array, positions: jax.Array, *, convention: str = "interleaved",
               base: float = 10000.0) -> jax.Array:
    """Rotates each pair of head dimensions of x by p·θ_i (see the module docstring).

    Args:
      x: [t, k], [b, t, k] or [b, t, h, k] (the sequence axis is 0 for rank 2, else 1); k even.
      positions: [t] or [b, t] (b may be 1), integer or float positions.
      convention: 'interleaved' (RoFormer/bert4keras) or 'half' (LLaMA/MaxText).
      base: the θ base (10000 in RoFormer).

    Returns:
      x rotated, same shape and dtype (angles are computed in at least float32).

    References:
      https://kexue.fm/archives/8265; https://kexue.fm/archives/8998;
      Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"`convention` must be one of {CONVENTIONS}; got {convention!r}")
    x = jnp.asarray(x)
    positions = jnp.asarray(positions)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"`x` must have rank 2 [t, k], 3 [b, t, k] or 4 [b, t, h, k]; got shape {x.shape}")
    k = x.shape[-1]
    if k % 2:
        raise ValueError(f"`x` must have an even head dim; got shape {x.shape}")
    seq_axis = 0 if x.ndim == 2 else 1
    t = x.shape[seq_axis]
    if positions.ndim == 1 and positions.shape[0] == t:
        positions = positions[None]  # [1, t]
    elif not (positions.ndim == 2 and x.ndim > 2 and positions.shape[1] == t
              and positions.shape[0] in (1, x.shape[0])):
        raise ValueError(f"`positions` must have shape [t] or [b, t] with t = {t}"
                         f"{'' if x.ndim == 2 else f', b in (1, {x.shape[0]})'}; got shape {positions.shape}")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    theta = rope_frequencies(k, base=base, dtype=dtype)  # [k/2]
    angle = positions.astype(dtype)[:, :, None] * theta[None, None, :]  # [b|1, t, k/2]
    if x.ndim == 2:
        angle = angle[0]  # [t, k/2]
    elif x.ndim == 4:
        angle = angle[:, :, None, :]  # [b|1, t, 1, k/2]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    xf = x.astype(dtype)
    if convention == "interleaved":
        a, b = xf[..., 0::2], xf[..., 1::2]  # [..., k/2] each
        out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)  # [..., k/2, 2]
        out = out.reshape(x.shape)  # [..., k], pairs back to (2i, 2i+1)
    else:
        a, b = xf[..., : k // 2], xf[..., k // 2:]  # [..., k/2] each
        out = jnp.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)  # [..., k]
    return out.astype(x.dtype)
