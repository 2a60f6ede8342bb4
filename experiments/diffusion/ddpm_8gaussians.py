"""DDPM on 8gaussians: energy distance of samples to held-out data vs the data-vs-data value.

Article: 生成扩散模型漫谈（二）：DDPM = 自回归式VAE, https://kexue.fm/archives/9152
Paper:   Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv 2006.11239).

Command:
    python -m experiments.main --config experiments/diffusion/ddpm_8gaussians.py --workdir /tmp/ddpm_8g
    python -m experiments.main --config experiments/diffusion/ddpm_8gaussians.py:smoke --workdir /tmp/ddpm_8g_smoke

Setup (spec generative.md §11.5): ε-predictor MLP on [x, learned embedding(t)] (3 × 128, swish), T = 1000 with the
article's α_t = √(1 − 0.02 t/T), the blog's sum-of-squares loss without the per-step weight, Adam 1e-3, batch
512. Evaluation draws 2000 samples with each σ_t choice (β_t and β̄_{t−1}β_t/β̄_t) and computes the energy
distance to the 2000 test points; the reference is the same statistic between 2000 training points and the
test points, computed in the same run (what a perfect sampler would get up to sampling noise).

Expected result: see results/RESULTS.md (measured on a 2-core CPU).
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="9152", title="生成扩散模型漫谈（二）：DDPM = 自回归式VAE", slug="ddpm")
    config.reports = [
        dict(metric="test/energy_distance_beta", reference_metric="test/energy_distance_data"),
        dict(metric="test/energy_distance_posterior", reference_metric="test/energy_distance_data"),
    ]
    config.seed = 0
    config.dataset = "8gaussians"
    config.data_dir = None
    config.model = "kexue_jax.diffusion.ddpm.TimeMLP"
    config.model_kwargs = dict(data_dim=2, num_embeddings=1001, embedding_size=128, hidden=(128, 128, 128))
    config.loss = "kexue_jax.diffusion.ddpm.ddpm_loss"
    config.loss_kwargs = dict(schedule="article", num_timesteps=1000, weighting="simple")
    config.evaluate = "kexue_jax.diffusion.ddpm.evaluate"
    config.eval_num_samples = 200 if smoke else 2000
    config.eval_batch_size = 200 if smoke else 2000
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "cosine"
    config.grad_clip_norm = None
    config.ema_decay = None if smoke else 0.999
    config.batch_size = 512
    config.num_steps = 20 if smoke else 15000
    config.log_every = 10 if smoke else 500
    config.checkpoint_every = 20 if smoke else 5000
    config.keep_checkpoints = 2
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = True
    return config
