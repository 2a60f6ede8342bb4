"""Masked vs naive BiRNN classifier: does the prediction depend on how much padding a batch has?

Article: "让Keras更酷一些！"：层中层与mask, https://kexue.fm/archives/6810 (spec nlp_attention_losses.md §3.3)

Command:
    python -m experiments.main --config experiments/attention/masks.py --workdir /tmp/masks
    python -m experiments.main --config experiments/attention/masks.py:smoke --workdir /tmp/masks_smoke

Setup: generated sequences (ids 1..19, lengths 4-16, label = first token mod 4), padded with 0 to 24 for
training; a tanh BiRNN (embedding 16, hidden 32 each way) + max pooling + linear head, Adam 3e-3, batch 64,
`num_steps` steps, seed 0. "masked" uses Su's rules (`masked_bidirectional_rnn`: the backward RNN runs on
the reversed valid prefix; `masked_max`), "naive" is Keras' Bidirectional without masks (flip the whole
padded sequence, pool over padding too). The 2,000 test sequences are scored padded to 16, 24, 48 and 96.

Expected (spec §3.3): the masked model's accuracy and logits do not change with the padding (exactly, by
construction); the naive one degrades as padding grows past what it was trained on. The article gives no
numbers. Measured: see results/RESULTS.md and README.md.
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.attention.mask_experiments.run"
    config.article = dict(id="6810", title="让Keras更酷一些！层中层与mask", slug="masks")
    config.reports = [
        dict(metric="masked/test_accuracy_len96", reference_metric="masked/test_accuracy_len16"),
        dict(metric="naive/test_accuracy_len96", reference_metric="naive/test_accuracy_len16"),
        dict(metric="masked/max_logit_change_len96", reference=0.0,
             reference_note="exact padding invariance (spec §3.2 check 1)"),
        dict(metric="naive/max_logit_change_len96", reference_metric="masked/max_logit_change_len96"),
    ]
    config.seed = 0
    config.variants = ("masked", "naive")
    config.vocab = 20
    config.num_classes = 4
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
