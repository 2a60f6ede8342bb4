"""The optimizer ablation on the mnist5k MLP: EG-learned step sizes vs Adam, SGD and the optax tuners.

Article: 指数梯度下降 + 元学习 = 自适应学习率, https://kexue.fm/archives/8968
Paper:   Amid, Anil, Fifty, Warmuth, "Step-size Adaptation Using Exponentiated Gradient Updates",
         arXiv:2202.00145 (2022) (body not readable here: every γ, bound and normalisation is ours).

Command:
    python -m experiments.main --config experiments/optim/eg_mnist5k.py --workdir /tmp/eg_mnist5k
    python -m experiments.main --config experiments/optim/eg_mnist5k.py:smoke --workdir /tmp/eg_mnist5k_s

Setup: the harness of experiments/optim/exponentiated_gradient.py (same optimizer definitions, same γ
per normalisation, same divergence rule and summaries; `kexue_jax.optim.ablation.run`) on the task the
issue names beside the four digits tasks: a 784-128-10 tanh MLP on the 4000 mnist5k training images,
minibatch 64, cross-entropy training loss evaluated on the whole training set. It has its own config
because this task costs ~12× the digits MLP per step: the optimizer list is cut to the bases, the
article's rule, the headline wrapper and one wrapper per normalisation around Adam, and the peers; 6
learning rates 1e-3 … 1, 2 seeds, 1000 steps. Target for "steps to target": training loss 1e-2.
Headline method: `eg_adam_both_mixed`, as in the digits grid (chosen before running).

Expected result: spec optim_math.md §2.6 has no mnist5k prototype numbers; the digits grid found the
wrapper as good as Adam at its best lr but no flatter in lr.

Measured (2026-11-21, 2-core CPU shared with other jobs, `python -m experiments.reproduce --scale full
--only eg_mnist5k`, 192 runs in 445 s, 1 diverged run): final training loss at the best lr (mean of 2
seeds) — Adam 7.7e-4, EG wrapper `eg_adam_both_mixed` 8.8e-4, best peer (schedule_free_adamw) 3.9e-4;
SGD 1.5e-2, the article's `eg_sgd` 1.8e-2. lr sensitivity (max − min of log10 final loss over the 6 lrs):
EG wrapper 2.05 vs Adam 2.37 (eg_sgd 1.92 vs SGD 2.01). So on this task the wrapper is slightly flatter in
lr than Adam but does not reach a lower loss, and the article's rule does not beat plain SGD at its best
lr; schedule-free AdamW is best. Per-run rows: ablation.csv; figures loss_vs_lr.png, steps_to_target.png.
"""
import ml_collections

from experiments.optim import exponentiated_gradient


def get_config(arg=None):
  smoke = arg == "smoke"
  config = exponentiated_gradient.get_config(arg)
  config.article = dict(id="8968", title="指数梯度下降 + 元学习 = 自适应学习率", slug="eg_mnist5k")
  config.reports = [
      dict(metric="mlp_mnist5k/lr_sensitivity/eg_adam_both_mixed",
           reference_metric="mlp_mnist5k/lr_sensitivity/adam"),
      dict(metric="mlp_mnist5k/best_final_loss/article", reference_metric="mlp_mnist5k/best_final_loss/adam"),
      dict(metric="mlp_mnist5k/best_final_loss/article", reference_metric="mlp_mnist5k/best_final_loss/peer"),
  ]
  config.tasks = ["mlp_mnist5k"]
  if smoke:
    config.optimizers = ["adam", "eg_sgd", "eg_adam_both_mixed", "prodigy"]
    config.learning_rates = [1e-2]
    config.num_steps = 10
    config.eval_every = 5
  else:
    config.optimizers = ["sgd", "sgdm", "adam", "eg_sgd", "eg_adam_both_raw", "eg_adam_both_rms",
                         "eg_adam_both_cosine", "eg_adam_both_mixed", "eg_sgd_both_mixed", "hd_sgd", "hd_adam",
                         "prodigy", "dadapt_adamw", "mechanize_adam", "schedule_free_adamw", "rprop"]
    config.learning_rates = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0]
    config.seeds = [0, 1]
    config.num_steps = 1000
    config.eval_every = 50
  config.trajectory_task = "mlp_mnist5k"
  config.trajectory_lr = 1e-2
  config.shift = ml_collections.ConfigDict(dict(enabled=False))  # the shift test is the digits config's
  return config
