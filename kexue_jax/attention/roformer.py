"""RoFormerV2 (bert4keras `RoFormerV2`): RoFormer without biases, without norm parameters, with a
depth-aware truncated-normal init.

    h⁰ = RMS(Drop(E_tok[x] + E_seg[s]))                   (no absolute positions)
    hˡ⁺¹ = RMS(hˡ' + Drop(FFN(hˡ'))),  hˡ' = RMS(hˡ + Drop(MHA_RoPE(hˡ)))    (post-norm, α = 1)
    logits = h E_tokᵀ                                      (tied, no output bias)

RMS(x) = x / √(mean(x²) + ε) has no γ or β; MHA has no biases, RoPE (interleaved) on q and k; the FFN is
relu, no biases. Init: truncated normal (±2σ) with std = 1.13684723/√fan · L^{−1/2}, fan = shape[0]
unless shape[0] > 10000 or < 10 (embedding tables), then shape[1]; 1.13684723 = 1/std of N(0,1)
truncated to ±2, so the realised std is 1/√fan · L^{−1/2}. The article's α-warmup residual
Norm(x + α·F(x)) is the `alpha` argument (not in bert4keras; 1 reproduces it).

Parameter count (no pooler, tied output): vocab·H + type_vocab·H + L·(4H² + 2H·FFN).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.attention.masks import combine_masks, padding_mask
from kexue_jax.attention.transformer import TransformerBlock, rms_norm

__all__ = ["RoFormerV2Config", "RoFormerV2", "roformer_v2_initializer", "roformer_v2_num_params",
           "roformer_v2_small", "roformer_v2_base", "roformer_v2_large", "TRUNCATED_NORMAL_STD_CORRECTION"]

# 1 / std of a standard normal truncated to [−2, 2] (bert4keras' constant).
TRUNCATED_NORMAL_STD_CORRECTION = 1.13684723


@dataclasses.dataclass(frozen=True)
class RoFormerV2Config:
    vocab_size: int = 12000
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 6
    intermediate_size: int = 1536
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    norm_eps: float = 1e-7  # Keras' K.epsilon(), the bert4keras default
    hidden_act: str = "relu"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}")
        if not isinstance(self.type_vocab_size, (int, np.integer)) or self.type_vocab_size < 0:
            raise ValueError(f"`type_vocab_size` must be a non-negative int; got {self.type_vocab_size!r}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"`num_heads` must divide hidden_size={self.hidden_size} into even head dims; "
                             f"got {self.num_heads}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1); got {self.dropout_rate!r}")


def roformer_v2_small(**overrides) -> RoFormerV2Config:
    """6 layers, H = 384, 6 heads, FFN 1536: 15,225,600 parameters."""
    return RoFormerV2Config(**{**dict(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1536),
                               **overrides})


def roformer_v2_base(**overrides) -> RoFormerV2Config:
    """12 layers, H = 768, 12 heads, FFN 3072: 94,152,192 parameters."""
    return RoFormerV2Config(**{**dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
                               **overrides})


def roformer_v2_large(**overrides) -> RoFormerV2Config:
    """24 layers, H = 1024, 16 heads, FFN 4096: 314,279,936 parameters."""
    return RoFormerV2Config(**{**dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
                               **overrides})


def roformer_v2_num_params(config: RoFormerV2Config) -> int:
    """vocab·H + type_vocab·H + L·(4H² + 2H·FFN) (spec §9.1)."""
    h = config.hidden_size
    return (config.vocab_size * h + config.type_vocab_size * h
            + config.num_layers * (4 * h * h + 2 * h * config.intermediate_size))


def roformer_v2_initializer(num_layers: int):
    """bert4keras RoFormerV2.initializer: truncated normal, std 1.13684723/√fan · L^{−1/2} (see module doc)."""
    if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f"`num_layers` must be a positive int; got {num_layers!r}")

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        fan = shape[1] if (shape[0] > 10000 or shape[0] < 10) else shape[0]
        std = TRUNCATED_NORMAL_STD_CORRECTION / np.sqrt(fan) * num_layers ** -0.5
        return (std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)).astype(dtype)

    return init


class RoFormerV2(nnx.Module):
    """The RoFormerV2 encoder with its tied MLM head.

    References:
      https://kexue.fm/archives/8998; https://kexue.fm/archives/8265;
      Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864.
    """

    def __init__(self, config: RoFormerV2Config, *, implementation: str | None = None, rngs: nnx.Rngs):
        if not isinstance(config, RoFormerV2Config):
            raise ValueError(f"`config` must be a RoFormerV2Config; got {type(config).__name__}")
        init = roformer_v2_initializer(config.num_layers)
        h = config.hidden_size
        self.token_embedding = nnx.Embed(config.vocab_size, h, embedding_init=init, rngs=rngs)
        self.segment_embedding = (nnx.Embed(config.type_vocab_size, h, embedding_init=init, rngs=rngs)
                                  if config.type_vocab_size > 0 else None)
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs) if config.dropout_rate > 0 else None
        self.layers = nnx.List([
            TransformerBlock(h, config.num_heads, config.intermediate_size, norm="rms", norm_params=False,
                             use_bias=False, placement="post", activation=config.hidden_act,
                             rope="interleaved", dropout_rate=config.dropout_rate, kernel_init=init,
                             norm_eps=config.norm_eps, implementation=implementation, rngs=rngs)
            for _ in range(config.num_layers)])
        self.config = config

    def __call__(self, token_ids: jax.Array, segment_ids: jax.Array | None = None, *,
                 mask: jax.Array | None = None, alpha: float | jax.Array = 1.0,
                 deterministic: bool | None = None) -> jax.Array:
        """Hidden states [b, t, H].

        Args:
          token_ids: [b, t] ints; id 0 is padding and is masked as a key.
          segment_ids: [b, t] ints (default zeros).
          mask: extra attention mask ([t, s], [b, t, s] or [b, h, t, s]), e.g. `unilm_mask(segment_ids)`,
            combined with the key padding mask.
          alpha: the residual-branch weight α of every block (the article's warmup; 1 = bert4keras).
          deterministic: disables dropout.
        """
        token_ids = jnp.asarray(token_ids)
        if token_ids.ndim != 2 or not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise ValueError(f"`token_ids` must be an integer array [b, t]; got shape {token_ids.shape} "
                             f"dtype {token_ids.dtype}")
        x = self.token_embedding(token_ids)  # [b, t, H]
        if self.segment_embedding is not None:
            seg = jnp.zeros_like(token_ids) if segment_ids is None else jnp.asarray(segment_ids)
            if seg.shape != token_ids.shape:
                raise ValueError(f"`segment_ids` must have shape {token_ids.shape}; got {seg.shape}")
            x = x + self.segment_embedding(seg)
        if self.dropout is not None:
            x = self.dropout(x, deterministic=deterministic)
        x = rms_norm(x, eps=self.config.norm_eps)
        full_mask = combine_masks(padding_mask(token_ids)[:, None, :], mask)  # [b, t|1, s]
        for layer in self.layers:
            x = layer(x, mask=full_mask, alpha=alpha, deterministic=deterministic)
        return x

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        """Tied output: hidden [b, t, H] @ E_tokᵀ -> [b, t, vocab], no bias."""
        return self.token_embedding.attend(hidden)
