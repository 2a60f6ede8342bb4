"""A config mistake in an attention experiment fails before anything is compiled, with a message naming the key.

Each case loads an experiment's test-sized config (`experiments/attention/<name>.py:smoke`), sets one key (a
dotted path for nested configs) to a bad value and runs it through its runner (`experiments.main.run`): a
ValueError naming the key must come before any XLA compilation (a `backend_compile` monitoring event) and
before any data is generated. Then every shipped config variant must pass the runners' checks (called
directly, nothing runs), and the legitimate edge values (seed 0, the documented "off" zeros) must stay
accepted.
"""
import glob
import math
import os
import re

import pytest

import experiments.main as M
from experiments.reproduce import load_config
from kexue_jax.attention import chess, experiments as ex, mask_experiments, unilm

from tests.helpers import BACKEND_COMPILES as _compiles, set_dotted as _set

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
NAN, INF = math.nan, math.inf

CHECKS = {  # config file -> the check its runner calls first
    "deepnorm": ex.check_deepnorm_config,
    "linear": ex.check_linear_config,
    "masks": mask_experiments.check_config,
    "roformer": ex.check_roformer_config,
    "rope_copy": ex.check_rope_config,
    "unilm_reading_comprehension": unilm.check_config,
    "xiangqi_gpt": chess.check_config,
}
RUNNERS = {
    "deepnorm": "kexue_jax.attention.experiments.run_deepnorm",
    "linear": "kexue_jax.attention.experiments.run_linear",
    "masks": "kexue_jax.attention.mask_experiments.run",
    "roformer": "kexue_jax.attention.experiments.run_roformer",
    "rope_copy": "kexue_jax.attention.experiments.run_rope",
    "unilm_reading_comprehension": "kexue_jax.attention.unilm.run",
    "xiangqi_gpt": "kexue_jax.attention.chess.run",
}
VARIANTS = {"xiangqi_gpt": (None, "smoke", "deep", "deep12", "long12")}  # others: (None, "smoke")


def _load(name, arg="smoke"):
    return load_config(os.path.join(REPO, "experiments", "attention", f"{name}.py"), arg)


def _cases():
    cases = []

    def add(name, keys, values, expect=None):
        for key in (keys,) if isinstance(keys, str) else keys:
            cases.extend((name, key, v, expect or key) for v in values)

    floats, ints = (-1.0, NAN), (0, -1)
    add("deepnorm", ("adam_lr", "sgd_lr", "why_residual_lr"), floats + (INF,))
    add("deepnorm", ("d_model", "num_seeds", "why_residual_depth"), ints)
    add("deepnorm", "why_residual_steps", (-1,))  # 0 is valid: it skips the "why residual" part
    add("deepnorm", "depths", ((-3,), (), (2, 0)))
    add("deepnorm", "seed", (-1,))

    add("linear", ("approx.draws", "approx.head_dim", "approx.inputs", "approx.length"), ints)
    add("linear", "approx.features", ((-17, -65), ()))
    add("linear", "approx.qk_scale", floats)
    add("linear", ("recall.d_model", "recall.head_dim", "recall.num_heads", "recall.num_keys",
                   "recall.num_layers", "recall.num_values", "recall.seq_len"), ints)
    add("linear", "recall.num_steps", (0,))
    add("linear", "recall.learning_rate", floats)
    add("linear", "recall.seq_len", (1, 18))  # 18: 17 pairs with distinct keys out of 16
    add("linear", "recall.num_keys", (4,), expect="recall.seq_len")
    add("linear", "seed", (-1,))

    add("masks", ("embed", "hidden", "num_classes"), ints)
    add("masks", "learning_rate", floats)
    add("masks", "vocab", (1,))
    add("masks", "seed", (-1,))

    add("roformer", "alpha_warmup_steps", (-1,))  # 0 is valid: no warmup (α = 1 from step 0)
    add("roformer", ("eval_batches", "hidden_size", "num_heads", "num_layers", "num_steps", "seq_len"), ints)
    add("roformer", "num_heads", (3, 32))  # 3 does not divide hidden_size 32; 32 heads of 1 dim: odd
    add("roformer", "hidden_size", (34,), expect="num_heads")  # head dim 17: odd, RoPE needs pairs
    add("roformer", "learning_rates", ((-1.001,), (), (NAN,), (1e-3, 0.0)))
    add("roformer", "seed", (-1,))

    add("rope_copy", ("d_model", "ffn_dim", "num_heads", "num_layers"), ints)
    add("rope_copy", "num_heads", (3,))
    add("rope_copy", "d_model", (34,), expect="num_heads")  # head dim 17 under RoPE
    add("rope_copy", "learning_rate", floats)
    add("rope_copy", "seed", (-1,))

    add("unilm_reading_comprehension",
        ("beam_size", "d_model", "decode_batch", "ffn_dim", "log_every", "max_answer", "num_heads", "num_layers",
         "num_steps", "throughput_examples"), ints)
    add("unilm_reading_comprehension", "num_heads", (3,))
    add("unilm_reading_comprehension", "num_keys", (0, 1))
    add("unilm_reading_comprehension", "num_words", (0, 20))  # must exceed num_keys = 20
    add("unilm_reading_comprehension", "num_facts", ((2, 1), (1, 20)))  # qa.make_example's own checks
    add("unilm_reading_comprehension", "checkpoint_every", (-1,))  # 0 is valid: only at the end
    add("unilm_reading_comprehension", "warmup_steps", (-1,))  # 0 is valid (and the smoke value)
    add("unilm_reading_comprehension", "learning_rate", floats + (INF,))
    add("unilm_reading_comprehension", "seed", (-1,))

    add("xiangqi_gpt", ("d_model", "eval_plies", "ffn_dim", "game_plies", "games_per_side", "log_every",
                        "num_agreement_positions", "num_heads", "num_layers", "num_steps"), ints)
    add("xiangqi_gpt", "num_heads", (3,))
    add("xiangqi_gpt", "d_model", (20,), expect="num_heads")  # 4 heads of 5 dims: odd, RoPE needs pairs
    add("xiangqi_gpt", "max_plies", (0,))
    add("xiangqi_gpt", "num_games", (-1, 0, 4))  # 4 < batch_size 8: no batch could ever be drawn
    add("xiangqi_gpt", "checkpoint_every", (-1,))
    add("xiangqi_gpt", "seed", (-1,))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name, key, value, expect", CASES,
                         ids=[f"{n}-{k}={v!r}" for n, k, v, _ in CASES])
