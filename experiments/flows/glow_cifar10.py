"""Glow on CIFAR-10 with the openai/glow settings (accelerator scale); smoke mode runs on embedded digits.

Article: 细水长flow之RealNVP与Glow：流模型的传承与升华, https://kexue.fm/archives/5807
Paper:   Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", arXiv:1807.03039
         (CIFAR-10: 3.35 bits/dim).

Command (needs a user-prepared tfds cifar10, built on a machine with internet by
`tfds build cifar10 --data_dir DIR --file_format array_record`, then KEXUE_JAX_TFDS_DIR=DIR):
    python -m experiments.main --config experiments/flows/glow_cifar10.py --workdir /tmp/glow_cifar10
    python -m experiments.main --config experiments/flows/glow_cifar10.py:smoke --workdir /tmp/glow_c10_smoke

Settings of the openai/glow README command for CIFAR-10 (`--n_level 3 --depth 32 --flow_permutation 2
--flow_coupling 1 --learntop --lr 0.001 --n_bits_x 8`, train.py defaults width 512, Adam, Polyak
averaging, warm-up): 3 levels × 32 steps, width 512, affine coupling with openai/glow's
s = sigmoid(h + 2), LU 1×1 conv (openai/glow's option; its default computes slogdet directly),
learned top and split priors, lr 1e-3 with linear warm-up, EMA of the weights. Batch 64 (openai/glow:
64 per GPU on 8 GPUs). The number of steps to reach 3.35 is not pinned down (the paper trained for
days on 8 GPUs); this config runs `num_steps` and reports the bits/dim reached.

`get_config('smoke')` switches the dataset to the embedded digits (8×8, 2 levels) so that the
two-step smoke test and `make demo` run without CIFAR-10.
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="5807", title="细水长flow之RealNVP与Glow：流模型的传承与升华", slug="glow_cifar10")
    config.reports = [
        dict(metric="test/bpd", reference=3.35, reference_note="Glow paper, CIFAR-10 (8 GPUs, days)"),
        dict(metric="test/bpd", reference_metric="test/baseline_full_gaussian_bpd"),
    ]
    config.seed = 0
    config.dataset = "digits" if smoke else "tfds:cifar10"
    config.data_dir = None
    levels = 17 if smoke else 256
    config.model = "kexue_jax.flows.Glow"
    config.model_kwargs = dict(event_shape=(8, 8, 1) if smoke else (32, 32, 3), num_levels=2 if smoke else 3,
                               depth=2 if smoke else 32, width=16 if smoke else 512, coupling="affine",
                               permutation="lu", conditional_prior=True, learn_top=True, scale_fn="sigmoid",
                               levels=levels)
    config.loss = "kexue_jax.flows.flow_loss"
    config.loss_kwargs = dict(levels=levels)
    config.data_init = "kexue_jax.flows.data_init"
    config.evaluate = "kexue_jax.flows.evaluate"
    config.eval_dequant_samples = 1
    config.eval_batch_size = 500
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "warmup_cosine"
    config.warmup_steps = 1 if smoke else 7800  # openai/glow: 10 warm-up epochs of 50k images at batch 64
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
