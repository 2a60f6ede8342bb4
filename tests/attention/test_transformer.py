"""Blocks: RMS norm has mean(x²) = 1; the α-warmup residual (α = 0: post-norm gives Norm(x), pre-norm the
identity); GAU equals a float64 NumPy transcription of bert4keras `GatedAttentionUnit`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import GatedAttentionUnit, TransformerBlock, causal_mask, rms_norm


def test_rms_norm_has_unit_mean_square_and_no_parameters():
    x = 3 * jax.random.normal(jax.random.key(0), (2, 5, 16)) + 1
    np.testing.assert_allclose(jnp.mean(rms_norm(x) ** 2, axis=-1), 1.0, rtol=1e-5)
    block = TransformerBlock(16, 2, 32, rngs=nnx.Rngs(0))
    assert all(leaf.ndim == 2 for leaf in jax.tree.leaves(nnx.state(block, nnx.Param)))  # kernels only
    with_params = TransformerBlock(16, 2, 32, norm="layer", norm_params=True, use_bias=True, rngs=nnx.Rngs(0))
    assert len(jax.tree.leaves(nnx.state(with_params, nnx.Param))) == 6 + 6 + 4  # kernels, biases, γ/β


def test_alpha_warmup_residual_endpoints():
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    post = TransformerBlock(16, 2, 32, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(post(x, alpha=0.0), rms_norm(rms_norm(x)), atol=1e-6)
    h = rms_norm(x + post.attention(x))
    np.testing.assert_allclose(post(x, alpha=1.0), rms_norm(h + post.ffn(h)), atol=1e-5)
    pre = TransformerBlock(16, 2, 32, placement="pre", rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(pre(x, alpha=0.0), x)
    h = x + 0.5 * pre.attention(rms_norm(x))
    np.testing.assert_allclose(pre(x, alpha=0.5), h + 0.5 * pre.ffn(rms_norm(h)), atol=1e-5)


def _gau_reference(gau, x, mask, normalization):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(gau, nnx.Param)))
    x = np.asarray(x, np.float64)
    e, s = gau.units, gau.key_size
    hid = x @ p["i_dense"]["kernel"] + p["i_dense"]["bias"]
    hid = hid / (1 + np.exp(-hid))  # swish
    u, v, z = hid[..., :e], hid[..., e:2 * e], hid[..., 2 * e:]
    q, k = z * p["q_scale"] + p["q_offset"], z * p["k_scale"] + p["k_offset"]
    t = x.shape[1]
    theta = 10000.0 ** (-np.arange(0, s, 2) / s)
    ang = np.arange(t)[:, None] * theta[None, :]
    cos, sin = np.repeat(np.cos(ang), 2, -1)[None], np.repeat(np.sin(ang), 2, -1)[None]
    rope = lambda y: y * cos + np.stack([-y[..., 1::2], y[..., ::2]], -1).reshape(y.shape) * sin
    a = np.einsum("bts,bus->btu", rope(q), rope(k)) / np.sqrt(s)
    m = np.broadcast_to(np.asarray(mask), a.shape)
    if normalization == "squared_relu":
        w = np.where(m, np.maximum(a, 0) ** 2, 0) / m.sum(-1, keepdims=True)
    else:
        a = np.where(m, a, -np.inf)
        w = np.exp(a - a.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
    return (u * (w @ v)) @ p["o_dense"]["kernel"] + p["o_dense"]["bias"]


@pytest.mark.parametrize("normalization", ["squared_relu", "softmax"])
def test_gau_matches_bert4keras_transcription(normalization):
    gau = GatedAttentionUnit(8, units=12, key_size=6, normalization=normalization, rngs=nnx.Rngs(0))
    # non-trivial γ, β so that q ≠ k
    gau.q_scale[...] = 1 + 0.3 * jax.random.normal(jax.random.key(2), (6,))
    gau.k_offset[...] = 0.2 * jax.random.normal(jax.random.key(3), (6,))
    x = jax.random.normal(jax.random.key(4), (2, 5, 8))
    mask = jnp.stack([causal_mask(5), jnp.ones((5, 5), bool).at[:, 3:].set(False)])  # [b, t, s]
    np.testing.assert_allclose(gau(x, mask=mask), _gau_reference(gau, x, mask, normalization), atol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: TransformerBlock(16, 3, 32, rngs=nnx.Rngs(0)), r"`num_heads` must be a divisor of d_model=16"),
    (lambda: TransformerBlock(16, 2, 32, placement="sandwich", rngs=nnx.Rngs(0)), r"`placement` must be one of"),
    (lambda: TransformerBlock(16, 2, 32, norm="batch", rngs=nnx.Rngs(0)), r"`norm` must be one of"),
    (lambda: TransformerBlock(16, 2, 32, activation="tanh", rngs=nnx.Rngs(0)), r"`activation` must be one of"),
    (lambda: TransformerBlock(18, 2, 32, rngs=nnx.Rngs(0)), r"`head_dim` must be even when rope is used"),
    (lambda: GatedAttentionUnit(8, units=4, key_size=5, rngs=nnx.Rngs(0)), r"`key_size` must be even"),
    (lambda: GatedAttentionUnit(8, units=4, key_size=4, normalization="relu", rngs=nnx.Rngs(0)),
     r"`normalization` must be one of"),
])
def test_bad_inputs(make, match):
    with pytest.raises(ValueError, match=match):
        make()
