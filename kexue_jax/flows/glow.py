"""Glow: ActNorm → invertible 1×1 conv → coupling, in a multi-scale architecture (kexue.fm/archives/5807).

Per level: squeeze → `depth` steps → factor out half the channels with the learned conditional prior
p(z_i | z_{i+1}) (the detail Su stresses is in the code, not the paper); the last level ends with the
learned top prior (`learn_top`). The coupling network is conv3×3 → ReLU → conv1×1 → ReLU → conv3×3
(zero-initialised). The openai/glow CIFAR-10 settings: 3 levels, depth 32, width 512, affine coupling,
1×1 conv (LU here), learned top prior, lr 1e-3, n_bits_x 8.

Departures: the affine scale defaults to log s = 2·tanh(raw/2), the identity at init, instead of
openai/glow's sigmoid(raw + 2) (available as `scale_fn='sigmoid'`); ActNorm has no logscale_factor.
Su's Keras port uses additive couplings and a random channel shuffle (`coupling='additive'`,
`permutation='shuffle'`).

References:
    https://kexue.fm/archives/5807 (细水长flow之RealNVP与Glow：流模型的传承与升华)
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", arXiv:1807.03039.
"""
from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from kexue_jax.flows.bijector import (ActNorm, AdditiveCoupling, AffineCoupling, Bijector, Chain, ConvConditioner,
                                      FactorOut, Flatten, FlowModel, InvertibleConv1x1, LearnedPrior, Permute,
                                      Squeeze, _check_int)
from kexue_jax.flows.likelihood import check_levels
from kexue_jax.flows.realnvp import check_image_shape

__all__ = ["Glow", "GlowStep", "PERMUTATIONS", "COUPLINGS"]

PERMUTATIONS = ("lu", "conv", "shuffle", "reverse")
COUPLINGS = ("affine", "additive")


class GlowStep(Bijector):
    """One step of flow: ActNorm → channel mixing (1×1 conv or a fixed permutation) → coupling."""

    def __init__(self, num_channels: int, *, width: int, coupling: str = "affine", permutation: str = "lu",
                 scale_fn: str = "tanh", seed: int = 0, rngs: nnx.Rngs):
        if permutation not in PERMUTATIONS:
            raise ValueError(f"`permutation` must be one of {list(PERMUTATIONS)}; got {permutation!r}")
        if coupling not in COUPLINGS:
            raise ValueError(f"`coupling` must be one of {list(COUPLINGS)}; got {coupling!r}")
        c = _check_int(num_channels, "num_channels", 2)
        self.actnorm = ActNorm(c)
        if permutation in ("lu", "conv"):
            self.mix: Bijector = InvertibleConv1x1(c, lu=permutation == "lu", rngs=rngs)
        elif permutation == "shuffle":
            self.mix = Permute.shuffle(c, seed=seed)
        else:
            self.mix = Permute.reverse(c)
        if coupling == "affine":
            net = ConvConditioner(c // 2, 2 * (c - c // 2), width=width, rngs=rngs)
            self.coupling: Bijector = AffineCoupling(net, num_channels=c, scale_fn=scale_fn)
        else:
            net = ConvConditioner(c // 2, c - c // 2, width=width, rngs=rngs)
            self.coupling = AdditiveCoupling(net, num_channels=c)

    def forward_and_log_det(self, x):
        total = 0.0
        for layer in (self.actnorm, self.mix, self.coupling):
            x, ld = layer.forward_and_log_det(x)
            total = total + ld
        return x, total

    def inverse_and_log_det(self, y):
        total = 0.0
        for layer in (self.coupling, self.mix, self.actnorm):
            y, ld = layer.inverse_and_log_det(y)
            total = total + ld
        return y, total


class Glow(FlowModel):
    """Glow on images [b, h, w, c] -> flat latent [b, h·w·c].

    Args:
      event_shape: (h, w, c), h and w divisible by 2**num_levels.
      num_levels: L (openai/glow CIFAR-10: 3; digits: 2).
      depth: K steps per level (CIFAR-10: 32; digits: 8).
      width: coupling network width (CIFAR-10: 512).
      coupling: 'affine' or 'additive'.
      permutation: 'lu' (LU 1×1 conv), 'conv' (plain 1×1 conv), 'shuffle' or 'reverse'.
      conditional_prior: learned conditional prior on factored-out halves (True) or N(0, I).
      learn_top: learned per-channel mean/scale of the top prior.
      scale_fn: the affine scale bound of `AffineCoupling`.
      levels: grey levels of the data (the data-dependent init dequantises with it).
    """

    def __init__(self, *, event_shape: Sequence[int], num_levels: int = 3, depth: int = 32, width: int = 512,
                 coupling: str = "affine", permutation: str = "lu", conditional_prior: bool = True,
                 learn_top: bool = True, scale_fn: str = "tanh", levels: int = 256, rngs: nnx.Rngs):
        if permutation not in PERMUTATIONS:
            raise ValueError(f"`permutation` must be one of {list(PERMUTATIONS)}; got {permutation!r}")
        if coupling not in COUPLINGS:
            raise ValueError(f"`coupling` must be one of {list(COUPLINGS)}; got {coupling!r}")
        _check_int(num_levels, "num_levels", 1)
        _check_int(depth, "depth", 1)
        self.event_shape = check_image_shape(event_shape, num_levels)
        self.levels = check_levels(levels)

        def build(shape, level):
            h, w, c = shape
            c4 = 4 * c
            layers: list[Bijector] = [Squeeze()]
            layers += [GlowStep(c4, width=width, coupling=coupling, permutation=permutation, scale_fn=scale_fn,
                                seed=1000 * level + k, rngs=rngs) for k in range(depth)]
            squeezed = (h // 2, w // 2, c4)
            if level == num_levels - 1:
                layers += ([LearnedPrior(c4)] if learn_top else []) + [Flatten(squeezed)]
            else:
                inner = build((h // 2, w // 2, c4 // 2), level + 1)
                layers.append(FactorOut(squeezed, inner, conditional=conditional_prior, rngs=rngs))
            return Chain(layers)

        self.flow = build(self.event_shape, 0)
