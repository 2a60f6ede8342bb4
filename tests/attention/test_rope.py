"""RoPE: scores depend only on n − m, isometry, identity at 0, the two layouts agree under the
permutation, and each layout equals its reference formula (bert4keras / LLaMA rotate_half). float64, 1e-10."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kexue_jax.attention import apply_rope, rope_frequencies, rope_permutation

CONVENTIONS = ("interleaved", "half")


def _rotation_matrix(p, k, convention, base=10000.0):
    """Block-diagonal rotation R_p built pair by pair (float64 NumPy)."""
    theta = base ** (-np.arange(0, k, 2) / k)
    r = np.zeros((k, k))
    for i, th in enumerate(theta):
        a, b = (2 * i, 2 * i + 1) if convention == "interleaved" else (i, i + k // 2)
        c, s = np.cos(p * th), np.sin(p * th)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_score_depends_only_on_relative_position(convention):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        k = 16
        for _ in range(5):
            q, key = jnp.asarray(rng.normal(size=(1, 1, k))), jnp.asarray(rng.normal(size=(1, 1, k)))
            m, n, c = (float(v) for v in rng.integers(-500, 500, size=3))
            rot = lambda x, p: apply_rope(x, jnp.array([p]), convention=convention)[0, 0]
            s = jnp.dot(rot(q, m), rot(key, n))
            np.testing.assert_allclose(s, jnp.dot(rot(q, m + c), rot(key, n + c)), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(s, jnp.dot(q[0, 0], rot(key, n - m)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_equals_explicit_rotation_matrix_is_isometry_and_identity_at_zero(convention):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.normal(size=(2, 7, 3, 8)))
        positions = jnp.asarray(rng.integers(0, 1000, size=(2, 7)))
        out, at_zero = jax.jit(lambda x, positions: (apply_rope(x, positions, convention=convention),
                                                     apply_rope(x, jnp.zeros(7, int), convention=convention)))(
            x, positions)
        assert out.dtype == jnp.float64
        for bi in range(2):
            for ti in range(7):
                r = _rotation_matrix(float(positions[bi, ti]), 8, convention)
                np.testing.assert_allclose(out[bi, ti], np.asarray(x[bi, ti]) @ r.T, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-10)
        np.testing.assert_array_equal(at_zero, x)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_base_sets_the_frequencies(convention):
    # θ_i = base^{−2i/k} for a base other than RoFormer's 10000 (e.g. a context-extension base)
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        x = jnp.asarray(rng.normal(size=(5, 6)))
        positions = jnp.asarray(rng.integers(0, 50, size=5))
        np.testing.assert_allclose(rope_frequencies(6, base=500.0, dtype=jnp.float64),
                                   500.0 ** (-np.arange(0, 6, 2) / 6), rtol=1e-12)
        out = apply_rope(x, positions, convention=convention, base=500.0)
        for ti in range(5):
            r = _rotation_matrix(float(positions[ti]), 6, convention, base=500.0)
            np.testing.assert_allclose(out[ti], np.asarray(x[ti]) @ r.T, rtol=1e-10, atol=1e-10)


def test_interleaved_matches_bert4keras_formula_and_half_matches_rotate_half():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        t, k = 9, 12
        x = rng.normal(size=(1, t, 2, k))
        pos = np.arange(t, dtype=np.float64)
        # bert4keras: sinusoid = interleaved [sin, cos]; cos_pos/sin_pos repeat each entry twice.
        theta = 10000.0 ** (-2 * np.arange(k // 2) / k)
        ang = pos[:, None] * theta[None, :]
        sinusoid = np.stack([np.sin(ang), np.cos(ang)], -1).reshape(t, k)
        cos_pos = np.repeat(sinusoid[:, 1::2], 2, -1)[None, :, None]
        sin_pos = np.repeat(sinusoid[:, ::2], 2, -1)[None, :, None]
        rotated = np.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)
        np.testing.assert_allclose(apply_rope(jnp.asarray(x), jnp.asarray(pos)), x * cos_pos + rotated * sin_pos,
                                   rtol=1e-12, atol=1e-12)
        # LLaMA: cos/sin = concat(freqs, freqs); rotate_half(x) = concat(-x2, x1).
        cos = np.concatenate([np.cos(ang)] * 2, -1)[None, :, None]
        sin = np.concatenate([np.sin(ang)] * 2, -1)[None, :, None]
        rotate_half = np.concatenate([-x[..., k // 2:], x[..., :k // 2]], -1)
        np.testing.assert_allclose(apply_rope(jnp.asarray(x), jnp.asarray(pos), convention="half"),
                                   x * cos + rotate_half * sin, rtol=1e-12, atol=1e-12)


def test_layouts_agree_under_the_permutation():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.normal(size=(2, 6, 3, 10)))
        pos = jnp.asarray(rng.integers(0, 4096, size=(2, 6)))
        perm = rope_permutation(10)
        np.testing.assert_array_equal(perm, [0, 2, 4, 6, 8, 1, 3, 5, 7, 9])
        np.testing.assert_allclose(apply_rope(x[..., perm], pos, convention="half"),
                                   apply_rope(x, pos)[..., perm], rtol=1e-10, atol=1e-10)
        # a converted q/k projection gives identical attention scores in the other layout
        q, k = apply_rope(x, pos), apply_rope(x[:, ::-1], pos)
        qh, kh = apply_rope(x[..., perm], pos, convention="half"), apply_rope(x[:, ::-1][..., perm], pos,
                                                                              convention="half")
        np.testing.assert_allclose(jnp.einsum("bthk,bshk->bhts", q, k), jnp.einsum("bthk,bshk->bhts", qh, kh),
                                   rtol=1e-10, atol=1e-10)


def test_shared_positions_broadcast_and_low_precision_dtype_is_kept():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 2, 4)), jnp.float32)
    shared, per_example, out = jax.jit(lambda x: (
        apply_rope(x, jnp.arange(5)), apply_rope(x, jnp.tile(jnp.arange(5), (3, 1))),
        apply_rope(x.astype(jnp.bfloat16), jnp.arange(5))))(x)
    np.testing.assert_allclose(shared, per_example, atol=1e-6)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), shared, atol=3e-2)
    np.testing.assert_allclose(rope_frequencies(4), [1.0, 0.01], rtol=1e-6)


def test_bfloat16_input_keeps_float32_angles_at_long_positions():
    # bf16 has 8 significant bits: position 4095 would round to 4096 and the angle p·θ_0 would be off by
    # radians; the angles must be formed in float32 and only the output rounded to bf16.
    x = jnp.asarray(np.random.default_rng(5).normal(size=(5, 8)), jnp.bfloat16)
    positions = jnp.array([3, 257, 1001, 2047, 4095])
    out = np.asarray(jax.jit(apply_rope)(x, positions), np.float64)
    x64 = np.asarray(x, np.float64)
    for ti in range(5):
        ref = x64[ti] @ _rotation_matrix(float(positions[ti]), 8, "interleaved").T
        np.testing.assert_allclose(out[ti], ref, atol=3e-2)  # bf16 output rounding (2^-8 relative) plus f32 angles


@pytest.mark.parametrize("x, positions, kwargs, match", [
    (jnp.zeros((2, 5, 3, 7)), jnp.arange(5), {}, r"`x` must have an even head dim"),
    (jnp.zeros((2, 5, 4)), jnp.arange(5), dict(convention="neox"), r"`convention` must be one of"),
    (jnp.zeros((2, 5, 4)), jnp.arange(6), {}, r"`positions` must have shape \[t\] or \[b, t\] with t = 5"),
    (jnp.zeros((2, 5, 4)), jnp.zeros((3, 5)), {}, r"`positions` must have shape"),
    (jnp.zeros((5,)), jnp.arange(5), {}, r"`x` must have rank 2"),
    (jnp.zeros((5, 4)), jnp.arange(5), dict(base=1.0), r"`base` must be > 1"),
])
def test_bad_inputs(x, positions, kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_rope(x, positions, **kwargs)


def test_permutation_bad_input():
    with pytest.raises(ValueError, match=r"`head_dim` must be a positive even int; got 5"):
        rope_permutation(5)
