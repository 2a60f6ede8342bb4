"""A GPT that plays Xiangqi by scoring legal moves, trained on scripted self-play games.

Article: 当GPT遇上中国象棋, https://kexue.fm/archives/7877 (bert4keras
         examples/task_language_model_chinese_chess.py; spec nlp_attention_losses.md §5)

Command:
    python -m experiments.main --config experiments/attention/xiangqi_gpt.py --workdir /tmp/xiangqi
    python -m experiments.main --config experiments/attention/xiangqi_gpt.py:smoke --workdir /tmp/xiangqi_s

Setup: no game records are available offline, so the corpus is material-greedy one-ply self-play
(`kexue_jax.data.xiangqi`, seeded), at most `max_plies` plies per game, tokens [PAD] + ICCS characters
(20-token vocabulary, 4n + 1 tokens per game). A small GPT (RoPE, pre-norm) is trained with Adam and
Su's progressive-length curriculum scaled down (maxlen // 8, // 4, // 2, full at 1/8, 1/4, 1/2 of the
steps). Reported: (a) legal-move rate of unconstrained greedy generation on held-out positions in the
first 30 plies (spec goal ≥ 0.9), (b) top-1 agreement of the move-scoring player with the greedy
policy's choice set vs a uniformly random legal move (computed exactly in the same run), (c) per-token
validation perplexity, and win/draw/loss of the move-scoring player against the random and greedy
policies. The article gives no numbers (qualitative only). Measured numbers: results/RESULTS.md.
"""
import ml_collections


def get_config(arg=None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.runner = "kexue_jax.attention.chess.run"
  config.article = dict(id="7877", title="当GPT遇上中国象棋", slug="xiangqi_gpt")
  config.reports = [
      dict(metric="eval/greedy_legal_rate", reference=0.9,
           reference_note="spec §5.6 goal (first 30 plies); the article reports no number"),
      dict(metric="eval/top1_agreement", reference_metric="eval/top1_agreement_random_baseline"),
      dict(metric="eval/capture_agreement", reference_metric="eval/capture_agreement_random_baseline"),
      dict(metric="eval/val_perplexity", reference=20.0, reference_note="uniform over the 20-token vocabulary"),
      dict(metric="games/vs_random/wins", reference_metric="games/vs_random/losses"),
      dict(metric="games/vs_greedy/wins", reference_metric="games/vs_greedy/losses"),
  ]
  config.seed = 0
  config.num_games = 24 if smoke else 1500
  config.num_eval_games = 4 if smoke else 100
  config.max_plies = 16 if smoke else 80
  config.d_model = 32 if smoke else 128
  config.num_heads = 4
  config.num_layers = 1 if smoke else 4
  config.ffn_dim = 64 if smoke else 512
  config.learning_rate = 1e-3
  config.batch_size = 8 if smoke else 32
  config.num_steps = 8 if smoke else 1500
  config.log_every = 4 if smoke else 100
  config.eval_plies = 8 if smoke else 30
  config.num_agreement_positions = 8 if smoke else 240
  config.games_per_side = 1 if smoke else 2
  config.game_plies = 4 if smoke else 80
  return config
