"""Momentum as a damped ODE: shallow-minimum escape, κ vs √κ, the β rule under lr decay, lr/B as temperature.

Article: 从动力学角度看优化算法（一）：从SGD到动量加速, https://kexue.fm/archives/5655
Paper:   Polyak, "Some methods of speeding up the convergence of iteration methods" (1964).

Command:
    python -m experiments.main --config experiments/optim/momentum_ode.py --workdir /tmp/momentum
    python -m experiments.main --config experiments/optim/momentum_ode.py:smoke --workdir /tmp/momentum_s

Setup (spec optim_math.md §3.5): (1) L(x) = x⁴/4 − x²/2 + 0.3x from x₀ = 2, heavy ball optax.sgd(α, β)
on an (α, β) grid (β = 0 is GD); the final basin is plotted (escape.png). (2) ½xᵀdiag(λ)x with λ
log-spaced in [1, κ], κ ∈ {10, …, 10⁴}: iterations to ‖x‖ ≤ 1e-6‖x₀‖ for GD at 2/(L+μ), heavy ball at
Polyak's optimal (α, β) and Nesterov (kappa_scaling.png).

(3) β-rule ablation (setup ours; the article gives no numbers): a 64-64-10 tanh MLP on digits (1 500
train / 297 test), batch 32 drawn with replacement, optax.sgd(α, momentum=β) (optax convention), α = 0.05
for 1 500 steps then 0.005 for 1 500; β = 0.9 throughout vs β → 1 − 0.1·√0.1 = 0.968 after the decay
(`momentum_schedule`); 8 seeds, each arm with the same initialisation and batches (beta_rule.png).
(4) Temperature: softmax regression on digits with L2 1e-3/2·‖W‖², SGD with replacement from W = 0, 32
chains per cell, lr ∈ {0.05, 0.1, 0.2, 0.4} × B ∈ {8, 16, 32, 64}, every cell run for the same ODE time
lr·steps = 50 (temperature.png).

Measured (2026-11-21, 2-core CPU shared with other jobs, whole config 2 min 3 s wall):
  β-rule, mean over 8 seeds (paired difference rule − fixed ± its standard error):
    final training loss  0.00927 vs 0.01171  (−0.00244 ± 0.00005, lower on every seed)
    test loss            0.0379  vs 0.0398   (−0.0019 ± 0.0003)
    test accuracy        0.9891  vs 0.9895   (−0.0004 ± 0.0004, i.e. no change)
  so the rule gives a small, consistent gain in loss after the decay and none in accuracy.
  Temperature: the weight-noise variance depends on lr/B: cells with equal lr/B differ by 2.1% on
  average (mean |log ratio| 0.021), cells with equal lr by a factor 3.2 (1.17); e.g. lr/B = 0.0125:
  4.95e-4 (lr 0.2, B 16), 5.10e-4 (0.1, 8), 4.98e-4 (0.4, 32). Final training loss: mean gap 0.0009
  between equal-lr/B cells vs 0.0067 between equal-lr cells (losses 0.4535-0.4836).

Expected result: low-friction momentum (large β) ends in the global basin where GD and high-friction
runs stay in the local one (the article's A→B→C→D picture); the log-log slope of iterations against κ is
≈ 1 for GD and ≈ 0.5 for heavy ball / Nesterov (measured in this run: slopes 0.999, 0.535, 0.522). Numbers
of (1)-(2): README.md / results/RESULTS.md.
"""
import ml_collections


def get_config(arg=None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.runner = "kexue_jax.optim.momentum_experiments.run"
  config.article = dict(id="5655", title="从动力学角度看优化算法（一）：从SGD到动量加速", slug="momentum_ode")
  config.reports = [
      dict(metric="escape/hb_final_L", reference_metric="escape/global_min_L"),
      dict(metric="escape/gd_final_L", reference_metric="escape/local_min_L"),
      dict(metric="kappa/slope/gd", reference=1.0,
           reference_note="theory: GD at 2/(L+μ) contracts by (κ−1)/(κ+1) per step, iterations ∝ κ "
                          "(Polyak 1964; Nesterov, Introductory Lectures, 2004, §2.1)"),
      dict(metric="kappa/slope/heavy_ball", reference=0.5,
           reference_note="theory: Polyak's heavy ball contracts by (√κ−1)/(√κ+1), iterations ∝ √κ "
                          "(Polyak 1964)"),
      dict(metric="kappa/slope/nesterov", reference=0.5,
           reference_note="theory: Nesterov's method needs O(√κ log 1/ε) iterations (Nesterov 2004, §2.2)"),
      dict(metric="beta_rule/beta_rule/train_loss", reference_metric="beta_rule/fixed_beta/train_loss"),
      dict(metric="beta_rule/beta_rule/test_accuracy", reference_metric="beta_rule/fixed_beta/test_accuracy"),
      dict(metric="temperature/variance_log_gap/equal_ratio",
           reference_metric="temperature/variance_log_gap/equal_lr"),
      dict(metric="temperature/loss_gap/equal_ratio", reference_metric="temperature/loss_gap/equal_lr"),
  ]
  config.alphas = [0.01, 0.05] if smoke else [0.005, 0.01, 0.02, 0.05, 0.1]
  config.betas = [0.0, 0.9] if smoke else [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
  config.show_alpha = 0.05
  config.show_beta = 0.9
  config.escape_steps = 200 if smoke else 5000
  config.kappas = [10.0, 100.0] if smoke else [10.0, 100.0, 1000.0, 10000.0]
  config.kappa_dim = 100
  config.tol = 1e-6
  config.max_iters = 10000 if smoke else 1000000
  # β-rule ablation (digits MLP, lr ×0.1 at mid-training; the setup is ours, the article has none).
  config.beta_rule_steps = 20 if smoke else 3000
  config.beta_rule_seeds = [0, 1] if smoke else [0, 1, 2, 3, 4, 5, 6, 7]
  config.beta_rule_batch = 32
  config.beta_rule_lr = 0.05
  config.beta_rule_beta = 0.9
  config.beta_rule_decay = 0.1
  config.beta_rule_hidden = 16 if smoke else 64
  # Temperature lr/B (softmax regression on digits, chains from 0, equal ODE time lr·steps per cell).
  config.temperature_lrs = [0.1, 0.2] if smoke else [0.05, 0.1, 0.2, 0.4]
  config.temperature_batches = [8, 16] if smoke else [8, 16, 32, 64]
  config.temperature_time = 0.5 if smoke else 50.0
  config.temperature_chains = 4 if smoke else 32
  config.temperature_weight_decay = 1e-3
  return config
