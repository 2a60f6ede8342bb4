"""The attention op: xla, einsum and a float64 NumPy softmax agree; masks, bias, fallback, errors."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax.attention import attention, causal_mask, combine_masks, padding_mask


def _np_attention(q, k, v, mask=None, bias=None, scale=None):
    """Brute-force float64 reference: explicit loops over batch and heads."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    scale = 1 / np.sqrt(d) if scale is None else scale
    out = np.zeros((b, t, h, v.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            logits = scale * q[bi, :, hi] @ k[bi, :, hi].T
            if bias is not None:
                logits = logits + np.broadcast_to(bias, (b, h) + logits.shape)[bi, hi]
            if mask is not None:
                logits = np.where(np.broadcast_to(mask, (b, h) + logits.shape)[bi, hi], logits, -1e30)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            out[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, hi]
    return out


def _qkv(seed, b=2, t=5, s=5, h=3, d=4, e=4, dtype=jnp.float32):
    rng = np.random.default_rng(seed)  # NumPy draws: no random-number program to compile per shape
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for shape in ((b, t, h, d), (b, s, h, d), (b, s, h, e)))


def test_paths_agree_with_float64_reference_under_mask_and_bias():
    q, k, v = _qkv(0)
    mask = combine_masks(causal_mask(5), padding_mask(jnp.array([5, 3]), length=5)[:, None, :])  # [b, t, s]
    bias = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 5, 5)), jnp.float32)
    ref = _np_attention(q, k, v, np.asarray(mask)[:, None], np.asarray(bias))
    impls = (None, "xla", "einsum")
    outs = dict(zip(impls, jax.jit(lambda q, k, v, mask, bias: [
        attention(q, k, v, mask=mask, bias=bias, implementation=impl) for impl in impls])(q, k, v, mask, bias)))
    for impl, out in outs.items():
        np.testing.assert_allclose(out, ref, atol=1e-6, err_msg=str(impl))
    np.testing.assert_allclose(outs["xla"], outs["einsum"], atol=1e-6)


def test_gradients_agree_between_paths():
    q, k, v = _qkv(2)
    mask = causal_mask(5)
    loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, mask=mask, implementation=impl)))
    g_xla, g_ein = jax.jit(lambda q, k, v: [jax.grad(loss(impl), argnums=(0, 1, 2))(q, k, v)
                                            for impl in ("xla", "einsum")])(q, k, v)
    for a, b in zip(g_xla, g_ein):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_einsum_path_allows_a_different_value_size():
    q, k, v = _qkv(3, e=7)
    np.testing.assert_allclose(attention(q, k, v), _np_attention(q, k, v), atol=1e-6)


def test_fully_masked_rows_are_finite_and_uniform_on_every_path():
    q, k, v = _qkv(4)
    mask = jnp.ones((2, 5, 5), bool).at[0, 2].set(False)  # query 2 of example 0 sees nothing
    outs = jax.jit(lambda q, k, v: [attention(q, k, v, mask=mask, implementation=impl)
                                    for impl in ("xla", "einsum")])(q, k, v)
    for out in outs:
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out[0, 2], np.mean(np.asarray(v[0]), axis=0), atol=1e-6)


def test_cudnn_request_falls_back_to_xla_with_a_warning_off_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("cudnn is available here; the fallback is only observable without it")
    q, k, v = _qkv(5)
    with pytest.warns(RuntimeWarning, match="cudnn attention unavailable"):  # raised while tracing
        out, ref = jax.jit(lambda q, k, v: [attention(q, k, v, mask=causal_mask(5), implementation=impl)
                                            for impl in ("cudnn", "xla")])(q, k, v)
    np.testing.assert_array_equal(out, ref)


def test_bfloat16_keeps_dtype_and_matches_float32_to_bf16_precision():
    q, k, v = _qkv(6)
    ref, *outs = jax.jit(lambda q, k, v: [attention(q, k, v, implementation="einsum")] + [
        attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), implementation=impl)
        for impl in ("xla", "einsum")])(q, k, v)
    for out in outs:
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=5e-2)


