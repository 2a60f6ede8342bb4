"""EG-learned step sizes vs optax step-size tuners: the optimizer × task × lr × seed ablation.

Article: 指数梯度下降 + 元学习 = 自适应学习率, https://kexue.fm/archives/8968
Paper:   Amid, Anil, Fifty, Warmuth, "Step-size Adaptation Using Exponentiated Gradient Updates",
         arXiv:2202.00145 (2022) (body not readable here: every γ, bound and normalisation is ours).
Peers:   Baydin et al. 2018 (hypergradient descent); optax.contrib prodigy, dadapt_adamw, mechanize,
         schedule_free_adamw; optax.rprop.

Command:
    python -m experiments.main --config experiments/optim/exponentiated_gradient.py --workdir /tmp/eg
    python -m experiments.main --config experiments/optim/exponentiated_gradient.py:smoke --workdir /tmp/eg_s

Setup (spec optim_math.md §2.6): tasks = ill-conditioned quadratic (κ = 100, d = 50, rotated), Rosenbrock
(start (−1.2, 1) + 0.05 N), logistic regression and a 64-64-10 tanh MLP on sklearn digits (1500 train,
minibatch 64); learning rates 1e-3 … 3; 3 seeds; the EG wrapper `eg_step_size_adaptation` around
sgd / sgd-momentum / adam with gains, scale or both and raw / rms / cosine / mixed (gains rms + scale
cosine) normalisation; the article's `eg_sgd`; the peers above. Writes ablation.csv (one row per run),
loss_vs_lr.png, steps_to_target.png, trajectories.png, shift.png. The distribution-shift test permutes
the digit labels at mid-training and counts the steps to get back to the pre-shift training loss.

Headline method: `eg_adam_both_mixed` (chosen before running: spec §2.3 says rms gains + cosine scale is
what made the prototype work). Reported: its lr sensitivity (max − min over the lr grid of
log10 final loss, diverged runs counted at their initial loss, losses below the task's target counted
at the target) against plain Adam's, both measured in
the same run, and the best final loss of the article family against Adam's and against the best peer.

Expected result: see README.md / results/RESULTS.md for the measured numbers (full scale, 2-core CPU).
"""
import ml_collections

BASES = ("sgd", "sgdm", "adam")


def get_config(arg=None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.runner = "kexue_jax.optim.ablation.run"
  config.article = dict(id="8968", title="指数梯度下降 + 元学习 = 自适应学习率", slug="exponentiated_gradient")
  config.headline = "eg_adam_both_mixed"
  config.reports = [
      dict(metric="mlp_digits/lr_sensitivity/eg_adam_both_mixed",
           reference_metric="mlp_digits/lr_sensitivity/adam"),
      dict(metric="mlp_digits/best_final_loss/article", reference_metric="mlp_digits/best_final_loss/adam"),
      dict(metric="mlp_digits/best_final_loss/article", reference_metric="mlp_digits/best_final_loss/peer"),
      dict(metric="quadratic/lr_sensitivity/eg_adam_both_mixed",
           reference_metric="quadratic/lr_sensitivity/adam"),
      dict(metric="shift/recovery_steps/eg_adam", reference_metric="shift/recovery_steps/adam"),
      dict(metric="shift/recovery_steps/eg_adam_cosine", reference_metric="shift/recovery_steps/adam_cosine"),
  ]
  if smoke:
    config.tasks = ["quadratic", "mlp_digits"]
    config.optimizers = ["sgd", "adam", "eg_sgd", "eg_adam_both_mixed", "prodigy"]
    config.learning_rates = [1e-2, 1e-1]
    config.seeds = [0]
    config.num_steps = 20
    config.eval_every = 10
  else:
    config.tasks = ["quadratic", "rosenbrock", "logreg_digits", "mlp_digits"]
    eg = [f"eg_{b}_both_{n}" for b in BASES for n in ("raw", "rms", "cosine", "mixed")]
    eg += [f"eg_{b}_gains_rms" for b in BASES] + [f"eg_{b}_scale_cosine" for b in BASES]
    config.optimizers = ["sgd", "sgdm", "adam", "eg_sgd"] + eg + [
        "hd_sgd", "hd_adam", "prodigy", "dadapt_adamw", "mechanize_adam", "schedule_free_adamw", "rprop"]
    config.learning_rates = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0]
    config.seeds = [0, 1, 2]
    config.num_steps = 1500
    config.eval_every = 25
  # γ per normalisation (ours; the paper's are unknown). raw: units of gradient² (Su's form).
  config.gammas = dict(raw=1.0, rms=0.05, cosine=0.02, mixed=0.05, eg_sgd=1.0, hd_additive=1e-3,
                       hd_multiplicative=0.02)
  config.quadratic_kappa = 100.0
  config.targets = dict(quadratic=1e-6, rosenbrock=1e-6, logreg_digits=1e-3, mlp_digits=1e-3, mlp_mnist5k=1e-2)
  config.divergence_factor = 10.0
  config.trajectory_task = "mlp_digits"
  config.trajectory_lr = 1e-2
  config.shift = dict(enabled=True, num_steps=40 if smoke else 1500, eval_every=5 if smoke else 10, lr=1e-2,
                      level=0.1)
  config.progress = not smoke
  return config
