"""GAN dynamics on the Dirac GAN: variant × training scheme × regulariser, final ‖θ‖ heatmap.

Article: 从动力学角度看优化算法（四）：GAN的第三个阶段, https://kexue.fm/archives/6583
Paper:   Mescheder, Geiger, Nowozin, "Which Training Methods for GANs do actually Converge?", ICML 2018
         (arXiv:1801.04406); Mescheder et al. 2017 (consensus); Nagarajan & Kolter 2017.

Command:
    python -m experiments.main --config experiments/optim/dirac_gan.py --workdir /tmp/dirac
    python -m experiments.main --config experiments/optim/dirac_gan.py:smoke --workdir /tmp/dirac_s

Setup (spec optim_math.md §4.6): 2-D Dirac GAN, start (φ, θ) = ((0.1, 0.2), (0.2, 0.1)) as in the
author's gan_numeric.py; variants vanilla (non-saturating), wgan (hard ‖φ‖ = 1), wgan_gp with c = 1 and
the zero-centred c = 0 (λ = 0.1), gan_qp (λ = 1, the article's ‖θ‖ form); schemes simultaneous,
alternating, optimistic (OGDA); regularisers none, L2 on D (0.1, the author's weight), zero-centred GP
(0.05, i.e. the same −0.1φ pull), consensus (0.1), Nagarajan–Kolter (0.1), generator EMA (0.999).
Both players: optax.sgd(0.05), 5000 steps. Weights other than the author's L2 are ours.

A run whose ‖θ‖ overflows float32 is reported as inf (simultaneous gan_qp does: the explicit step adds
energy to the slowly decaying continuous orbit).

Expected result (article): vanilla / wgan / gan_qp do not converge without help; zero-centred
penalties (wgan_gp c=0, zero_gp) and L2 on D pull ‖θ‖ towards 0; EMA averages an orbit to near its
centre. Measured numbers: README.md / results/RESULTS.md.
"""
import ml_collections


def get_config(arg=None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.runner = "kexue_jax.optim.dirac_gan_experiments.run"
  config.article = dict(id="6583", title="从动力学角度看优化算法（四）：GAN的第三个阶段", slug="dirac_gan")
  config.reports = [
      dict(metric="vanilla/simultaneous/none/theta_norm", reference_metric="theta0_norm"),
      dict(metric="vanilla/simultaneous/ema/theta_norm", reference_metric="vanilla/simultaneous/none/theta_norm"),
      dict(metric="vanilla/simultaneous/zero_gp/theta_norm", reference_metric="theta0_norm"),
      dict(metric="wgan_gp_c0/simultaneous/none/theta_norm", reference_metric="wgan_gp_c1/simultaneous/none/theta_norm"),
      dict(metric="gan_qp/alternating/l2/theta_norm", reference_metric="gan_qp/alternating/none/theta_norm"),
  ]
  config.variants = ["vanilla", "wgan", "wgan_gp_c1", "wgan_gp_c0", "gan_qp"]
  config.schemes = ["simultaneous", "alternating"] if smoke else ["simultaneous", "alternating", "optimistic"]
  config.regularisers = ["none", "l2", "zero_gp", "ema"] if smoke else [
      "none", "l2", "zero_gp", "consensus", "nk", "ema"]
  config.weights = dict(l2=0.1, zero_gp=0.05, consensus=0.1, nk=0.1)
  config.lr = 0.05
  config.num_steps = 50 if smoke else 5000
  config.ema_decay = 0.999
  config.ode_dt = 0.05
  config.ode_steps = 100 if smoke else 1400
  return config
