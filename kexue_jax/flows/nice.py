"""NICE: additive couplings and a final scaling layer (kexue.fm/archives/5776).

    h⁽ⁱ⁾ = additive coupling i (x₁ passes, x₂ += m_i(x₁)),   z = exp(k) ⊗ h⁽ⁿ⁾,
    log p(x) = log N(z; 0, I) + Σ k        (every coupling has unit Jacobian).

Su's `nice.py` (MNIST) reverses the 784-vector before each coupling and splits it interleaved (even/odd
indices); for an even length, reversal swaps the parity, so alternating the interleaved mask's parity (as
here) updates the same halves in turn and differs only by a fixed permutation of z, which the factorised
prior does not see. His m ends in a ReLU (m ≥ 0) used by subtraction; here m ends in a zero-initialised
linear layer (the coupling starts as the identity) and adds. His k starts Glorot-normal; here 0.

References:
    https://kexue.fm/archives/5776 (细水长flow之NICE：流模型的基本概念与实现)
    Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", arXiv:1410.8516.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx

from kexue_jax.flows.bijector import (AdditiveCoupling, Chain, Flatten, FlowModel, MLPConditioner, NICEScaling,
                                      _check_int, interleaved_mask)
from kexue_jax.flows.likelihood import check_levels

__all__ = ["NICE"]


class NICE(FlowModel):
    """NICE on [b, *event_shape] data (flattened to D features).

    Args:
      event_shape: shape of one example, e.g. (8, 8, 1).
      num_couplings: number of additive couplings (Su: 4), alternating the interleaved half they update.
      hidden: hidden widths of each coupling's MLP m (Su: 5 × 1000; the digits config: 2 × 256).
      levels: grey levels of the data (for the data-dependent init hook; NICE has no ActNorm).
      rngs: parameter initialisation.
    """

    def __init__(self, *, event_shape: Sequence[int], num_couplings: int = 4, hidden: Sequence[int] = (1000,) * 5,
                 levels: int = 256, rngs: nnx.Rngs):
        self.event_shape = tuple(int(s) for s in event_shape)
        self.levels = check_levels(levels)
        _check_int(num_couplings, "num_couplings", 1)
        d = int(np.prod(self.event_shape))
        if d < 2:
            raise ValueError(f"`event_shape` must have at least 2 elements to split; got {tuple(event_shape)}")
        self.flatten = Flatten(self.event_shape)
        self.couplings = Chain([
            AdditiveCoupling(MLPConditioner(d, d, hidden=hidden, rngs=rngs), mask=interleaved_mask(d, parity=i % 2))
            for i in range(num_couplings)])
        self.scaling = NICEScaling((d,))

    def _forward(self, x):
        h, _ = self.flatten.forward_and_log_det(x)
        h, ld_c = self.couplings.forward_and_log_det(h)
        z, ld_s = self.scaling.forward_and_log_det(h)
        return z, ld_c + ld_s

    def _inverse(self, z):
        h, ld_s = self.scaling.inverse_and_log_det(z)
        h, ld_c = self.couplings.inverse_and_log_det(h)
        return self.flatten.inverse_and_log_det(h)[0], ld_s + ld_c
