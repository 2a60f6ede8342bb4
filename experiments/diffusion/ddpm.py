"""DDPM on 8×8 digits (default) or mnist5k: sample grid, ELBO in bits/dim, FD-digits and class coverage.

Article: 生成扩散模型漫谈（二）：DDPM = 自回归式VAE, https://kexue.fm/archives/9152
Paper:   Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv 2006.11239).

Command:
    python -m experiments.main --config experiments/diffusion/ddpm.py --workdir /tmp/ddpm_digits
    python -m experiments.main --config experiments/diffusion/ddpm.py:mnist5k --workdir /tmp/ddpm_mnist
    python -m experiments.main --config experiments/diffusion/ddpm.py:smoke --workdir /tmp/ddpm_smoke

Setup: the author's simplified U-Net (kexue_jax/nn/unet.py: additive skips, GroupNorm, learned time table, no
attention) scaled down (E = 32, multipliers (1, 2, 2), 1 block per level; pooling 8 → 4 → 2 for digits,
28 → 14 → 7 for mnist5k), T = 1000 with α_t = √(1 − 0.02 t/T), the blog's sum-of-squares ε loss, Adam with
warm-up + cosine decay (the article used LAMB with a piecewise schedule), EMA 0.999 of the weights as in the
article's sampling from EMA weights. Images are dequantised to [−1, 1] (x₀ = 2(x + u)/levels − 1). Evaluation:
−ELBO in bits/dim on the test split (stratified over 100 of the 1000 steps) next to the diagonal/full
Gaussian baselines on the same split; samples with σ_t = β_t; FD-digits (Fréchet distance in the penultimate
features of an in-repo MLP classifier trained on the same training split — NOT comparable to Inception FID)
of the samples and of the test split against the training split; class coverage and histogram entropy.

Expected result: see results/RESULTS.md (measured on a 2-core CPU).
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    mnist = arg == "mnist5k"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="9152", title="生成扩散模型漫谈（二）：DDPM = 自回归式VAE", slug="ddpm")
    config.reports = [
        dict(metric="test/neg_elbo_bpd", reference_metric="test/baseline_full_gaussian_bpd"),
        dict(metric="test/fd", reference_metric="test/fd_data"),
        dict(metric="test/class_entropy", reference_metric="test/class_entropy_data"),
    ]
    config.seed = 0
    config.dataset = "mnist5k" if mnist else "digits"
    config.data_dir = None
    size, levels = (28, 256) if mnist else (8, 17)
    config.model = "kexue_jax.nn.unet.UNet"
    if smoke:
        unet = dict(embedding_size=8, channel_multipliers=(1,), blocks=1, min_pixel=4, num_groups=4)
    else:
        unet = dict(embedding_size=32, channel_multipliers=(1, 2, 2), blocks=1, min_pixel=7 if mnist else 2,
                    num_groups=8)
    config.model_kwargs = dict(image_size=size, in_channels=1, time_embedding="learned", num_embeddings=1001, **unet)
    config.loss = "kexue_jax.diffusion.ddpm.ddpm_loss"
    config.loss_kwargs = dict(schedule="article", num_timesteps=1000, weighting="simple", levels=levels)
    config.evaluate = "kexue_jax.diffusion.ddpm.evaluate"
    config.eval_num_samples = 20 if smoke else (200 if mnist else 500)
    config.eval_batch_size = 20 if smoke else (200 if mnist else 500)
    config.elbo_num_t = 10 if smoke else 100
    config.eval_sigma = "beta"
    config.classifier_steps = 20 if smoke else 2000
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "warmup_cosine"
    config.warmup_steps = 1 if smoke else 200
    config.grad_clip_norm = 1.0 if smoke else None
    config.ema_decay = None if smoke else 0.999
    config.batch_size = 64 if smoke else 128
    config.num_steps = 20 if smoke else (4000 if mnist else 6000)
    config.log_every = 10 if smoke else 200
    config.checkpoint_every = 20 if smoke else 2000
    config.keep_checkpoints = 2
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = True
    return config
