"""The masks experiment's runner: its padding claims are exact, and it is data-parallel (8 devices = 1)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kexue_jax.attention import mask_experiments as mx
from tests.helpers import run_for_json


def _config(**kw):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(os.path.dirname(__file__), "..", "..",
                                                                       "experiments", "attention", "masks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def scored():
    """Random (untrained) parameters, 32 test sequences, logits of both variants at paddings 16 and 64."""
    c = _config()
    params = mx.init_params(jax.random.key(3), vocab=c.vocab, embed=8, hidden=8, num_classes=c.num_classes)
    seqs, labels = mx.make_sequences(np.random.default_rng(0), 32, vocab=c.vocab, min_len=4, max_len=16,
                                     num_classes=c.num_classes)
    out = {}
    for variant in mx.VARIANTS:
        for pooling in mx.POOLINGS:
            fn = jax.jit(lambda p, ids, v=variant, q=pooling: mx.logits_fn(p, ids, variant=v, pooling=q))
            out[variant, pooling] = [np.asarray(fn(params, jnp.asarray(mx.pad_to(seqs, n)))) for n in (16, 64)]
    return params, seqs, labels, out


@pytest.mark.parametrize("pooling", mx.POOLINGS)
def test_masked_logits_do_not_depend_on_padding_and_naive_ones_do(scored, pooling):
    _, _, _, out = scored
    short, long = out["masked", pooling]
    np.testing.assert_allclose(long, short, rtol=1e-6, atol=1e-6)
    short, long = out["naive", pooling]  # negative control: the flip starts the backward RNN on padding
    assert np.max(np.abs(long - short)) > 1e-2


def test_masked_logits_equal_each_sequence_run_alone(scored):
    params, seqs, _, out = scored
    fn = jax.jit(lambda p, ids: mx.logits_fn(p, ids, variant="masked"))
    alone = np.concatenate([np.asarray(fn(params, jnp.asarray(s[None]))) for s in seqs[:6]])
    np.testing.assert_allclose(out["masked", "max"][0][:6], alone, rtol=1e-5, atol=1e-6)


def _np_logits(params, ids, *, variant, pooling):
    """logits_fn in float64 NumPy, one sequence at a time: masked = the BiRNN and the pooling see only the
    valid prefix; naive = the backward RNN runs over the whole flipped padded row and pooling sees padding."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def rnn(w, seq):  # [n, embed] -> [n, hidden]
        hidden, out = np.zeros(w["wh"].shape[0]), []
        for x_t in seq:
            hidden = np.tanh(x_t @ w["wx"] + hidden @ w["wh"] + w["b"])
            out.append(hidden)
        return np.stack(out)

    feats = []
    for row in np.asarray(ids):
        n = int(np.sum(row != 0)) if variant == "masked" else len(row)
        seq = p["embed"][row[:n]]
        y = np.concatenate([rnn(p["fw"], seq), rnn(p["bw"], seq[::-1])[::-1]], -1)  # [n, 2 hidden]
        feats.append(y.max(0) if pooling == "max" else y.mean(0))
    return np.stack(feats) @ p["out"]["w"] + p["out"]["b"]


@pytest.mark.parametrize("variant", mx.VARIANTS)
@pytest.mark.parametrize("pooling", mx.POOLINGS)
def test_logits_equal_a_float64_numpy_transcription(scored, variant, pooling):
    params, seqs, _, out = scored
    ids = mx.pad_to(seqs, 16)[:6]
    np.testing.assert_allclose(out[variant, pooling][0][:6], _np_logits(params, ids, variant=variant, pooling=pooling),
                               rtol=1e-5, atol=1e-5)


def test_labels_are_first_token_mod_classes():
    seqs, labels = mx.make_sequences(np.random.default_rng(1), 50, vocab=20, min_len=3, max_len=9, num_classes=4)
    assert [int(s[0]) % 4 for s in seqs] == labels.tolist()
    assert all(3 <= len(s) <= 9 and s.min() >= 1 and s.max() <= 19 for s in seqs)
    padded = mx.pad_to(seqs, 12)
    assert padded.shape == (50, 12) and all((padded[i, len(s):] == 0).all() for i, s in enumerate(seqs))


def test_lengths_are_uniform_on_min_len_to_max_len_inclusive():
    seqs, _ = mx.make_sequences(np.random.default_rng(2), 700, vocab=20, min_len=3, max_len=9, num_classes=4)
    counts = np.bincount([len(s) for s in seqs], minlength=10)[3:]
    assert counts.sum() == 700 and np.all(counts > 0)  # both ends included
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the 7 lengths


@pytest.mark.parametrize("kw, message", [
    (dict(test_lens=(8, 24)), "every `test_lens` entry must be >= `max_len` (16)"),
    (dict(max_len=30), "need 1 <= `min_len` <= `max_len` <= `train_len`"),
    (dict(variants=("masked", "flip")), "`variants` entries must be in ('masked', 'naive'); got 'flip'"),
    (dict(poolings=("sum",)), "`poolings` entries must be in ('max', 'mean'); got 'sum'"),
    (dict(batch_size=0), "`batch_size` must be a positive integer; got 0"),
])
def test_bad_config_is_rejected_before_training(tmp_path, kw, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        mx.run(_config(**kw), str(tmp_path))


RUN = """
import json, sys
import numpy as np, jax
sys.path.insert(0, {repo!r})
from tests.attention.test_mask_experiments import _config
from kexue_jax.attention import mask_experiments as mx
from kexue_jax.core import sharding
c = _config(num_steps=4)
mesh = sharding.make_mesh(c.mesh)
assert mesh.devices.size == {devices}
out = {{v: mx.train(c, v, mesh, "mean")[1].tolist() for v in mx.VARIANTS}}
print("LOSSES" + json.dumps(out))
"""


@pytest.mark.multidevice
def test_eight_devices_give_the_losses_of_one():
    """Adam, 4 steps, batch 16 split 8 ways. The per-device partial sums are reduced in another order than
    on one device, so f32 losses may differ in the last bits; 1e-5 relative bounds that."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = {}
    for n in (1, 8):
        res[n] = run_for_json(RUN.format(repo=repo, devices=n), devices=n)
    for v in mx.VARIANTS:
        assert len(res[1][v]) == 4
        np.testing.assert_allclose(res[8][v], res[1][v], rtol=1e-5)
        assert res[1][v][0] != res[1][v][-1]  # it trains
