"""VAE (VIII): density of digits by importance sampling; IWAE-trained VAE vs closed-form Gaussians.

Article: 变分自编码器（八）：估计样本概率密度, https://kexue.fm/archives/8791
Paper:   Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders" (arXiv 1509.00519).

Command:
    python -m experiments.main --config experiments/vae/importance.py --workdir /tmp/iwae
    python -m experiments.main --config experiments/vae/importance.py:smoke --workdir /tmp/iwae_smoke

Setup (spec generative.md §10.5): scikit-learn's 8×8 digits (17 grey levels, 1500/297 split),
dequantised y = (x + u)/17; a VAE with a 16-D latent, MLP 64 → 256 → 16, Gaussian decoder with a learned
per-pixel σ̃, trained with the K = 5 importance-sampled objective (the article's estimator used as the
loss), Adam 1e-3. Test log q(x) is estimated with K = 5000 importance samples and reported in bits/dim
next to the diagonal- and full-covariance Gaussian baselines fitted in the same run on the same split
(spec values 3.38 and 2.95 bits/dim).

Expected result: see results/RESULTS.md (full scale on a 2-core CPU). A working density model beats the
diagonal Gaussian; the spec's goal is to approach or beat the full-covariance Gaussian.
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="8791", title="变分自编码器（八）：估计样本概率密度", slug="importance")
    config.reports = [
        dict(metric="test/nll_iwae_bpd", reference_metric="test/baseline_full_gaussian_bpd"),
        dict(metric="test/nll_iwae_bpd", reference_metric="test/baseline_diagonal_gaussian_bpd"),
        dict(metric="test/neg_elbo_bpd", reference_metric="test/nll_iwae_bpd"),
    ]
    config.seed = 0
    config.dataset = "digits"
    config.data_dir = None
    config.model = "kexue_jax.vae.vae.VAE"
    config.model_kwargs = dict(data_shape=(8, 8, 1), latent_dim=16, hidden=(256,), likelihood="gaussian",
                               decoder_scale="learned_pixel")
    config.loss = "kexue_jax.vae.importance.iwae_loss"
    config.loss_kwargs = dict(num_samples=5, levels=17)
    config.evaluate = "kexue_jax.vae.vae.evaluate"
    config.eval_num_samples = 100 if smoke else 5000
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "constant"
    config.grad_clip_norm = None
    config.ema_decay = None
    config.batch_size = 100
    config.num_steps = 20 if smoke else 15000
    config.log_every = 10 if smoke else 500
    config.checkpoint_every = 20 if smoke else 5000
    config.keep_checkpoints = 2
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = True
    return config
