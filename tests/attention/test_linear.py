"""Linear attention: the O(n) form equals the explicit normalised quadratic form and the chunked causal
form equals the masked quadratic form (1e-6, float32 vs a float64 reference) for every feature map and
chunk size; per-query positive rescaling is invisible; rank ≤ m; memory grows linearly in n. Causal 'exp'
output i equals the non-causal formula on the prefix (running-max key shift), so later keys never change it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax.attention import linear_attention, linear_attention_from_features
from kexue_jax.attention.linear import FEATURE_MAPS, default_chunk_size

_PHI = {"elu_plus_one": lambda x: np.where(x > 0, x + 1, np.exp(x)), "exp": np.exp,
        "relu": lambda x: np.maximum(x, 0)}


def _quadratic(phi_q, phi_k, v, causal, key_mask=None):
    """o = (A V) / (A 1) with A = φ(Q)φ(K)ᵀ, masked; float64; 0 where the denominator is 0."""
    a = np.einsum("bthm,bshm->bhts", phi_q, phi_k)
    if causal:
        a = a * np.tril(np.ones(a.shape[-2:]))[None, None]
    if key_mask is not None:
        a = a * key_mask[:, None, None, :]
    num = np.einsum("bhts,bshe->bthe", a, v)
    den = np.swapaxes(a.sum(-1), 1, 2)[..., None]
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _data(seed=0, t=8, m=6, e=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(2, t, 3, m)).astype(np.float32), rng.normal(size=(2, t, 3, m)).astype(np.float32),
            rng.normal(size=(2, t, 3, e)).astype(np.float32))


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_linear_forms_equal_quadratic_forms_for_every_chunk_size(feature_map):
    q, k, v = _data()
    phi = _PHI[feature_map]
    f64 = lambda a: np.asarray(a, np.float64)
    ref_bi = _quadratic(phi(f64(q)), phi(f64(k)), f64(v), causal=False)
    ref_causal = _quadratic(phi(f64(q)), phi(f64(k)), f64(v), causal=True)
    chunks = (1, 2, 4, 8)
    outs = jax.jit(lambda q, k, v: [linear_attention(q, k, v, feature_map=feature_map)] + [
        linear_attention(q, k, v, feature_map=feature_map, causal=True, chunk_size=c) for c in chunks])(q, k, v)
    np.testing.assert_allclose(outs[0], ref_bi, rtol=1e-6, atol=1e-6)
    for chunk, out in zip(chunks, outs[1:]):
        np.testing.assert_allclose(out, ref_causal, rtol=1e-6, atol=1e-6, err_msg=f"chunk {chunk}")


def test_causal_gradients_equal_the_masked_quadratic_form():
    q, k, v = _data(1, t=6)

    def quadratic(q, k, v):
        a = jnp.einsum("bthm,bshm->bhts", jnp.exp(q), jnp.exp(k)) * jnp.tril(jnp.ones((1, 1, 6, 6)))
        return jnp.einsum("bhts,bshe->bthe", a / a.sum(-1, keepdims=True), v)

    loss = lambda f: lambda *a: jnp.sum(jnp.cos(f(*a)))
    g_lin, g_ref = jax.jit(lambda q, k, v: (
        jax.grad(loss(lambda *a: linear_attention(*a, feature_map="exp", causal=True, chunk_size=2)),
                 argnums=(0, 1, 2))(q, k, v),
        jax.grad(loss(quadratic), argnums=(0, 1, 2))(q, k, v)))(q, k, v)
    for a, b in zip(g_lin, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_positive_per_query_rescaling_leaves_the_output_unchanged(causal):
    q, k, v = _data(2)
    phi_q, phi_k = np.exp(q), np.exp(k)
    c = np.exp(3 * np.random.default_rng(5).normal(size=phi_q.shape[:3] + (1,))).astype(np.float32)  # c_i > 0, e^{±9}
    base, scaled_q, scaled_k = jax.jit(lambda phi_q, phi_k, v, c: [
        linear_attention_from_features(a, b, v, causal=causal) for a, b in
        ((phi_q, phi_k), (phi_q * c, phi_k), (phi_q, 7.0 * phi_k))])(phi_q, phi_k, v, c)
    np.testing.assert_allclose(scaled_q, base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled_k, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("feature_map", ["exp", "elu_plus_one"])
def test_key_mask_equals_masked_quadratic_form_and_ignores_huge_padded_keys(feature_map):
    q, k, v = _data(3)
    key_mask = np.arange(8)[None, :] < np.array([[5], [8]])
    k = np.where(key_mask[:, :, None, None], k, 80.0).astype(np.float32)  # exp(80) would swamp f32
    phi = _PHI[feature_map]
    ref = _quadratic(phi(q.astype(np.float64)), phi(k.astype(np.float64)), v.astype(np.float64), False, key_mask)
    out = linear_attention(q, k, v, feature_map=feature_map, key_mask=jnp.asarray(key_mask))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_float16_exp_features_keep_a_dominant_future_key_from_erasing_the_past():
    # One key shift per (batch, head) is exact algebra, but float16's exp underflows below e^{−17}: a last
    # key 20 above the others would zero every earlier key's features, so causal queries 0..t−2 (which
    # cannot see that key) would output 0. Features and sums must be formed in at least float32.
    q, k, v = _data(6, t=4, m=2, e=3)
    k[:, 3, :, 0] += 20.0
    q16, k16, v16 = (a.astype(np.float16) for a in (q, k, v))
    f64 = lambda a: a.astype(np.float64)  # the reference sees the same float16-rounded inputs
    ref = _quadratic(np.exp(f64(q16)), np.exp(f64(k16)), f64(v16), causal=True)
    out = jax.jit(lambda q, k, v: linear_attention(q, k, v, feature_map="exp", causal=True, chunk_size=2))(
        q16, k16, v16)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=2e-3, atol=2e-3)  # float16 rounding of v


def test_rank_is_at_most_m_while_softmax_is_full_rank():
    rng = np.random.default_rng(4)
    n, d = 32, 4
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    assert np.linalg.matrix_rank(np.exp(q @ k.T)) == n
    assert np.linalg.matrix_rank(_PHI["elu_plus_one"](q) @ _PHI["elu_plus_one"](k).T) <= d
    assert np.linalg.matrix_rank(np.exp(q) @ np.exp(k).T) <= d


def test_causal_memory_grows_linearly_in_length():
    def temp_bytes(t):
        shapes = [jax.ShapeDtypeStruct((1, t, 1, 16), jnp.float32)] * 3
        fn = jax.jit(lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=32))
        stats = fn.lower(*shapes).compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend reports no memory analysis")
        return stats.temp_size_in_bytes + stats.output_size_in_bytes
    small, large = temp_bytes(1024), temp_bytes(4096)
    assert large / small < 4.5  # quadratic would be 16x


def test_default_chunk_size():
    assert default_chunk_size(96) == 48 and default_chunk_size(64) == 64 and default_chunk_size(97) == 1


# Causal 'exp': the key shift is the running max R_i = max_{j ≤ i, r} k_j,r (what query i can see), so
# causal output i is the non-causal formula on the prefix (q_i, k[:i+1], v[:i+1]) and a future key can never
# change an earlier output (the whole-sequence max let a later key ≈ 87 above underflow every earlier
# feature in float32, ≈ 745 in float64).

def _prefix_oracle(fn, q, k, v, key_mask=None):
    """Causal output i computed as the non-causal `fn` on (q[:, i], k[:, :i+1], v[:, :i+1]), for every i."""
    outs = [fn(q[:, i:i + 1], k[:, :i + 1], v[:, :i + 1],
               **({} if key_mask is None else dict(key_mask=jnp.asarray(key_mask[:, :i + 1]))))
            for i in range(q.shape[1])]
    return jnp.concatenate(outs, axis=1)


def _exp(q, k, v, **kw):
    return linear_attention(q, k, v, feature_map="exp", **kw)


# Jitted once per shape and dtype, shared by the tests below (compilation dominates their time).
_exp_oracle = jax.jit(lambda q, k, v, key_mask: _prefix_oracle(_exp, q, k, v, key_mask))
_exp_causal = jax.jit(lambda q, k, v, key_mask=None, *, chunk: _exp(q, k, v, causal=True, chunk_size=chunk,
                                                                    key_mask=key_mask), static_argnames="chunk")


@pytest.mark.parametrize("dtype, gap, rtol, atol", [(np.float64, 800.0, 1e-10, 1e-12),
                                                    (np.float32, 120.0, 1e-5, 1e-6)])
def test_causal_exp_output_i_equals_the_non_causal_formula_on_the_prefix(dtype, gap, rtol, atol):
    q, k, v = (a.astype(dtype) for a in _data(7, t=8, m=4, e=3))
    k[:, 5, :, 0] += gap  # a later key whose features are e^{gap} above the earlier ones
    k[0, 6] = 2 * gap  # and one 2·gap above, masked in the second half of the test
    key_mask = np.ones((2, 8), bool)
    key_mask[1, :2] = False  # an all-masked prefix (outputs 0 and 1 of example 1 are 0)
    key_mask[0, 6] = False  # a masked key must stay out of the running max
    with jax.enable_x64(True):
        f64 = lambda a: jnp.asarray(a, jnp.float64)
        ref, ref_masked = (np.asarray(_exp_oracle(f64(q), f64(k), f64(v), mask))
                           for mask in (np.ones_like(key_mask), key_mask))
        outs = [(c, False, _exp_causal(q, k, v, chunk=c)) for c in (1, 2, 8)]
        outs += [(c, True, _exp_causal(q, k, v, key_mask, chunk=c)) for c in (1, 4, 8)]
    for chunk, masked, out in outs:
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref_masked if masked else ref, rtol=rtol, atol=atol,
                                   err_msg=f"chunk {chunk}, masked {masked}")
    np.testing.assert_array_equal(ref_masked[1, :2], 0)


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_causal_exp_outputs_ignore_later_keys_and_values(dtype, atol):
    q, k, v = (a.astype(dtype) for a in _data(8, t=8, m=4, e=3))
    rng = np.random.default_rng(9)
    k2, v2 = k.copy(), v.copy()
    k2[:, 5:] = rng.normal(size=k2[:, 5:].shape)
    v2[:, 5:] = rng.normal(size=v2[:, 5:].shape)
    k2[:, 6, :, 1] += 120.0 if dtype == np.float32 else 800.0  # underflowed all earlier features before
    with jax.enable_x64(True):
        for chunk in (1, 2, 8):
            base, changed = np.asarray(_exp_causal(q, k, v, chunk=chunk)), np.asarray(_exp_causal(q, k2, v2, chunk=chunk))
            assert np.all(np.isfinite(changed)) and np.all(np.abs(base) > 0)
            np.testing.assert_allclose(changed[:, :5], base[:, :5], rtol=0, atol=atol, err_msg=f"chunk {chunk}")


def test_causal_exp_equals_the_whole_sequence_shift_when_the_first_key_holds_the_max():
    # R_i = max_{j ≤ i} is then the whole-sequence max for every i: the old formula, written out in float64.
    q, k, v = (a.astype(np.float64) for a in _data(10, t=8, m=4, e=3))
    k[:, 0] += 10.0
    phi_q = np.exp(q - q.max(-1, keepdims=True))
    phi_k = np.exp(k - k.max(axis=(1, 3), keepdims=True))
    a = np.einsum("bthm,bshm->bhts", phi_q, phi_k) * np.tril(np.ones((8, 8)))
    ref = np.einsum("bhts,bshe->bthe", a / a.sum(-1, keepdims=True), v)
    with jax.enable_x64(True):
        for chunk in (1, 2, 8):
            np.testing.assert_allclose(_exp_causal(q, k, v, chunk=chunk), ref, rtol=1e-12, atol=1e-13)


def test_causal_exp_gradients_equal_the_prefix_oracle_gradients():
    q, k, v = (a.astype(np.float64) for a in _data(11, t=4, m=3, e=2))
    k[:, 2, :, 0] += 800.0  # float64 underflow of every earlier feature under a whole-sequence shift
    k[:, 1, :, 2] += 4.0
    key_mask = np.ones((2, 4), bool)
    key_mask[1, :2] = False  # example 1: outputs 0 and 1 see no key (output 0, gradient 0)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.cos(f(q, k, v)))
    with jax.enable_x64(True):
        g_ref, g = jax.jit(lambda q, k, v, mask: (
            jax.grad(loss(lambda q, k, v: _prefix_oracle(_exp, q, k, v, mask)), argnums=(0, 1, 2))(q, k, v),
            jax.grad(loss(lambda q, k, v: _exp(q, k, v, causal=True, chunk_size=2, key_mask=mask)),
                     argnums=(0, 1, 2))(q, k, v)))(q, k, v, key_mask)
        g_ref, g = [np.array(a) for a in g_ref], [np.asarray(a) for a in g]
    # The non-causal form's num / max(den, tiny) has a NaN gradient in q where den = 0 (its quotient rule
    # overflows), i.e. for the two queries without a key; the causal form gives them the exact gradient 0.
    no_key = np.zeros(q.shape, bool)
    no_key[1, :2] = True
    np.testing.assert_array_equal(~np.isfinite(g_ref[0]), no_key)
    g_ref[0][no_key] = 0
    for name, a, b in zip("qkv", g, g_ref):
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10, err_msg=name)
    assert np.all(g[0][1, :2] == 0) and np.all(g[1][1, :2] == 0) and np.all(g[2][1, :2] == 0)


_X = jnp.zeros((2, 6, 3, 4))


@pytest.mark.parametrize("args, kwargs, match", [
    ((_X, _X, _X), dict(causal=True, chunk_size=4), r"`chunk_size` must be a positive int dividing the length 6"),
    ((_X, _X, _X), dict(chunk_size=2), r"`chunk_size` must be None when causal=False"),
    ((_X, _X, _X), dict(feature_map="softplus"), r"`feature_map` must be one of"),
    ((_X, jnp.zeros((2, 6, 3, 5)), _X), {}, r"`k` must have the head dim of `q` \(4\)"),
    ((_X, jnp.zeros((2, 7, 3, 4)), jnp.zeros((2, 7, 3, 4))), dict(causal=True), r"`k` must have the length of `q`"),
    ((_X, _X, _X), dict(key_mask=jnp.ones((2, 5), bool)), r"`key_mask` must be a boolean array of shape"),
    ((_X[0], _X, _X), {}, r"`q` must have rank 4"),
])
def test_bad_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_attention(*args, **kwargs)
