"""UniLM seq2seq reading comprehension with the per-step passage vote, on generated multi-passage QA.

Article: 万能的seq2seq：基于seq2seq的阅读理解问答, https://kexue.fm/archives/7115 (bert4keras
         examples/task_reading_comprehension_by_seq2seq.py; spec nlp_attention_losses.md §1)

Command:
    python -m experiments.main --config experiments/attention/unilm_reading_comprehension.py --workdir /tmp/unilm
    python -m experiments.main --config experiments/attention/unilm_reading_comprehension.py:smoke --workdir /tmp/u_s
(training checkpoints every 500 steps; the same command on the same workdir resumes a killed run)

Setup (spec §1.7; SogouQA/WebQA are not available offline): questions are keys; each question has 3
passages, 0–2 of which hold its key (always with the same value), the others hold only other keys
(distractors), so a quarter of the questions have no answer. One random passage per training example
([CLS] P [SEP] Q [SEP] A [SEP], segment 1 on A [SEP], loss on the target only), a small GPT-shaped
encoder (RoPE, pre-RMSNorm) with the UniLM mask, Adam. Decoding: the vote Σp²/(1+Σp) over passages, the
step-0 [SEP] drop, the extractive constraint, beam search, with a KV cache (source once). Reported:
accuracy (EM), char F1, Final = (Acc + F1)/2 on answerable questions; "no answer" as a classifier
(positive = empty answer): recall on unanswerable questions (the old `no_answer_detection`), precision,
the rate of answerable questions answered empty, and their balanced accuracy (0.5 for a model that always
or never answers empty); voting vs one random passage; decoding throughput with the cache vs re-running
the full sequence each step (bert4keras' way) in the same run. The article's 0.7699 Final is on SogouQA
with BERT-base and is not comparable. Training is data-parallel over `config.mesh`.

Full scale: the generator is the spec's scaled down — passages of 10–30 tokens with 1–2 facts, values of
1–2 tokens, 20 keys among 100 words — 5000 training / 300 test questions, d 128, 2 layers, 8 heads,
Adam 1e-3 (100 warm-up steps, cosine decay to 1e-4), 3500 steps of 32, beam 2, answers ≤ 6 tokens.

Measured (2026-11-21, 2-core CPU shared with other jobs; full config, seed 0, `reproduce --scale full`):
7 min 29 s wall (training 410 s), final training loss 0.054.
  EM 0.965, F1 0.965, Final 0.965 on the 231 answerable test questions; a single random passage instead
  of the vote: EM 0.450 (its passage lacks the key for many answerable questions); generative
  (unconstrained) Final 0.951; every extractive answer is a substring of a passage (rate 1.000).
  No answer: recall 0.971 on the 69 unanswerable questions, precision 0.957, answerable questions
  answered empty 0.013, balanced accuracy 0.979.
  Decoding throughput, same run, same 100 questions × 3 passages, beam 2, fixed 6 steps: KV cache
  128.0 examples/s vs 30.3 examples/s re-running the full sequence each step (4.2x); both decoders gave
  identical answers on all 100.

Earlier setup that did not learn (an honest finding, same day and machine): the spec's generator as
written (passages of 40–80 tokens with 3–5 facts, values of 1–4 tokens, 50 keys among 200 words), d 128,
2 layers, 4 heads, Adam 3e-3, 2400 steps: EM 0, every answer empty, so the old "no-answer detection" read
1.000 trivially (balanced accuracy would have been 0.5). The loss stayed at ≈ 3 nats, the plateau of a
model that predicts [SEP] at its base rate and a uniform value otherwise; 3 layers at Adam 1e-3 (1200
steps) and 2 layers at 1e-3 (1800 steps) stayed there too. The key → value lookup is an
associative-recall circuit (a positional head, then a content match) that small transformers find only
after a plateau. Short exploratory runs (beam 1, 200 test questions): what made the plateau break within
the CPU budget was the easier generator (shorter passages, fewer facts, 1–2-token values: the plateau
ends after ≈ 800–1100 steps) together with Adam 1e-3 — at 2e-3 (passages of 4–12 tokens, 2000 steps)
the loss stayed at 1.6 and EM at 0.05, against loss 0.9 after 1000 steps at 1e-3; at 3e-3 (passages of
10–30 tokens with values of 1–4 tokens) it stayed at ≈ 2.7 after 800 steps. The number of heads
matters as much: the full config with 4 heads of 32 dimensions in place of 8 of 16 (same 3500 steps and
schedule) ended at loss 0.74 with EM 0.226 and 60% of answerable questions answered empty (beam 1,
first 200 test questions), against the measured run above with 8 heads (loss 0.054, EM 0.965). The
generator is what decides it: the full config (8 heads, 1e-3 with cosine decay, 3500 steps) on the spec's
generator as written still ended on the plateau (mean loss 2.61 over the last 100 steps, 21 min of
training) with EM 0.000 and every answer empty.
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
      dict(metric="eval/no_answer_balanced_accuracy", reference=0.5,
           reference_note="0.5 = a constant answer (always or never empty)"),
      dict(metric="eval/no_answer_recall", reference=0.95, reference_note="spec §1.7 goal"),
      dict(metric="eval/answerable_empty_rate", reference=0.0, reference_note="answerable questions answered empty"),
      dict(metric="time/decode_cached_examples_per_s", reference_metric="time/decode_full_recompute_examples_per_s"),
  ]
  config.mesh = dict(data=-1)  # data parallel: the batch splits over every device, parameters replicated
  config.seed = 0
  # generator (spec §1.7 scaled down so that a 2-layer model learns it on a CPU): 3 passages of 10-30
  # tokens, 1-2 facts each, values of 1-2 tokens, 20 keys among 100 words
  config.num_keys = 20
  config.num_words = 100
  config.passage_len = (10, 30)
  config.num_facts = (1, 2)
  config.value_len = (1, 2)
  config.num_train = 64 if smoke else 5000
  config.num_test = 8 if smoke else 300
  config.d_model = 32 if smoke else 128
  config.num_heads = 4 if smoke else 8
  config.num_layers = 1 if smoke else 2
  config.ffn_dim = 64 if smoke else 512
  config.learning_rate = 1e-3
  config.warmup_steps = 0 if smoke else 100  # linear warm-up to learning_rate
  config.lr_schedule = "constant" if smoke else "cosine"  # then cosine decay to learning_rate / 10 at the end
  config.batch_size = 8 if smoke else 32
  config.num_steps = 4 if smoke else 3500
  config.log_every = 2 if smoke else 100
  config.checkpoint_every = 2 if smoke else 500  # resumable: the same command on the same workdir continues
  config.beam_size = 1 if smoke else 2
  config.max_answer = 6
  config.decode_batch = 8 if smoke else 50
  config.throughput_examples = 8 if smoke else 100
  return config
