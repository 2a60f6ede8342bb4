"""Normalizing flows: one bijector contract; NICE, RealNVP, Glow, i-ResNet and the f-VAE
(kexue.fm/archives/5776, 5807, 6482, 5977); uniform and variational (Flow++) dequantisation.

```python
from flax import nnx
from kexue_jax import flows

model = flows.Glow(event_shape=(8, 8, 1), num_levels=2, depth=8, width=64, levels=17, rngs=nnx.Rngs(0))
z, log_det = model.forward_and_log_det(x)          # x [b, 8, 8, 1] -> z [b, 64], log_det [b]
x, log_det = model.inverse_and_log_det(z)
log_p = model.log_prob(x)                           # [b] nats
samples = model.sample(64, key=key, temperature=0.7)
loss, aux = flows.flow_loss(model, {"image": images}, key=key, levels=17)   # bits/dim
```
Every layer follows the same contract (`forward_and_log_det`, `inverse_and_log_det`, log_det [batch]); see
`bijector.py`.
"""
from kexue_jax.flows.bijector import (SCALE_FNS, ActNorm, AdditiveCoupling, AffineCoupling, Bijector, Buffer, Chain,
                                      ConvConditioner, FactorOut, Flatten, FlowModel, Inverse, InvertibleConv1x1,
                                      LearnedPrior, MLPConditioner, NICEScaling, Permute, Squeeze, Unsqueeze,
                                      channel_mask, checkerboard_mask, data_dependent_init, interleaved_mask, squeeze,
                                      standard_normal_log_prob, unsqueeze)
from kexue_jax.flows.fvae import FVAE, POSTERIOR_SCALES, ResidualMLP, fvae_loss, general_loss
from kexue_jax.flows.glow import COUPLINGS, PERMUTATIONS, Glow, GlowStep
from kexue_jax.flows.iresnet import (ConvIResNetBlock, IResNet, IResNetBlock, PowerIterationState, SpectralConv,
                                     SpectralLinear, conv_power_iteration, exact_log_det, fixed_point_inverse,
                                     hutchinson_probes, lipswish, power_iteration, roulette_log_det, series_log_det,
                                     series_truncation_bound, spectral_normalise, with_log_det)
from kexue_jax.flows.likelihood import bits_per_dim, check_levels, dequantize
from kexue_jax.flows.dequant import (DEQUANTIZERS, DequantizedFlow, UniformDequantizer, VariationalDequantizer,
                                     dequantized_terms, importance_weighted_bits_per_dim, variational_bits_per_dim,
                                     variational_flow_loss)
from kexue_jax.flows.nice import NICE
from kexue_jax.flows.realnvp import RealNVP
from kexue_jax.flows.train import data_init, evaluate, flow_loss

__all__ = [
    "VariationalDequantizer", "UniformDequantizer", "DequantizedFlow", "DEQUANTIZERS", "dequantized_terms",
    "variational_bits_per_dim", "importance_weighted_bits_per_dim", "variational_flow_loss",
    "Bijector", "Buffer", "Chain", "Inverse", "Flatten", "Squeeze", "Unsqueeze", "squeeze", "unsqueeze", "Permute",
    "checkerboard_mask", "channel_mask", "interleaved_mask", "ConvConditioner", "MLPConditioner",
    "AdditiveCoupling", "AffineCoupling", "SCALE_FNS", "NICEScaling", "ActNorm", "data_dependent_init",
    "InvertibleConv1x1", "LearnedPrior", "FactorOut", "FlowModel", "standard_normal_log_prob",
    "NICE", "RealNVP", "Glow", "GlowStep", "PERMUTATIONS", "COUPLINGS",
    "check_levels", "dequantize", "bits_per_dim", "flow_loss", "data_init", "evaluate",
    "FVAE", "ResidualMLP", "general_loss", "fvae_loss", "POSTERIOR_SCALES",
    "IResNet", "IResNetBlock", "ConvIResNetBlock", "PowerIterationState", "SpectralLinear", "SpectralConv",
    "power_iteration", "conv_power_iteration", "spectral_normalise", "fixed_point_inverse", "series_log_det",
    "roulette_log_det", "exact_log_det", "hutchinson_probes", "series_truncation_bound", "lipswish", "with_log_det",
]
