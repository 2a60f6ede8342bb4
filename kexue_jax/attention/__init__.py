"""Attention and transformer pieces from kexue.fm: one attention op, masks, RoPE, linear attention,
Performer (FAVOR+), DeepNorm, a transformer block with the α-warmup residual, GAU, RoFormerV2, and a GPT
with a KV cache plus jittable decoding (`kexue_jax.attention.decoding`, `.chess`, `.unilm`)."""
from kexue_jax.attention.core import attention
from kexue_jax.attention import decoding
from kexue_jax.attention.deepnorm import (DeepNormCoefficients, deepnorm_coefficients, deepnorm_init,
                                          deepnorm_residual, deepnorm_scale_params)
from kexue_jax.attention.gpt import GPT
from kexue_jax.attention.linear import elu_plus_one, linear_attention, linear_attention_from_features
from kexue_jax.attention.masks import (causal_mask, combine_masks, masked_bidirectional_rnn, masked_max,
                                       masked_mean, masked_softmax, padding_mask, reverse_valid_prefix,
                                       unilm_mask)
from kexue_jax.attention.performer import (performer_attention, performer_features, performer_projection,
                                           performer_redraw_key)
from kexue_jax.attention.rope import apply_rope, rope_frequencies, rope_permutation
from kexue_jax.attention.roformer import (RoFormerV2, RoFormerV2Config, roformer_v2_base,
                                          roformer_v2_initializer, roformer_v2_large, roformer_v2_num_params,
                                          roformer_v2_small)
from kexue_jax.attention.transformer import (FeedForward, GatedAttentionUnit, MultiHeadAttention,
                                             TransformerBlock, layer_norm, rms_norm)

__all__ = [
    "attention",
    "padding_mask", "causal_mask", "unilm_mask", "combine_masks", "masked_mean", "masked_max",
    "masked_softmax", "reverse_valid_prefix", "masked_bidirectional_rnn",
    "apply_rope", "rope_frequencies", "rope_permutation",
    "linear_attention", "linear_attention_from_features", "elu_plus_one",
    "performer_projection", "performer_features", "performer_attention", "performer_redraw_key",
    "DeepNormCoefficients", "deepnorm_coefficients", "deepnorm_residual", "deepnorm_scale_params",
    "deepnorm_init",
    "rms_norm", "layer_norm", "MultiHeadAttention", "FeedForward", "TransformerBlock", "GatedAttentionUnit",
    "RoFormerV2", "RoFormerV2Config", "roformer_v2_small", "roformer_v2_base", "roformer_v2_large",
    "roformer_v2_num_params", "roformer_v2_initializer",
    "GPT", "decoding",
]
