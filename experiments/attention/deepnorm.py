"""DeepNet's update explosion: the one-step relative output change vs depth, and why residuals help.

Article: 为什么需要残差？一个来自DeepNet的视角, https://kexue.fm/archives/8994
         (optimiser-aware coefficients: 训练1000层的Transformer究竟有什么困难？, https://kexue.fm/archives/8978)
Paper:   Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", arXiv:2203.00555.

Command:
    python -m experiments.main --config experiments/attention/deepnorm.py --workdir /tmp/deepnorm
    python -m experiments.main --config experiments/attention/deepnorm.py:smoke --workdir /tmp/deepnorm_smoke

Setup (spec nlp_attention_losses.md §10.5): post-LN residual MLP stacks of N blocks, each block two FFN
sublayers h ← LN(α h + W2 relu(W1 h)) (the attention + FFN pair of a Transformer block, so 2N sublayers),
d = 32, FFN 4d, Xavier-normal kernels scaled by β, batch 128, random regression targets. Measured: the
relative output change ‖f(θ + Δθ) − f(θ)‖/‖f(θ)‖ on the same batch after ONE optimiser step, mean over
seeds, for N = 6, 24, 96 and
  postln_sgd / postln_adam      α = β = 1 (plain Post-LN), SGD 1e-2 / Adam 1e-3;
  deepnorm_sgd                  the paper's (SGD-derived) α = (2N)^{1/4}, β = (8N)^{-1/4}, SGD 1e-2;
  deepnorm_paper_adam           the same coefficients under Adam 1e-3;
  su_adam                       Su's Adam coefficients α = (2N)^{1/2}, β = (2N)^{-1/2}, Adam 1e-3.
"why residual" (same article): N = 50 layers without normalisation, Adam 1e-3 without warmup, on a random
sin-teacher regression: a plain ReLU MLP (He-stable forward), a residual MLP with ε = 1 and with
ε = 1/√N.

Expected (spec §10.5 prototype, a different random setup): Post-LN's change grows with depth (0.41 → 1.28 →
21.3 under SGD, loss going up at N = 96), DeepNorm under SGD stays flat (0.098 → 0.137), the paper's
coefficients under Adam still grow (0.13 → 0.44), Su's Adam coefficients stay flat (≈ 0.07). The measured
numbers are in README.md / results/RESULTS.md (full scale, 2-core CPU).
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.attention.experiments.run_deepnorm"
    config.article = dict(id="8994", title="为什么需要残差？一个来自DeepNet的视角", slug="deepnorm")
    config.reports = [
        dict(metric="update/postln_sgd/deepest", reference=21.3, reference_note="spec §10.5 prototype (Post-LN, SGD, N=96)"),
        dict(metric="update/deepnorm_sgd/deepest", reference=0.137, reference_note="spec §10.5 prototype (DeepNorm, SGD, N=96)"),
        dict(metric="update/deepnorm_paper_adam/deepest", reference=0.44,
             reference_note="spec §10.5 prototype (paper α, β under Adam, N=96)"),
        dict(metric="update/su_adam/deepest", reference=0.071, reference_note="spec §10.5 prototype (Su's Adam α, β, N=96)"),
        dict(metric="why_residual/residual_eps_inv_sqrt_n/final_loss",
             reference_metric="why_residual/residual_eps_1/final_loss"),
    ]
    config.seed = 0
    config.mesh = dict(data=-1)  # data parallel: the batch splits over every device, parameters replicated
    config.num_seeds = 2 if smoke else 5
    config.d_model = 32
    config.batch_size = 128
    config.depths = (2,) if smoke else (6, 24, 96)
    config.sgd_lr = 1e-2
    config.adam_lr = 1e-3
    config.why_residual_depth = 4 if smoke else 50
    config.why_residual_steps = 5 if smoke else 400
    config.why_residual_lr = 1e-3
    return config
