"""RealNVP: affine couplings with checkerboard and channel masks in a multi-scale architecture
(kexue.fm/archives/5807).

Per level (RealNVP paper §3.6): `num_couplings` checkerboard affine couplings (alternating parity) →
squeeze → `num_couplings` channel couplings (alternating halves) → factor out half the channels; after
`num_levels` levels, `num_couplings + 1` checkerboard couplings on what is left. Factored-out halves have a
standard normal prior (`conditional_prior=False`, the paper) or Glow's learned conditional prior.

Departures from the paper, each for a reason: scales are log s = 2·tanh(raw/2) (bounded, the identity at a
zero-initialised conditioner) instead of the paper's learned-scale tanh; no batch normalisation (the
shared trainer carries no batch statistics through the inverse; Glow's ActNorm replaces it there); the
ResNet conditioner is `ConvConditioner(num_blocks=...)`, smaller than the paper's 8 blocks × 64 features.

References:
    https://kexue.fm/archives/5807 (细水长flow之RealNVP与Glow：流模型的传承与升华)
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", arXiv:1605.08803.
"""
from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from kexue_jax.flows.bijector import (AffineCoupling, Chain, ConvConditioner, FactorOut, Flatten, FlowModel,
                                      Squeeze, _check_int, checkerboard_mask)
from kexue_jax.flows.likelihood import check_levels

__all__ = ["RealNVP", "check_image_shape"]


def check_image_shape(event_shape, num_levels: int) -> tuple[int, int, int]:
    shape = tuple(event_shape)
    f = 2 ** num_levels
    if len(shape) != 3 or shape[0] % f or shape[1] % f or min(shape) < 1:
        raise ValueError(f"`event_shape` must be (height, width, channels) with height and width divisible by "
                         f"2**num_levels = {f}; got {shape}")
    return tuple(int(s) for s in shape)


class RealNVP(FlowModel):
    """RealNVP on images [b, h, w, c] -> flat latent [b, h·w·c].

    Args:
      event_shape: (h, w, c), h and w divisible by 2**num_levels.
      num_levels: number of squeeze + factor-out scales (digits: 2).
      num_couplings: couplings per mask type per level (paper: 3).
      width, num_blocks: conditioner width and residual blocks.
      conditional_prior: learned conditional prior on factored-out halves (Glow) instead of N(0, I).
      scale_fn, scale_bound: the bounded scale of `AffineCoupling`.
      levels: grey levels of the data.
    """

    def __init__(self, *, event_shape: Sequence[int], num_levels: int = 2, num_couplings: int = 3, width: int = 64,
                 num_blocks: int = 2, conditional_prior: bool = False, scale_fn: str = "tanh",
                 scale_bound: float = 2.0, levels: int = 256, rngs: nnx.Rngs):
        _check_int(num_levels, "num_levels", 1)
        _check_int(num_couplings, "num_couplings", 1)
        self.event_shape = check_image_shape(event_shape, num_levels)
        self.levels = check_levels(levels)

        def checkerboard(h, w, c, n):
            if h * w == 1:  # no spatial pattern left on a 1×1 image: alternate channel halves instead
                return [AffineCoupling(ConvConditioner(c // 2, 2 * (c - c // 2), width=width, num_blocks=num_blocks,
                                                       rngs=rngs), num_channels=c, parity=i % 2, scale_fn=scale_fn,
                                       scale_bound=scale_bound) for i in range(n)]
            return [AffineCoupling(ConvConditioner(c, 2 * c, width=width, num_blocks=num_blocks, rngs=rngs),
                                   mask=checkerboard_mask(h, w, c, parity=i % 2), scale_fn=scale_fn,
                                   scale_bound=scale_bound) for i in range(n)]

        def build(shape, level):
            h, w, c = shape
            if level == num_levels:
                return Chain(checkerboard(h, w, c, num_couplings + 1) + [Flatten(shape)])
            c4 = 4 * c
            channel = [AffineCoupling(ConvConditioner(c4 // 2, c4, width=width, num_blocks=num_blocks, rngs=rngs),
                                      num_channels=c4, parity=i % 2, scale_fn=scale_fn, scale_bound=scale_bound)
                       for i in range(num_couplings)]
            squeezed = (h // 2, w // 2, c4)
            inner = build((h // 2, w // 2, c4 // 2), level + 1)
            return Chain(checkerboard(h, w, c, num_couplings) + [Squeeze()] + channel +
                         [FactorOut(squeezed, inner, conditional=conditional_prior, rngs=rngs)])

        self.flow = build(self.event_shape, 0)
