"""The Xiangqi GPT and UniLM runners' own data-parallel training loops: 8 simulated CPU devices give the
losses of 1 device.

Each device count runs in a fresh interpreter (the count is fixed when JAX starts), which trains both
runners' smoke configs (batch 8, split 8 ways on 8 devices) with the runners' `train` functions and
prints the per-step losses. The chess run covers three curriculum lengths.
"""

import numpy as np
import pytest

from tests.helpers import run_for_json

TRAIN = r"""
import json, jax, numpy as np
from experiments.reproduce import load_config
from kexue_jax.attention import chess, unilm
from kexue_jax.data import qa, xiangqi as xq
assert jax.device_count() == {devices}, jax.device_count()
out = {{}}
c = load_config("experiments/attention/xiangqi_gpt.py", "smoke")
c.num_steps = 4  # curriculum lengths 16, 32, 65, 65: three compiled shapes
games = xq.generate_games(c.num_games, policy="greedy", seed=c.seed, max_plies=c.max_plies)
tok, ln = chess.encode_games(games, c.max_plies)
model, losses = chess.train(c, tok, ln, rng=np.random.default_rng(c.seed))
out["chess"] = losses.tolist()
c = load_config("experiments/attention/unilm_reading_comprehension.py", "smoke")
c.num_steps = 4
data = qa.make_dataset(c.num_train, seed=c.seed, num_keys=c.num_keys, num_words=c.num_words)
model, losses = unilm.train(c, data, rng=np.random.default_rng(c.seed))
out["unilm"] = losses.tolist()
print("LOSSES" + json.dumps(out))
"""


def _losses(devices):
    return run_for_json(TRAIN.format(devices=devices), devices=devices, timeout=240)


@pytest.mark.multidevice
def test_eight_devices_give_the_losses_of_one():
    """Adam on both runners. On 8 devices each device sums its share of the batch and XLA all-reduces the
    partial sums, so f32 losses and gradients are rounded in another order than on one device; Adam's
    update g / (sqrt(v) + eps) can amplify that for near-zero gradients (see tests/core/test_multidevice.py),
    so the losses agree closely but not bitwise. Measured (2026-11-21, 2-core CPU): largest relative
    difference 3.2e-7 (chess) and 9.4e-8 (UniLM), 4 steps each; rtol 1e-5 leaves a 30x margin over
    that, while the per-step loss changes (1e-3 to 1e-1 relative) are far above it: a split that dropped or
    double-counted a shard, or (UniLM, whose target lengths vary by row) a mean of per-device means in
    place of the global token-weighted mean, would fail."""
    one, eight = _losses(1), _losses(8)
    for name, steps in (("chess", 4), ("unilm", 4)):
        assert len(one[name]) == len(eight[name]) == steps
        print(name, "largest relative difference", np.max(np.abs(np.subtract(eight[name], one[name])) /
                                                          np.abs(one[name])))
        np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, err_msg=name)
        assert one[name][-1] < one[name][0]  # it trains