def test_bad_value_raises_before_compiling(name, key, value, expect, tmp_path):
    config = _load(name)
    _set(config, key, value)
    _compiles.clear()
    with pytest.raises(ValueError, match=rf"`{re.escape(expect)}` must"):
        M.run(config, str(tmp_path))
    assert _compiles == [], f"{name}: {key}={value!r} compiled {len(_compiles)} programs before its error"


def test_messages_name_expected_and_given():
    config = _load("linear")
    config.recall.num_heads = 0
    with pytest.raises(ValueError, match=re.escape("`recall.num_heads` must be an integer >= 1; got 0")):
        ex.check_linear_config(config)
    config = _load("roformer")
    config.num_heads = 3
    with pytest.raises(ValueError, match=re.escape("`num_heads` must be a divisor of hidden_size=32 giving an even "
                                                   "head dim (RoPE rotates pairs of dims); got 3")):
        ex.check_roformer_config(config)
    config = _load("xiangqi_gpt")
    config.num_games = 4
    with pytest.raises(ValueError, match=re.escape("`num_games` must be an integer >= batch_size (8")):
        chess.check_config(config)


def test_every_shipped_config_passes_its_checks():
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "experiments", "attention", "*.py"))
                   if not p.endswith("__init__.py"))
    assert names == sorted(CHECKS)
    for name, check in CHECKS.items():
        for arg in VARIANTS.get(name, (None, "smoke")):
            config = _load(name, arg)
            assert config.runner == RUNNERS[name], (name, arg, config.runner)
            check(config)


@pytest.mark.parametrize("name, key, value", [
    ("deepnorm", "seed", 0),
    ("deepnorm", "why_residual_steps", 0),  # skips the "why residual" training
    ("roformer", "alpha_warmup_steps", 0),  # the warmup run becomes the no-warmup run
    ("linear", "recall.seq_len", 17),  # 16 pairs: every key used once
    ("unilm_reading_comprehension", "warmup_steps", 0),
    ("unilm_reading_comprehension", "checkpoint_every", 0),  # documented: only at the end
    ("xiangqi_gpt", "checkpoint_every", 0),
    ("xiangqi_gpt", "num_games", 8),  # exactly one batch
    ("rope_copy", "positions", ("learned",)),
])
def test_legitimate_edge_values_pass(name, key, value):
    config = _load(name)
    _set(config, key, value)
    CHECKS[name](config)


def test_rope_head_dim_parity_only_matters_with_rope():
    config = _load("rope_copy")
    config.positions, config.d_model, config.num_heads = ("learned",), 34, 2  # head dim 17, no RoPE: fine
    ex.check_rope_config(config)
    config.positions = ("rope", "learned")
    with pytest.raises(ValueError, match="`num_heads` must be a divisor of d_model=34 giving an even head dim"):
        ex.check_rope_config(config)
