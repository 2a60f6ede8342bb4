"""The attention experiment runners (kexue_jax/attention/experiments.py): their data-parallel training
loops give on 8 simulated CPU devices the losses of 1 device, and the pieces of the RoPE copy experiment
and the Performer error curve do what their docstrings say.

The multi-device test runs, in a fresh interpreter per device count (the count is fixed when JAX
starts), the training function behind each runner on its smoke config: `train_why_residual`
(run_deepnorm), `train_recall` (run_linear; softmax, and FAVOR+ with its per-step projections),
`train_mlm` (run_roformer, with the α warmup) and `train_copy` (run_rope, both position schemes).
The runners call exactly these functions; calling them directly skips the figures and evaluations that
do not train, which keeps the test within ~1 minute on a loaded 2-core machine.
"""
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import experiments as ex
from kexue_jax.attention.core import attention
from kexue_jax.attention.performer import performer_attention
from tests.helpers import run_for_json

TRAIN = r"""
import json, jax, numpy as np
from experiments.reproduce import load_config
from kexue_jax.attention import experiments as ex
assert jax.device_count() == {devices}, jax.device_count()
out = {{}}
c = load_config("experiments/attention/deepnorm.py", "smoke")
assert c.batch_size % 8 == 0
losses = ex.train_why_residual(c, jax.random.split(jax.random.key(c.seed), c.num_seeds), plain=False)
out["why_residual/residual_eps_1"], out["why_residual/residual_eps_inv_sqrt_n"] = losses.reshape(2, -1).tolist()
c = load_config("experiments/attention/linear.py", "smoke")
assert c.recall.batch_size % 8 == 0 and c.recall.eval_size % 8 == 0
for i, kernel in enumerate(("softmax", "favor_4d")):
    run = ex.train_recall(c, kernel, jax.random.key(i))
    out["recall/" + kernel] = run["curve"].tolist() + [run["accuracy"]]
c = load_config("experiments/attention/roformer.py", "smoke")
assert c.batch_size % 8 == 0
[(losses, test_loss)] = ex.train_mlm(c, [(1e-3, c.alpha_warmup_steps)])
out["mlm/alpha_warmup"] = losses.tolist() + [test_loss]
c = load_config("experiments/attention/rope_copy.py", "smoke")
assert c.batch_size % 8 == 0
for positions in c.positions:
    out["rope_copy/" + positions] = ex.train_copy(c, positions, jax.random.key(0))[1].tolist()
print("LOSSES" + json.dumps(out))
"""


def _losses(devices):
    return run_for_json(TRAIN.format(devices=devices), devices=devices, timeout=280)


@pytest.mark.multidevice
def test_eight_devices_give_the_losses_of_one():
    """Every training loop of the four runners on its smoke config, batch 8 (128 for deepnorm) split 8 ways;
    per-step training losses (for recall and the MLM also the final test accuracy / test loss).

    Tolerance rtol 1e-5: on 8 devices each device reduces its share of the batch and XLA all-reduces the
    partial sums, so f32 losses and gradients are rounded in another order than on 1 device, and Adam's
    g / (sqrt(v) + eps) can amplify that rounding for near-zero gradients (tests/core/test_multidevice.py).
    Those differences are ~1e-7 relative; a shard dropped or counted twice, a per-device mean in place of
    the global (token-weighted) mean, or per-device batches that differ from the 1-device batch would
    change the losses by far more than 1e-5 (the per-step loss changes are 1e-3 … 1e-1 relative)."""
    with ThreadPoolExecutor(2) as pool:  # the two interpreters run side by side
        one, eight = pool.map(_losses, (1, 8))
    expected = {"why_residual/residual_eps_1", "why_residual/residual_eps_inv_sqrt_n", "recall/softmax",
                "recall/favor_4d", "mlm/alpha_warmup", "rope_copy/rope", "rope_copy/learned"}
    assert set(one) == set(eight) == expected
    for name in sorted(expected):
        a, b = np.asarray(one[name]), np.asarray(eight[name])
        assert a.shape == b.shape and a.size >= 4, name
        assert np.all(np.isfinite(a)), name
        assert np.ptp(a) > 1e-3 * np.abs(a).max(), name  # the losses move, so equality is not vacuous
        np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------- RoPE copy


def test_lagged_copy_targets_are_the_tokens_lag_positions_back():
    x, y, w = ex.lagged_copy_batch(jax.random.key(0), batch=3, length=20, vocab_size=7, lag=5)
    x, y, w = map(np.asarray, (x, y, w))
    for b in range(3):
        for i in range(20):
            assert w[b, i] == float(i >= 5)
            if i >= 5:
                assert y[b, i] == x[b, i - 5]
    assert x.min() >= 0 and x.max() < 7


def _copy_model(positions, max_len=16):
    return ex.CopyLM(11, 16, 2, 1, 32, positions=positions, max_len=max_len, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_copy_model_is_causal(positions):
    """Logits at positions < 8 of a length-16 input equal those of its first 8 tokens alone, and a change
    at position 8 changes position 8's logits (negative control)."""
    model = _copy_model(positions)
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, 11)
    full, prefix = model(x), model(x[:, :8])
    np.testing.assert_allclose(full[:, :8], prefix, rtol=1e-5, atol=1e-6)
    changed = model(x.at[:, 8].set((x[:, 8] + 1) % 11))
    np.testing.assert_allclose(changed[:, :8], full[:, :8], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(changed[:, 8] - full[:, 8])).max() > 1e-4


