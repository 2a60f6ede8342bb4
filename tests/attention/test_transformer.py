"""Blocks: RMS norm has mean(x²) = 1; the α-warmup residual (α = 0: post-norm gives Norm(x), pre-norm the
identity); GAU equals a float64 NumPy transcription of bert4keras `GatedAttentionUnit`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import GatedAttentionUnit, TransformerBlock, causal_mask, rms_norm


def test_rms_norm_has_unit_mean_square_and_no_parameters():
    x = 3 * np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32) + 1
    np.testing.assert_allclose(jnp.mean(rms_norm(x) ** 2, axis=-1), 1.0, rtol=1e-5)
    block = nnx.eval_shape(lambda: TransformerBlock(16, 2, 32, rngs=nnx.Rngs(0)))  # shapes only, no compile
    assert all(leaf.ndim == 2 for leaf in jax.tree.leaves(nnx.state(block, nnx.Param)))  # kernels only
    with_params = nnx.eval_shape(lambda: TransformerBlock(16, 2, 32, norm="layer", norm_params=True, use_bias=True,
                                                          rngs=nnx.Rngs(0)))
    assert len(jax.tree.leaves(nnx.state(with_params, nnx.Param))) == 6 + 6 + 4  # kernels, biases, γ/β


def test_alpha_warmup_residual_endpoints():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 16)), jnp.float32)

    @nnx.jit
    def run(x):  # init and every forward pass in one compilation
        post = TransformerBlock(16, 2, 32, rngs=nnx.Rngs(0))
        pre = TransformerBlock(16, 2, 32, placement="pre", rngs=nnx.Rngs(0))
        h_post = rms_norm(x + post.attention(x))
        h_pre = x + 0.5 * pre.attention(rms_norm(x))
        return dict(post0=post(x, alpha=0.0), norm2=rms_norm(rms_norm(x)), post1=post(x, alpha=1.0),
                    post1_ref=rms_norm(h_post + post.ffn(h_post)), pre0=pre(x, alpha=0.0),
                    pre_half=pre(x, alpha=0.5), pre_half_ref=h_pre + 0.5 * pre.ffn(rms_norm(h_pre)))

    r = run(x)
    np.testing.assert_allclose(r["post0"], r["norm2"], atol=1e-6)
    np.testing.assert_allclose(r["post1"], r["post1_ref"], atol=1e-5)
    np.testing.assert_array_equal(r["pre0"], x)
    np.testing.assert_allclose(r["pre_half"], r["pre_half_ref"], atol=1e-5)


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
    gau = nnx.jit(lambda: GatedAttentionUnit(8, units=12, key_size=6, normalization=normalization,
                                             rngs=nnx.Rngs(0)))()  # one compiled init
    # non-trivial γ, β so that q ≠ k
    rng = np.random.default_rng(2)
    gau.q_scale[...] = jnp.asarray(1 + 0.3 * rng.normal(size=6), jnp.float32)
    gau.k_offset[...] = jnp.asarray(0.2 * rng.normal(size=6), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    mask = np.stack([np.tril(np.ones((5, 5), bool)), np.arange(5)[None, :] < np.full((5, 1), 3)])  # [b, t, s]
    np.testing.assert_array_equal(mask[0], causal_mask(5))
    out = nnx.jit(lambda gau, x, mask: gau(x, mask=mask))(gau, x, jnp.asarray(mask))
    np.testing.assert_allclose(out, _gau_reference(gau, x, mask, normalization), atol=1e-5)


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
        nnx.eval_shape(make)  # validation runs before any parameter exists; no init is compiled
