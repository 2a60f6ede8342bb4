"""Masked vs naive BiRNN classifier: does the prediction depend on how much padding a batch has?

Article: "让Keras更酷一些！"：层中层与mask, https://kexue.fm/archives/6810 (spec nlp_attention_losses.md §3.3)

Command:
    python -m experiments.main --config experiments/attention/masks.py --workdir /tmp/masks
    python -m experiments.main --config experiments/attention/masks.py:smoke --workdir /tmp/masks_smoke

Setup: generated sequences (ids 1..32, lengths 4-16, label = first token mod 16), padded with 0 to 24 for
training; a tanh BiRNN (embedding 16, hidden 32 each way) + max or mean pooling + linear head, Adam 3e-3, batch 64,
`num_steps` steps, seed 0. "masked" uses Su's rules (`masked_bidirectional_rnn`: the backward RNN runs on
the reversed valid prefix; `masked_max`), "naive" is Keras' Bidirectional without masks (flip the whole
padded sequence, max/mean-pool over the padding positions too). The 2,000 test sequences are scored padded to 16, 24, 48 and 96.

Expected (spec §3.3): the masked model's accuracy and logits do not change with the padding (exactly, by
construction); the naive one degrades as padding grows past what it was trained on. The article gives no
numbers.

Measured (2026-11-21, 2-core CPU, 1500 steps, ~20 s per model): test accuracy at padding 16 / 24 / 48 / 96
  masked + max   1.000 / 1.000 / 1.000 / 1.000   largest logit change vs padding 16: 0 (exactly)
  masked + mean  1.000 / 1.000 / 1.000 / 1.000   0 (exactly)
  naive + max    1.000 / 1.000 / 1.000 / 1.000   1.66
  naive + mean   0.830 / 0.826 / 0.720 / 0.554   4.26
so the naive mean pooling -- Keras' GlobalAveragePooling over padding -- loses 28 points at 4× the training
padding, while the naive max pooling keeps its argmax here although its logits move (with 4 classes instead
of 16, all four models reach 1.000 everywhere: the margins absorb the drift).
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.attention.mask_experiments.run"
    config.article = dict(id="6810", title="让Keras更酷一些！层中层与mask", slug="masks")
    config.reports = [
        dict(metric="masked_mean/test_accuracy_len96", reference_metric="masked_mean/test_accuracy_len16"),
        dict(metric="naive_mean/test_accuracy_len96", reference_metric="naive_mean/test_accuracy_len16"),
        dict(metric="masked_max/test_accuracy_len96", reference_metric="masked_max/test_accuracy_len16"),
        dict(metric="naive_max/test_accuracy_len96", reference_metric="naive_max/test_accuracy_len16"),
        dict(metric="masked_max/max_logit_change_len96", reference=0.0,
             reference_note="exact padding invariance (spec §3.2 check 1)"),
        dict(metric="naive_max/max_logit_change_len96", reference_metric="masked_max/max_logit_change_len96"),
    ]
    config.seed = 0
    config.variants = ("masked", "naive")
    config.poolings = ("max", "mean")
    config.vocab = 33
    config.num_classes = 16
    config.min_len = 4
    config.max_len = 16
    config.train_len = 24
    config.test_lens = (16, 24, 48, 96)
    config.embed = 16
    config.hidden = 8 if smoke else 32
    config.learning_rate = 3e-3
    config.batch_size = 16 if smoke else 64
    config.num_steps = 5 if smoke else 1500
    config.test_size = 64 if smoke else 2000
    config.mesh = dict(data=-1)
    return config
