"""DDPM on CIFAR-10 with the author's U-Net sizes (accelerator scale); smoke mode runs on embedded digits.

Article: 生成扩散模型漫谈（二）：DDPM = 自回归式VAE, https://kexue.fm/archives/9152
Paper:   Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv 2006.11239): unconditional
         CIFAR-10 Inception Score 9.46, FID 3.17 (800k steps at batch 128 on a TPU v3-8).

Command (needs a user-prepared tfds cifar10, built on a machine with internet by
`tfds build cifar10 --data_dir DIR --file_format array_record`, then KEXUE_JAX_TFDS_DIR=DIR; without it the
run stops at once with FileNotFoundError naming that command):
    python -m experiments.main --config experiments/diffusion/ddpm_cifar10.py --workdir /tmp/ddpm_cifar10
    python -m experiments.main --config experiments/diffusion/ddpm_cifar10.py:smoke --workdir /tmp/ddpm_c10_smoke

Setup: the article's DDPM exactly as experiments/diffusion/ddpm.py runs it on digits (T = 1000 with
α_t = √(1 − 0.02 t/T), the blog's sum-of-squares ε loss, images dequantised to [−1, 1], samples with σ_t = β_t
from the EMA weights), with the sizes of the author's simplified U-Net (spec generative.md §11.2, bojone/
Keras-DDPM ddpm.py; `kexue_jax.nn.unet.article_unet_kwargs()`): embedding size E = 128, channel multipliers
(1, 1, 2, 2, 4, 4), 2 residual blocks per level, 2×2 average pooling down to `min_pixel` = 4 (32 → 16 → 8 → 4;
the last three levels stay at 4×4), additive skips, GroupNorm with 32 groups, no attention, a learned
(T + 1) × 128 time table. Batch 64 and lr 1e-3 with 4k warm-up steps and EMA 0.9999 as the article; two
departures: Adam in place of the article's LAMB-style optimiser, and warm-up + cosine decay in place of its
piecewise-linear schedule (0.5 at 20k, 0.1 at 40k steps), because the shared trainer offers these.
Evaluation (kexue_jax.diffusion.ddpm.evaluate): −ELBO in bits/dim on the test split (stratified over 100 of
the 1000 steps) next to the full-Gaussian baseline; 1000 samples; the Fréchet distance in the features of an
in-repo MLP classifier trained on the CIFAR-10 training split (NOT Inception FID: not comparable to the
paper's 3.17) next to the same statistic for the test split, and the predicted class coverage/entropy.

`get_config('smoke')` switches to the embedded digits (8×8) and a tiny U-Net so the two-step smoke test and
`make demo` run offline.

Measured result: none. No GPU was available for this work (2026-11-21; only a shared 2-core CPU, on which
this config would take weeks), so no CIFAR-10 number and no accelerator images/s have been measured; only
the smoke mode has been run. Throughput of this config's step and of every sampler is one command on any
device, with random weights and no dataset: `python -m benchmarks.diffusion_throughput --model cifar10`.
On the 2-core CPU (2026-11-23, batch 8) it gives training 7.3 images/s and 3.7–4.6 images/s for each sampler
at NFE 10 (stand-ins only; the benchmark's docstring has the setup).
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="9152", title="生成扩散模型漫谈（二）：DDPM = 自回归式VAE", slug="ddpm_cifar10")
    config.reports = [
        dict(metric="test/neg_elbo_bpd", reference_metric="test/baseline_full_gaussian_bpd"),
        dict(metric="test/fd", reference_metric="test/fd_data"),
        dict(metric="test/class_entropy", reference_metric="test/class_entropy_data"),
    ]
    config.seed = 0
    config.dataset = "digits" if smoke else "tfds:cifar10"
    config.data_dir = None
    size, channels, levels = (8, 1, 17) if smoke else (32, 3, 256)
    config.model = "kexue_jax.nn.unet.UNet"
    if smoke:
        unet = dict(embedding_size=8, channel_multipliers=(1,), blocks=1, min_pixel=4, num_groups=4)
    else:  # the author's sizes (= kexue_jax.nn.unet.article_unet_kwargs())
        unet = dict(embedding_size=128, channel_multipliers=(1, 1, 2, 2, 4, 4), blocks=2, min_pixel=4,
                    num_groups=32)
    config.model_kwargs = dict(image_size=size, in_channels=channels, time_embedding="learned",
                               num_embeddings=1001, **unet)
    config.loss = "kexue_jax.diffusion.ddpm.ddpm_loss"
    config.loss_kwargs = dict(schedule="article", num_timesteps=1000, weighting="simple", levels=levels)
    config.evaluate = "kexue_jax.diffusion.ddpm.evaluate"
    config.eval_num_samples = 20 if smoke else 1000
    config.eval_batch_size = 20 if smoke else 250
    config.elbo_num_t = 10 if smoke else 100
    config.eval_sigma = "beta"
    config.classifier_steps = 20 if smoke else 5000
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "warmup_cosine"
    config.warmup_steps = 1 if smoke else 4000
    config.grad_clip_norm = 1.0
    config.ema_decay = None if smoke else 0.9999
    config.batch_size = 64
    config.num_steps = 20 if smoke else 200_000
    config.log_every = 10 if smoke else 500
    config.checkpoint_every = 20 if smoke else 5000
    config.keep_checkpoints = 2
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = True
    return config
