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
Training is data-parallel over `config.mesh`.

Full scale (sized for ≤ 20 min on a shared 2-core CPU): 5000 training / 300 test questions, d 128,
2 layers, 4 heads, Adam 3e-3 after 100 warm-up steps, 2400 steps of 32, beam 2, answers ≤ 6 tokens.

Measured (2026-11-21, 2-core CPU shared with other jobs, load average 9-13; full config, seed 0):
18 min 28 s wall, 412 s user CPU (training 1052 s).
  EM 0.000, F1 0.000, Final 0.000 on the answerable test questions; single random passage: EM 0.000;
  generative (unconstrained) Final 0.000; no-answer detection 1.000 — trivially, because the model
  answers "no answer" ([SEP] first) for every question. THE MODEL DID NOT LEARN THE TASK; the spec's
  targets (EM ≥ 0.9, no-answer ≥ 0.95 on genuinely detected cases, voting ≥ single) are not met.
  Why we think so: the training loss never left the plateau of a model that knows the answer format but
  retrieves nothing — predicting [SEP] with its base rate 0.63 and a uniform value word otherwise costs
  ≈ 3.0 nats per target token, and the logged loss wandered between 2.5 and 3.4 for all 2400 steps
  (final 3.12). The key → value lookup over an 85-token bidirectional source is an associative-recall
  (induction) circuit that small transformers acquire only after a long plateau; within this CPU budget
  it did not happen. Two other measured runs agree: 3 layers, Adam 1e-3, 1200 steps (11 min 42 s wall,
  final loss 2.80) and 2 layers, Adam 1e-3 (loss 3.40 at step 1800, stopped): the same all-[SEP] output.
  Decoding throughput, same run, same 100 questions × 3 passages, beam 2, fixed 6 steps: KV cache
  45.3 examples/s vs 11.5 examples/s re-running the full sequence each step (3.9x; 19.8 vs 2.5, 8.0x, in
  the 3-layer run); both decoders gave identical answers on all 100 (all empty here).
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
  config.mesh = dict(data=-1)  # data parallel: the batch splits over every device, parameters replicated
  config.seed = 0
  config.num_keys = 50
  config.num_words = 200
  config.num_train = 64 if smoke else 5000
  config.num_test = 8 if smoke else 300
  config.d_model = 32 if smoke else 128
  config.num_heads = 4
  config.num_layers = 1 if smoke else 2
  config.ffn_dim = 64 if smoke else 512
  config.learning_rate = 1e-3 if smoke else 3e-3
  config.warmup_steps = 0 if smoke else 100  # linear warm-up to learning_rate, then constant
  config.batch_size = 8 if smoke else 32
  config.num_steps = 4 if smoke else 2400
  config.log_every = 2 if smoke else 100
  config.beam_size = 1 if smoke else 2
  config.max_answer = 6
  config.decode_batch = 8 if smoke else 50
  config.throughput_examples = 8 if smoke else 100
  return config