def test_rope_copy_model_scores_depend_on_offsets_only():
    """With RoPE the only position information is relative: a block run at positions 5 … t + 4 gives the
    outputs it gives at 0 … t − 1. With the learned table the same shift changes them (negative control)."""
    model = _copy_model("rope")
    x = jax.random.randint(jax.random.key(2), (2, 12), 0, 11)
    h = model.token_embedding(x)
    mask = ex.causal_mask(12)
    a = model.layers[0](h, mask=mask, deterministic=True)
    b = model.layers[0](h, mask=mask, positions=jnp.arange(12) + 5, deterministic=True)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    learned = _copy_model("learned", max_len=32)  # negative control: an absolute table makes the shift matter
    shifted = learned.position_embedding(jnp.arange(12) + 5)[None] + learned.token_embedding(x)
    base = learned.position_embedding(jnp.arange(12))[None] + learned.token_embedding(x)
    assert np.abs(np.asarray(learned.layers[0](shifted, mask=mask) - learned.layers[0](base, mask=mask))).max() > 1e-3


def test_learned_table_rows_beyond_the_training_length_get_no_gradient():
    """What the experiment's docstring claims: training at length 8 leaves table rows 8..15 untouched."""
    model = _copy_model("learned", max_len=16)
    batch = ex.lagged_copy_batch(jax.random.key(3), batch=4, length=8, vocab_size=11, lag=2)
    grads = nnx.grad(ex.copy_loss)(model, *batch)
    g = np.asarray(grads["position_embedding"]["embedding"][...])
    assert np.all(g[8:] == 0)
    assert np.all(np.abs(g[:8]).max(axis=1) > 0)


def test_copy_accuracy_counts_only_scored_positions():
    model = _copy_model("rope")
    x, y, w = ex.lagged_copy_batch(jax.random.key(4), batch=5, length=10, vocab_size=11, lag=3)
    pred = np.asarray(jnp.argmax(model(x), -1))
    expected = [(pred[:, i] == np.asarray(y)[:, i]).mean() if i >= 3 else 0.0 for i in range(10)]
    np.testing.assert_allclose(ex.copy_accuracy(model, x, y, w), expected, rtol=1e-6)


def _rope_config(**kw):
    c = ml_collections.ConfigDict(dict(
        seed=0, mesh=dict(data=-1), positions=("rope", "learned"), vocab_size=8, lag=2, train_length=8,
        test_lengths=(8, 16), d_model=16, num_heads=2, num_layers=1, ffn_dim=32, batch_size=8,
        learning_rate=1e-3, num_steps=2, log_every=1, eval_size=8))
    c.update(kw)
    return c


@pytest.mark.parametrize("kw, message", [
    (dict(lag=8), "`lag` must be < train_length=8; got 8"),
    (dict(positions=("rope", "alibi")), "`positions` entries must be in ('rope', 'learned'); got 'alibi'"),
    (dict(log_every=3), "`log_every` must divide num_steps=2; got 3"),
    (dict(test_lengths=(8, 2)), "`test_lengths` must be ints > lag=2; got (8, 2)"),
    (dict(batch_size=0), "`batch_size` must be a positive multiple of the batch-parallel device count"),
    (dict(mesh=dict(data=3)), "`mesh` must be"),
])
def test_run_rope_rejects_bad_config(kw, message, tmp_path):
    with pytest.raises(ValueError) as err:
        ex.run_rope(_rope_config(**kw), str(tmp_path))
    assert message in str(err.value)


def test_copy_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`positions` must be one of \('rope', 'learned'\); got 'sin'"):
        ex.CopyLM(11, 16, 2, 1, 32, positions="sin", max_len=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`tokens` must have length <= max_len=8; got shape \(1, 9\)"):
        _copy_model("learned", max_len=8)(jnp.zeros((1, 9), jnp.int32))


# ---------------------------------------------------------------------------------------- Performer curve


def test_favor_mse_equals_the_loop_over_projections():
    """The jitted lax.map error equals a plain Python loop over the same projections (brute force)."""
    key = jax.random.key(5)
    q, k, v = (0.5 * jax.random.normal(kk, (1, 12, 1, 8)) for kk in jax.random.split(key, 3))
    proj = ex.draw_projections(jax.random.key(6), num=3, m=16, d=8, orthogonal=True)
    exact = attention(q, k, v, implementation="einsum")
    brute = np.mean([np.mean((np.asarray(performer_attention(q, k, v, projection=p)) - np.asarray(exact)) ** 2)
                     for p in proj])
    np.testing.assert_allclose(float(ex._favor_mse(q, k, v, proj)), brute, rtol=1e-5)


def test_drawn_projections_are_whole_orthogonal_blocks():
    """m = 2d: each of the num projections is 2 blocks of d mutually orthogonal rows; m < d: rows of one
    projection are still orthogonal. iid rows are not (negative control)."""
    d = 8
    for m in (16, 4):
        proj = np.asarray(ex.draw_projections(jax.random.key(7), num=3, m=m, d=d, orthogonal=True))
        assert proj.shape == (3, m, d)
        for p in proj:
            for block in p.reshape(-1, min(m, d), d):
                u = block / np.linalg.norm(block, axis=1, keepdims=True)
                np.testing.assert_allclose(u @ u.T, np.eye(len(u)), atol=1e-5)
    iid = np.asarray(ex.draw_projections(jax.random.key(7), num=1, m=d, d=d, orthogonal=False))[0]
    u = iid / np.linalg.norm(iid, axis=1, keepdims=True)
    assert np.abs(u @ u.T - np.eye(d)).max() > 0.05


def test_performer_mse_curve_falls_with_m():
    """MSE at m = 256 is well below m = 16 (Monte Carlo 1/m: ratio ≈ 1/16; asserted < 1/4)."""
    out = ex.performer_mse_curve(jax.random.key(8), n=16, d=8, ms=(16, 256), draws=8, qk_scale=0.5)
    for name in ("iid", "orthogonal"):
        assert out[name][1] < out[name][0] / 4, (name, out[name])
