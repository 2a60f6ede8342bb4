"""RoPE vs learned absolute positions: length generalisation on a lagged copy (trained at 64, tested at 128).

Article: RoFormerV2：自然语言理解的极限探索, https://kexue.fm/archives/8998 (the README row of RoFormerV2 and
         RoPE, `rope.py`; RoPE itself: 让研究人员绞尽脑汁的Transformer位置编码 / Transformer升级之路：2).
Paper:   Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864.

Command:
    python -m experiments.main --config experiments/attention/rope_copy.py --workdir /tmp/rope_copy
    python -m experiments.main --config experiments/attention/rope_copy.py:smoke --workdir /tmp/rope_copy_smoke

Setup (spec nlp_attention_losses.md §9.6 (c)): a delay line. Tokens x_i are uniform over 32 symbols and
the target at position i is x_{i−8} (positions i ≥ 8 are scored; chance 1/32). The model is a causal
pre-norm transformer built from the repo's `TransformerBlock` (parameter-free RMS norms, relu FFN,
`causal_mask`): 2 layers, d = 64, 2 heads of 32, FFN 256, untied output. Position information is either
RoPE on q and k (interleaved, base 10000; no position table) or a learned absolute table added to the
token embeddings (no RoPE). The learned table has 128 rows so that length-128 inputs can run at all;
rows 64 … 127 are never reached in training (training length 64), get zero gradient and keep their
N(0, 0.02²) initial values. Adam 1e-3, batch 32, 2000 steps at length 64, data-parallel over
`config.mesh`. Measured: per-token copy accuracy on 512 fresh sequences at length 64 and at length 128
(the latter also split into positions 8 … 63 and 64 … 127).

Expected: both schemes solve the task at the training length; at length 128 RoPE keeps its accuracy
(the answer depends on the offset −8 only, and RoPE scores depend on offsets only), while the learned
table fails beyond position 63 (chance-level there), so its length-128 accuracy roughly halves.

Measured (2026-11-21, 2-core CPU, full config, 1 device; rope 172 s, learned 52 s of training on a
shared, loaded machine): per-token copy accuracy (chance 0.031)

    scheme    len 64    len 128    len 128, pos 8-63    len 128, pos 64-127    final train loss
    RoPE      1.000     0.9996     1.000                0.9993                 2.7e-4
    learned   1.000     0.490      1.000                0.044                  2.8e-4

RoPE extrapolates to twice the training length; the learned table is exact inside the trained range
and at chance level on the untrained rows 64 … 127.
"""
import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    config = ml_collections.ConfigDict()
    config.runner = "kexue_jax.attention.experiments.run_rope"
    config.article = dict(id="8998", title="RoFormerV2：自然语言理解的极限探索", slug="rope_copy")
    config.reports = [
        dict(metric="rope_copy/rope/accuracy_len128", reference_metric="rope_copy/learned/accuracy_len128"),
        dict(metric="rope_copy/rope/accuracy_len64", reference_metric="rope_copy/learned/accuracy_len64"),
        dict(metric="rope_copy/learned/accuracy_len128_beyond_train", reference_metric="rope_copy/chance_accuracy"),
    ]
    config.seed = 0
    config.mesh = dict(data=-1)  # data parallel: the batch splits over every device, parameters replicated
    config.positions = ("rope", "learned")
    config.vocab_size = 32
    config.lag = 8
    config.train_length = 64
    config.test_lengths = (64, 128)
    config.d_model = 32 if smoke else 64
    config.num_heads = 2
    config.num_layers = 1 if smoke else 2
    config.ffn_dim = 4 * config.d_model
    config.batch_size = 8 if smoke else 32
    config.learning_rate = 1e-3
    config.num_steps = 4 if smoke else 2000
    config.log_every = 2 if smoke else 100
    config.eval_size = 16 if smoke else 512
    return config
