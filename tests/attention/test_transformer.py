"""Blocks: RMS norm has mean(x²) = 1; the α-warmup residual (α = 0: post-norm gives Norm(x), pre-norm the
identity); GAU equals a float64 NumPy transcription of bert4keras `GatedAttentionUnit`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from kexue_jax.attention import GatedAttentionUnit, TransformerBlock, causal_mask, layer_norm, rms_norm


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


def test_norms_equal_their_formulas_with_a_large_eps():
    # ε = 0.5 is comparable to mean(x²), so ε inside vs outside the square root, or a centred RMS, shows
    x = np.random.default_rng(3).normal(size=(4, 8)) * 0.7 + 0.3
    ms = np.mean(x * x, -1, keepdims=True)
    var = np.var(x, -1, keepdims=True)
    with jax.enable_x64(True):
        np.testing.assert_allclose(rms_norm(jnp.asarray(x), eps=0.5), x / np.sqrt(ms + 0.5), rtol=1e-12)
        np.testing.assert_allclose(layer_norm(jnp.asarray(x), eps=0.5), (x - x.mean(-1, keepdims=True))
                                   / np.sqrt(var + 0.5), rtol=1e-12, atol=1e-14)


def _mha_reference(mha, x, positions, mask):
    """Multi-head attention with biases and interleaved RoPE at the given positions [b, t] (float64 NumPy)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(mha, nnx.Param)))
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    nh, hd = mha.num_heads, mha.head_dim
    theta = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.asarray(positions, np.float64)[..., None] * theta  # [b, t, k/2]
    cos, sin = np.repeat(np.cos(ang), 2, -1)[:, :, None], np.repeat(np.sin(ang), 2, -1)[:, :, None]
    rope = lambda y: y * cos + np.stack([-y[..., 1::2], y[..., ::2]], -1).reshape(y.shape) * sin
    proj = lambda n: (x @ p[n]["kernel"] + p[n]["bias"]).reshape(b, t, nh, hd)
    q, k, v = rope(proj("query")), rope(proj("key")), proj("value")
    logits = np.where(np.asarray(mask)[None, None], np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(hd), -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    o = np.einsum("bhts,bshk->bthk", w / w.sum(-1, keepdims=True), v).reshape(b, t, nh * hd)
    return o @ p["out"]["kernel"] + p["out"]["bias"]


def test_attention_with_biases_and_explicit_positions_matches_float64_reference():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    positions = jnp.array([[0, 3, 4, 9, 10], [7, 1, 2, 30, 5]])  # not a shift of 0 … t − 1
    biases = jnp.asarray(0.5 * rng.normal(size=(4, 16)), jnp.float32)
    mask = causal_mask(5)

    @nnx.jit
    def run(x, positions, biases):  # init and every forward pass in one compilation
        block = TransformerBlock(16, 2, 32, use_bias=True, placement="pre", identity_scale=1.5, rngs=nnx.Rngs(3))
        mha = block.attention
        for layer, bias in zip((mha.query, mha.key, mha.value, mha.out), biases):
            layer.bias[...] = bias
        h = 1.5 * x + mha(rms_norm(x), mask=mask, positions=positions)  # pre-norm: a·x + F(Norm(x)), a = 1.5
        return (mha, mha(x, mask=mask, positions=positions), block(x, mask=mask, positions=positions),
                1.5 * h + block.ffn(rms_norm(h)))

    mha, out, block_out, composed = run(x, positions, biases)
    np.testing.assert_allclose(out, _mha_reference(mha, x, positions, mask), atol=1e-5)
    np.testing.assert_allclose(block_out, composed, atol=1e-5)


def test_dropout_acts_on_the_branch_only_and_only_when_not_deterministic():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 5, 16)), jnp.float32)

    @nnx.jit
    def run(x):  # init and every forward pass in one compilation
        pre = TransformerBlock(16, 2, 32, placement="pre", dropout_rate=0.5, rngs=nnx.Rngs(0))
        post = TransformerBlock(16, 2, 32, dropout_rate=0.5, rngs=nnx.Rngs(1))
        pre.ffn.ffn_out.kernel[...] = jnp.zeros((32, 16))  # FFN branch 0: pre(x) = x + Drop(A), A = MHA(Norm(x))
        post.attention.out.kernel[...] = jnp.zeros((16, 16))  # both branches 0: post(x) = Norm(Norm(x))
        post.ffn.ffn_out.kernel[...] = jnp.zeros((32, 16))
        return (pre.attention(rms_norm(x)), pre(x, deterministic=True), pre(x, deterministic=False),
                post(x, deterministic=False), rms_norm(rms_norm(x)))

    branch, evaluated, trained, post_trained, norm2 = (np.asarray(a) for a in run(x))
    np.testing.assert_allclose(evaluated, np.asarray(x) + branch, atol=1e-6)
    delta = trained - np.asarray(x)
    dropped = np.abs(delta) < np.abs(branch)  # each entry is 0 (dropped) or A / (1 − 0.5) (kept)
    np.testing.assert_allclose(delta, np.where(dropped, 0.0, 2 * branch), atol=2e-6)
    assert stats.binomtest(int(dropped.sum()), dropped.size, 0.5).pvalue > 1e-3
    np.testing.assert_allclose(post_trained, norm2, atol=1e-6)  # the identity path is never dropped


def test_learned_norm_parameters_are_used_in_both_norms():
    # γ ≠ 1 and β ≠ 0 (distinct per sublayer): the block must apply its own learned norms, RMS (uncentred,
    # γ only) or layer (centred, γ and β), each written out here.
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 5, 16)) + 0.5, jnp.float32)
    rng = np.random.default_rng(7)
    gammas = jnp.asarray(1 + 0.5 * rng.normal(size=(2, 16)), jnp.float32)
    betas = jnp.asarray(0.5 * rng.normal(size=(2, 16)), jnp.float32)

    def norm_ref(kind, y, eps, gamma, beta):
        if kind == "rms":
            return y / jnp.sqrt(jnp.mean(y * y, -1, keepdims=True) + eps) * gamma[None, None]
        c = y - jnp.mean(y, -1, keepdims=True)
        return c / jnp.sqrt(jnp.mean(c * c, -1, keepdims=True) + eps) * gamma[None, None] + beta[None, None]

    @nnx.jit
    def run(x, gammas, betas):  # both blocks, their init and forward passes in one compilation
        outs = []
        for kind in ("rms", "layer"):
            block = TransformerBlock(16, 2, 32, norm=kind, norm_params=True, rngs=nnx.Rngs(2))
            for layer, gamma, beta in zip((block.norm1, block.norm2), gammas, betas):
                layer.scale[...] = gamma
                if kind == "layer":
                    layer.bias[...] = beta
            h = norm_ref(kind, x + block.attention(x), block.norm_eps, gammas[0], betas[0])
            outs.append((block(x), norm_ref(kind, h + block.ffn(h), block.norm_eps, gammas[1], betas[1])))
        return outs

    for out, ref in run(x, gammas, betas):
        np.testing.assert_allclose(out, ref, atol=2e-5)


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