def test_custom_scale_and_float64_agree_with_float64_reference_on_every_path():
    # float64 inputs keep a float64 softmax (1e-12 fails at float32 precision), and a user `scale` reaches
    # both backends (the default 1/√k would differ by far more than the tolerance).
    with jax.enable_x64(True):
        q, k, v = _qkv(7, dtype=jnp.float64)
        mask = combine_masks(causal_mask(5), padding_mask(jnp.array([5, 4]), length=5)[:, None, :])  # [b, t, s]
        bias = jnp.asarray(np.random.default_rng(8).normal(size=(2, 1, 5, 5)))
        ref = _np_attention(q, k, v, np.asarray(mask)[:, None], np.asarray(bias), scale=1.7)
        outs = jax.jit(lambda q, k, v: [attention(q, k, v, mask=mask, bias=bias, scale=1.7, implementation=impl)
                                        for impl in ("xla", "einsum")])(q, k, v)
        for out in outs:
            assert out.dtype == jnp.float64
            np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_bfloat16_softmax_is_computed_in_float32():
    # bf16 inputs, exact in bf16 (small integers), whose logits differ by less than bf16's resolution at 256:
    # a float32 softmax separates 256 and 257 (weights e/(1+e) vs 1/(1+e)); a bf16 one rounds both to 256.
    q = jnp.asarray([16.0, 1.0], jnp.bfloat16).reshape(1, 1, 1, 2)
    k = jnp.asarray([[16.0, 0.0], [16.0, 1.0]], jnp.bfloat16).reshape(1, 2, 1, 2)  # logits 256 and 257
    v = jnp.asarray([[0.0, 0.0], [1.0, 0.0]], jnp.bfloat16).reshape(1, 2, 1, 2)  # o[0] = weight of key 1
    outs = jax.jit(lambda q, k, v: [attention(q, k, v, scale=1.0, implementation=impl)
                                    for impl in ("xla", "einsum")])(q, k, v)
    for out in outs:  # 0.7311 to bf16 rounding (2^-9 here); bf16 logits would give 0.5
        np.testing.assert_allclose(float(out[0, 0, 0, 0]), np.e / (1 + np.e), atol=4e-3)


def test_no_recompile_for_new_values():
    traces = []

    @jax.jit
    def f(q, k, v):
        traces.append(1)
        return attention(q, k, v, mask=causal_mask(5), implementation="einsum")

    for seed in range(3):
        f(*_qkv(seed)).block_until_ready()
    assert len(traces) == 1


_Q = jnp.zeros((2, 5, 3, 4))
_V6 = jnp.zeros((2, 5, 3, 6))


@pytest.mark.parametrize("kwargs, match", [
    (dict(q=_Q, k=jnp.zeros((2, 5, 3, 6)), v=_V6), r"`k` must have the head dim of `q` \(4\)"),
    (dict(q=_Q[0], k=_Q, v=_Q), r"`q` must have rank 4"),
    (dict(q=_Q, k=_Q, v=jnp.zeros((2, 4, 3, 4))), r"`v` must share \[b, s, h\]"),
    (dict(q=_Q, k=jnp.zeros((2, 5, 2, 4)), v=jnp.zeros((2, 5, 2, 4))), r"`k` must share batch and heads"),
    (dict(q=_Q, k=_Q, v=_Q, mask=jnp.ones((5, 4), bool)), r"`mask` must be broadcastable to \[b, h, t, s\]"),
    (dict(q=_Q, k=_Q, v=_Q, mask=jnp.ones((5,), bool)), r"`mask` must have rank 2"),
    (dict(q=_Q, k=_Q, v=_Q, mask=jnp.ones((5, 5))), r"`mask` must be a boolean array"),
    (dict(q=_Q, k=_Q, v=_Q, bias=jnp.ones((3, 5, 5))), r"`bias` must be broadcastable"),
    (dict(q=_Q, k=_Q, v=_Q, implementation="flash"), r"`implementation` must be one of"),
    (dict(q=_Q, k=_Q, v=_V6, implementation="xla"), r"`v` must have the shape and dtype of `k`"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)
