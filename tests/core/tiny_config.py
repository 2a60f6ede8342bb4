"""A seconds-long config for the trainer's own tests: an MLP classifier on digits."""
import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.dataset = "digits"
    config.data_dir = None
    config.model = "kexue_jax.nn.mlp.ImageClassifier"
    config.model_kwargs = dict(image_shape=(8, 8, 1), hidden=(32,), num_classes=10, levels=17)
    config.loss = "kexue_jax.nn.mlp.classifier_loss"
    config.loss_kwargs = {}
    config.evaluate = "kexue_jax.nn.mlp.classifier_evaluate"
    config.optimizer = "optax.adam"
    config.optimizer_kwargs = {}
    config.learning_rate = 1e-2
    config.lr_schedule = "constant"
    config.grad_clip_norm = None
    config.ema_decay = 0.9
    config.batch_size = 64
    config.num_steps = 20
    config.log_every = 5
    config.checkpoint_every = 10
    config.keep_checkpoints = 5
    config.eval_every = 0
    config.mesh = dict(data=-1)
    config.progress = False
    return config
