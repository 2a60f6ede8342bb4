"""Momentum as a damped ODE: escaping a shallow minimum, and κ vs √κ iteration counts.

Article: 从动力学角度看优化算法（一）：从SGD到动量加速, https://kexue.fm/archives/5655
Paper:   Polyak, "Some methods of speeding up the convergence of iteration methods" (1964).

Command:
    python -m experiments.main --config experiments/optim/momentum_ode.py --workdir /tmp/momentum
    python -m experiments.main --config experiments/optim/momentum_ode.py:smoke --workdir /tmp/momentum_s

Setup (spec optim_math.md §3.5): (1) L(x) = x⁴/4 − x²/2 + 0.3x from x₀ = 2, heavy ball optax.sgd(α, β)
on an (α, β) grid (β = 0 is GD); the final basin is plotted (escape.png). (2) ½xᵀdiag(λ)x with λ
log-spaced in [1, κ], κ ∈ {10, …, 10⁴}: iterations to ‖x‖ ≤ 1e-6‖x₀‖ for GD at 2/(L+μ), heavy ball at
Polyak's optimal (α, β) and Nesterov (kappa_scaling.png).

Expected result: low-friction momentum (large β) ends in the global basin where GD and high-friction
runs stay in the local one (the article's A→B→C→D picture); the log-log slope of iterations against κ is
≈ 1 for GD and ≈ 0.5 for heavy ball / Nesterov. Measured numbers: README.md / results/RESULTS.md.
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
  return config
