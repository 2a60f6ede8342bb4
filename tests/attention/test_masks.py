"""Masks and masked ops (the masks article): hand-written block matrices, exact source invariance under
UNILM, padding-length invariance (all-negative inputs too), and the masked BiRNN against per-sequence
runs with the naive flip as a negative control."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax.attention import (attention, causal_mask, combine_masks, masked_bidirectional_rnn, masked_max,
                                 masked_mean, masked_softmax, padding_mask, reverse_valid_prefix, unilm_mask)


def test_unilm_mask_equals_hand_written_block_matrix():
    # source = 3 tokens (segment 0), target = 2 tokens (segment 1), then one padding token (segment 0).
    segments = jnp.array([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0]])
    expected0 = np.array([[1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 1, 0, 0],
                          [1, 1, 1, 1, 1, 1],   # padding keeps the last cumsum: removed by the key padding mask
                          [1, 1, 1, 1, 1, 1]], bool)
    expected1 = np.array([[1, 0, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 1, 1]], bool)
    mask = unilm_mask(segments)
    np.testing.assert_array_equal(mask[0], expected0)
    np.testing.assert_array_equal(mask[1], expected1)
    np.testing.assert_array_equal(unilm_mask(segments[0]), expected0)  # unbatched


def test_causal_and_padding_masks():
    np.testing.assert_array_equal(causal_mask(4), np.tril(np.ones((4, 4), bool)))
    np.testing.assert_array_equal(padding_mask(jnp.array([2, 0, 3]), length=3),
                                  [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(padding_mask(jnp.array([[5, 9, 0], [0, 3, 0]])), [[1, 1, 0], [0, 1, 0]])


def test_padding_mask_honours_pad_id():
    ids = jnp.array([[5, 2, 0, 2], [2, 2, 7, 1]])
    np.testing.assert_array_equal(padding_mask(ids, pad_id=2), np.asarray(ids) != 2)


def test_combine_masks_follows_attention_ranks():
    rng = np.random.default_rng(0)
    m2, m3, m4 = rng.random((4, 4)) > .3, rng.random((2, 1, 4)) > .3, rng.random((2, 3, 4, 4)) > .3
    out = combine_masks(m2, None, jnp.asarray(m3), jnp.asarray(m4))
    np.testing.assert_array_equal(out, m2[None, None] & m3[:, None] & m4)
    np.testing.assert_array_equal(combine_masks(jnp.asarray(m2), jnp.asarray(m3)), m2[None] & m3)
    assert combine_masks(None, None) is None


def test_perturbing_a_target_token_leaves_source_outputs_exactly_unchanged():
    segments = jnp.array([[0, 0, 0, 1, 1, 1, 0]])
    ids = jnp.array([[3, 4, 5, 6, 7, 8, 0]])
    mask = combine_masks(unilm_mask(segments), padding_mask(ids)[:, None, :])  # [b, t, s]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 7, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 8, 2, 4)), jnp.float32)

    def layer(x):
        q, k, v = (jnp.einsum("btd,dhk->bthk", x, w[i]) for i in range(3))
        return attention(q, k, v, mask=mask)

    x2 = x.at[0, 4].add(3.0)  # change target token 2
    out, out2 = jax.jit(lambda x, x2: (layer(x), layer(x2)))(x, x2)
    np.testing.assert_array_equal(out[0, :3], out2[0, :3])  # the source never sees the target
    np.testing.assert_array_equal(out[0, 3], out2[0, 3])  # target token 1 does not see target token 2
    assert np.abs(out[0, 4:6] - out2[0, 4:6]).max() > 1e-3  # the perturbation is visible where allowed


@functools.partial(jax.jit, static_argnums=2)
def _masked_ops(x, lengths, total):
    mask = padding_mask(lengths, length=total)
    return masked_mean(x, mask), masked_max(x, mask), masked_softmax(x, mask, axis=1)[:, :5]


@pytest.mark.parametrize("negative", [False, True])
def test_masked_ops_do_not_depend_on_padding_length(negative):
    rng = np.random.default_rng(1)
    lengths = np.array([3, 5, 1])
    x_valid = rng.normal(size=(3, 5, 4)) - (10.0 if negative else 0.0)
    results = []
    for total in (5, 9):
        # padding values are large and of both signs: a masked op must ignore them
        x = np.concatenate([x_valid, 1e3 * rng.normal(size=(3, total - 5, 4))], axis=1)
        x[np.arange(total)[None, :] >= lengths[:, None]] = 1e3 * rng.normal(size=(np.sum(total - lengths), 4))
        x = jnp.asarray(x, jnp.float32)
        results.append(_masked_ops(x, jnp.asarray(lengths), total))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    mean, mx, _ = results[0]
    for r, n in enumerate(lengths):  # and they equal the plain ops on the valid prefix
        np.testing.assert_allclose(mean[r], x_valid[r, :n].mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mx[r], x_valid[r, :n].max(0), rtol=1e-6)
    if negative:  # negative control: the "multiply by the mask, then max" shortcut gives 0, not the max
        x = jnp.asarray(x_valid, jnp.float32)
        naive = jnp.max(x * padding_mask(jnp.asarray(lengths), length=5)[..., None], axis=1)
        padded_rows = lengths < 5
        assert np.all(np.asarray(naive)[padded_rows] == 0) and np.all(np.asarray(mx) < -5)


def test_masked_softmax_sums_to_one_on_valid_and_is_exactly_zero_on_padding():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6)) * 5, jnp.float32)
    mask = padding_mask(jnp.array([6, 2, 0]), length=6)
    p, g = jax.jit(lambda x: (masked_softmax(x, mask), jax.grad(
        lambda x: jnp.sum(masked_softmax(x, mask) * jnp.arange(6.0)[None, :]))(x)))(x)
    np.testing.assert_allclose(p[:2].sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(p)[~np.asarray(mask)] == 0.0)
    np.testing.assert_allclose(p[1, :2], jax.nn.softmax(x[1, :2]), rtol=1e-6)
    np.testing.assert_array_equal(p[2], 0.0)  # a fully padded row is finite (zero), not NaN
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~np.asarray(mask)] == 0.0)


def test_fully_masked_mean_and_max_are_finite():
    x = -jnp.ones((2, 3, 2))
    mask = jnp.array([[True, False, False], [False, False, False]])
    np.testing.assert_array_equal(masked_mean(x, mask), [[-1, -1], [0, 0]])
    np.testing.assert_array_equal(masked_max(x, mask), [[-1, -1], [0, 0]])


def test_reverse_valid_prefix_matches_numpy_and_is_an_involution():
    x = jnp.arange(2 * 5 * 2).reshape(2, 5, 2)
    lengths = jnp.array([3, 5])
    expected = np.asarray(x).copy()
    expected[0, :3] = expected[0, :3][::-1]
    expected[1] = expected[1][::-1]
    out = reverse_valid_prefix(x, lengths)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(reverse_valid_prefix(out, lengths), x)


def _tanh_rnn(w_in, w_rec):
    def run(x):  # [b, t, d] -> [b, t, e], a forward Elman RNN
        def step(hidden, x_t):
            hidden = jnp.tanh(x_t @ w_in + hidden @ w_rec)
            return hidden, hidden
        h0 = jnp.zeros((x.shape[0], w_rec.shape[0]))
        return jnp.swapaxes(jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))[1], 0, 1)
    return run


def test_masked_birnn_equals_per_sequence_runs_and_naive_flip_does_not():
    rng = np.random.default_rng(3)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    fw = _tanh_rnn(f32(3, 4), 0.5 * f32(4, 4))
    bw = _tanh_rnn(f32(3, 4), 0.5 * f32(4, 4))
    lengths = [2, 6, 4]
    x = f32(3, 6, 3)
    mask = padding_mask(jnp.array(lengths), length=6)
    x = jnp.where(mask[..., None], x, 7.0)  # non-zero padding, as after an embedding lookup

    def naive(x, mask):  # Keras' stock Bidirectional: flip the whole padded sequence
        y = jnp.concatenate([fw(x), jnp.flip(bw(jnp.flip(x, 1)), 1)], -1)
        return jnp.where(mask[..., None], y, 0)

    @jax.jit
    def run(x, mask):  # masked, naive and the three per-sequence runs in one compilation
        singles = [x[r:r + 1, :n] for r, n in enumerate(lengths)]
        alone = [jnp.concatenate([fw(a), jnp.flip(bw(jnp.flip(a, 1)), 1)], -1)[0] for a in singles]
        return masked_bidirectional_rnn(fw, bw, x, mask), naive(x, mask), alone

    out, out_naive, alones = run(x, mask)
    worst_naive = 0.0
    for r, (n, alone) in enumerate(zip(lengths, alones)):
        np.testing.assert_allclose(out[r, :n], alone, atol=1e-6)
        worst_naive = max(worst_naive, float(np.abs(out_naive[r, :n] - alone).max()))
    np.testing.assert_array_equal(out[0, 2:], 0.0)
    assert worst_naive > 1e-2  # negative control: the naive flip starts the backward RNN on padding


@pytest.mark.parametrize("fn, args, match", [
    (padding_mask, (jnp.array([1.0, 2.0]),), r"`lengths_or_ids` must be an integer array"),
    (padding_mask, (jnp.array([1, 2]),), r"`length` must be a positive int"),
    (padding_mask, (jnp.zeros((2, 2, 2), int),), r"`lengths_or_ids` must be lengths \[b\] or token ids"),
    (causal_mask, (0,), r"`t` must be a positive int; got 0"),
    (unilm_mask, (jnp.zeros(3),), r"`segment_ids` must be an integer array"),
    (combine_masks, (jnp.ones((2, 2)),), r"`masks\[0\]` must be a boolean array"),
    (combine_masks, (jnp.ones((2, 3), bool), jnp.ones((4, 4), bool)), r"`masks` must be broadcastable"),
    (masked_mean, (jnp.ones((2, 3)), jnp.ones((3,), bool)), r"`mask` must match the leading axes"),
    (masked_max, (jnp.ones((2, 3)), jnp.ones((2, 3))), r"`mask` must be a boolean array"),
    (masked_softmax, (jnp.ones((2,)), jnp.ones((2, 3), bool)), r"`mask` must have rank 1..1"),
    (reverse_valid_prefix, (jnp.ones((2, 3)), jnp.array([1, 2, 3])), r"`lengths` must be an integer array of shape"),
])
def test_bad_inputs(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_birnn_bad_inputs():
    ident = lambda x: x
    with pytest.raises(ValueError, match=r"`x` must have rank 3"):
        masked_bidirectional_rnn(ident, ident, jnp.ones((2, 3)), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"`mask` must be a boolean array of shape \(2, 3\)"):
        masked_bidirectional_rnn(ident, ident, jnp.ones((2, 3, 1)), jnp.ones((2, 4), bool))
