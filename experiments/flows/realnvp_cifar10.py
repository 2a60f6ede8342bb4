"""RealNVP on CIFAR-10 at the paper's scale (accelerator scale); smoke mode runs on embedded digits.

Article: 细水长flow之RealNVP与Glow：流模型的传承与升华, https://kexue.fm/archives/5807
Paper:   Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", arXiv:1605.08803
         (CIFAR-10: 3.49 bits/dim).

Command (needs a user-prepared tfds cifar10, built on a machine with internet by
`tfds build cifar10 --data_dir DIR --file_format array_record`, then KEXUE_JAX_TFDS_DIR=DIR):
    python -m experiments.main --config experiments/flows/realnvp_cifar10.py --workdir /tmp/realnvp_cifar10
    python -m experiments.main --config experiments/flows/realnvp_cifar10.py:smoke --workdir /tmp/rnvp_c10_smoke

Setup: the multi-scale RealNVP of `kexue_jax.flows.RealNVP` (per level 3 checkerboard affine couplings ->
squeeze -> 3 channel couplings -> factor out half; then 4 checkerboard couplings on the remainder) with
residual conditioners. What the spec pins down (generative.md §4.2): batch 64, Adam, checkerboard masks
before each squeeze and channel masks after, multi-scale factor-out, residual networks for s and t. The
widths and depths are not pinned down there; this config takes 2 levels (32 -> 16 -> 8) with conditioners of
8 residual blocks × 64 feature maps -- our choice at the paper's scale, not a verified copy of its settings.
Departures: no batch normalisation in the coupling networks and no L2 on the scale parameters (the paper
uses both); bounded scales log s = 2·tanh(raw/2) instead; no horizontal flips. Adam 1e-3 with warm-up and
cosine decay, EMA of the weights, uniform dequantisation y = (x + u)/256. The number of steps to 3.49 is
not known for this setup; the config runs `num_steps` and reports the bits/dim reached, next to the
full-covariance Gaussian fitted in the same run.

`get_config('smoke')` switches the dataset to the embedded digits (8×8, 17 levels) so that the two-step
smoke test and `make demo` run without CIFAR-10.
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="5807", title="细水长flow之RealNVP与Glow：流模型的传承与升华",
                          slug="realnvp_cifar10")
    config.reports = [
        dict(metric="test/bpd", reference=3.49, reference_note="RealNVP paper, CIFAR-10"),
        dict(metric="test/bpd", reference_metric="test/baseline_full_gaussian_bpd"),
    ]
    config.seed = 0
    config.dataset = "digits" if smoke else "tfds:cifar10"
    config.data_dir = None
    levels = 17 if smoke else 256
    config.model = "kexue_jax.flows.RealNVP"
    config.model_kwargs = dict(event_shape=(8, 8, 1) if smoke else (32, 32, 3), num_levels=2,
                               num_couplings=2 if smoke else 3, width=16 if smoke else 64,
                               num_blocks=1 if smoke else 8, conditional_prior=False, scale_fn="tanh",
                               levels=levels)
    config.loss = "kexue_jax.flows.flow_loss"
    config.loss_kwargs = dict(levels=levels)
    config.evaluate = "kexue_jax.flows.evaluate"
    config.eval_dequant_samples = 1
    config.eval_batch_size = 500
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "warmup_cosine"
    config.warmup_steps = 1 if smoke else 2000
    config.grad_clip_norm = 100.0
    config.ema_decay = None if smoke else 0.999
    config.batch_size = 64
    config.num_steps = 20 if smoke else 200_000
    config.log_every = 10 if smoke else 500
    config.checkpoint_every = 20 if smoke else 5000
    config.keep_checkpoints = 2
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = True
    return config
