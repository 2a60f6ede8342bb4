"""UniLM seq2seq reading comprehension with the per-step passage vote, on generated multi-passage QA.

Article: 万能的seq2seq：基于seq2seq的阅读理解问答, https://kexue.fm/archives/7115 (bert4keras
         examples/task_reading_comprehension_by_seq2seq.py; spec nlp_attention_losses.md §1)

Command:
    python -m experiments.main --config experiments/attention/unilm_reading_comprehension.py --workdir /tmp/unilm
    python -m experiments.main --config experiments/attention/unilm_reading_comprehension.py:smoke --workdir /tmp/u_s

Setup (spec §1.7; SogouQA/WebQA are not available offline): questions are keys, 3 passages of 40–80
tokens with 3–5 `key = value ;` facts, 0–2 passages hold the question's key. One random passage per
training example ([CLS] P [SEP] Q [SEP] A [SEP], segment 1 on A [SEP], loss on the target only), a small
GPT-shaped encoder with the UniLM mask, Adam. Decoding: the vote Σp²/(1+Σp) over passages, the step-0
[SEP] drop, the extractive constraint, beam search, with a KV cache (source once). Reported: accuracy
(EM), char F1, Final = (Acc + F1)/2 on answerable questions, no-answer detection, voting vs one random
passage, and decoding throughput with the cache vs re-running the full sequence each step (bert4keras'
way) in the same run. The article's 0.7699 Final is on SogouQA with BERT-base and is not comparable.
"""
import ml_collections


def get_config(arg=None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.runner = "kexue_jax.attention.unilm.run"
  config.article = dict(id="7115", title="万能的seq2seq：基于seq2seq的阅读理解问答", slug="unilm_reading_comprehension")
  config.reports = [
      dict(metric="eval/final", reference=0.7698803101622926,
           reference_note="SogouQA validation, BERT-base (article/script header); a different task"),
      dict(metric="eval/accuracy", reference_metric="eval/single_passage_accuracy"),
      dict(metric="eval/no_answer_detection", reference=0.95, reference_note="spec §1.7 goal"),
      dict(metric="time/decode_cached_examples_per_s", reference_metric="time/decode_full_recompute_examples_per_s"),
  ]
  config.seed = 0
  config.num_keys = 50
  config.num_words = 200
  config.num_train = 64 if smoke else 20000
  config.num_test = 8 if smoke else 400
  config.d_model = 32 if smoke else 128
  config.num_heads = 4
  config.num_layers = 1 if smoke else 4
  config.ffn_dim = 64 if smoke else 512
  config.learning_rate = 1e-3
  config.batch_size = 8 if smoke else 32
  config.num_steps = 4 if smoke else 1500
  config.log_every = 2 if smoke else 100
  config.beam_size = 1 if smoke else 2
  config.max_answer = 6
  config.decode_batch = 8 if smoke else 50
  config.throughput_examples = 8 if smoke else 100
  return config
