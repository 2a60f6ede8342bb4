"""FAVOR+: E[q̃·k̃] = e^{q·k} and the relative MSE equals the closed form (e^{‖q+k‖²} − 1)/m (slope −1);
orthogonal blocks are orthogonal, sign-corrected (Haar) and chi-scaled; the stabilisers cancel; the
google-research unit-test thresholds hold; causal output i equals the non-causal formula on the prefix."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from kexue_jax.attention import (attention, performer_attention, performer_features, performer_projection,
                                 performer_redraw_key)


def _projections(key, draws, m, d, orthogonal, dtype=jnp.float32):
    """`draws` independent m-row projections [draws, m, d] from one call (m a multiple of d when orthogonal):
    the library draws each block of d rows independently, so consecutive m-row slices are independent
    m-row projections. One draw instead of a vmap over keys, which is much slower to compile."""
    return performer_projection(key, draws * m, d, orthogonal=orthogonal, dtype=dtype).reshape(draws, m, d)


def _kernel_estimates(q, k, proj, ms):
    """q̃·k̃ with the bare (unbiased) features of the first m rows of each projection in proj [draws, M, d],
    for each m in `ms`. Returns a list of [draws] arrays."""
    feat = lambda x, p: performer_features(x[None, None, None], p, is_query=True, eps=0.0, normalize=False,
                                           stabilize=False)[0, 0, 0]  # [m]
    return [jax.vmap(lambda p: jnp.dot(feat(q, p[:m]), feat(k, p[:m])))(proj) for m in ms]


def test_unbiased_and_relative_mse_matches_closed_form_with_slope_minus_one():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        d = 8
        q = rng.normal(size=d)
        q *= 0.35 / np.linalg.norm(q)
        k = rng.normal(size=d)
        k *= 0.35 / np.linalg.norm(k)
        exact = float(np.exp(q @ k))
        rel_var = float(np.expm1(np.sum((q + k) ** 2)))  # per-feature relative variance, closed form
        q, k = jnp.asarray(q), jnp.asarray(k)
        draws, ms = 4000, (2, 8, 32)

        @jax.jit
        def run(q, k, key_iid, key_orth):
            # the iid estimates for m = 2, 8 use the first m rows of each m = 32 draw (rows of an iid
            # projection are iid, so each is an exact m-feature draw; the three MSEs are correlated, not biased)
            iid = _projections(key_iid, draws, max(ms), d, orthogonal=False, dtype=jnp.float64)
            orth = _projections(key_orth, draws, 8, d, orthogonal=True, dtype=jnp.float64)
            return _kernel_estimates(q, k, iid, ms) + _kernel_estimates(q, k, orth, (8,))

        estimates = run(q, k, jax.random.key(0), jax.random.key(99))
        mses = []
        for m, est in zip(ms, estimates):
            ratio = np.asarray(est) / exact
            mse = float(np.mean((ratio - 1) ** 2))
            np.testing.assert_allclose(mse, rel_var / m, rtol=0.15)
            assert abs(ratio.mean() - 1) < 4 * np.sqrt(rel_var / (m * draws))  # unbiased within 4 s.e.
            mses.append(mse)
        slope = np.polyfit(np.log(ms), np.log(mses), 1)[0]
        assert -1.1 < slope < -0.9
        ratio_orth = np.asarray(estimates[-1]) / exact
        assert abs(ratio_orth.mean() - 1) < 4 * np.sqrt(rel_var / (8 * draws))  # orthogonal: still unbiased


def test_orthogonal_projection_blocks_norms_and_haar_signs():
    d, m = 6, 15  # two full blocks and a partial one

    @jax.jit
    def draw(key1, key2, key3):  # one compilation for every projection below
        return (performer_projection(key1, m, d), performer_projection(key1, m, d, scaling="sqrt_dim"),
                _projections(key2, 400, d, d, orthogonal=True),  # 400 independent d x d blocks
                jnp.linalg.qr(jax.random.normal(key3, (400, d, d)))[0])

    proj, fixed, many, q_plain = (np.asarray(a, np.float64) for a in draw(*(jax.random.key(i) for i in (1, 2, 3))))
    directions = proj / np.linalg.norm(proj, axis=-1, keepdims=True)
    for block in (directions[:6], directions[6:12], directions[12:]):
        np.testing.assert_allclose(block @ block.T, np.eye(block.shape[0]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fixed, axis=-1), np.sqrt(d), rtol=1e-5)
    norms = np.linalg.norm(many, axis=-1).ravel()
    assert stats.kstest(norms, stats.chi(d).cdf).pvalue > 1e-3  # row norms ~ chi(d)
    first = many[:, 0, 0] / np.linalg.norm(many[:, 0], axis=-1)
    assert stats.binomtest(int(np.sum(first > 0)), first.size).pvalue > 1e-3  # symmetric, as for Haar
    assert stats.kstest(first ** 2, stats.beta(0.5, (d - 1) / 2).cdf).pvalue > 1e-3
    # negative control: uncorrected QR fixes the sign of Q[0, 0], so its directions are not Haar
    assert np.all(q_plain[:, 0, 0] > 0) or np.all(q_plain[:, 0, 0] < 0)


def test_orthogonal_blocks_are_the_positive_diagonal_qr_factor_of_their_gaussian():
    # The documented construction, draw for draw: block b's rows are Qᵀ for the unique QR factorisation
    # G_b = Q R with diag(R) > 0 of the Gaussian G_b = normal(split(key)[0], [blocks, d, d])[b]. Computed here
    # by NumPy's QR in float64 with Q's columns flipped to make diag(R) positive; unique, so LAPACK's own sign
    # choices cancel. Flipping Q's rows instead (the statistical Haar checks above cannot tell) fails here.
    d, m = 5, 12  # two full blocks and a partial one
    key = jax.random.key(21)
    proj = np.asarray(performer_projection(key, m, d, scaling="sqrt_dim"), np.float64)
    gauss = np.asarray(jax.random.normal(jax.random.split(key)[0], (3, d, d), jnp.float32), np.float64)
    rows = []
    for g in gauss:
        q, r = np.linalg.qr(g)
        q = q * np.sign(np.diag(r))[None, :]
        np.testing.assert_allclose(q @ (q.T @ g), g, atol=1e-12)
        assert np.all(np.diag(q.T @ g) > 0)
        rows.append(q.T)
    expected = np.concatenate(rows)[:m] * np.sqrt(d)
    np.testing.assert_allclose(proj, expected, atol=2e-5)


def test_stabilisers_keep_features_positive_and_cancel_in_the_output():
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(2, 5, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 5, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 5, 2, 3)), jnp.float32)
    @jax.jit
    def run(q, k, key):  # one compilation
        proj = performer_projection(key, 32, 8)
        feats = lambda x, is_query, stab: performer_features(x, proj, is_query=is_query, eps=0.0, stabilize=stab)
        return (jnp.einsum("bthm,bshm->bhts", feats(q, True, False), feats(k, False, False)),
                jnp.einsum("bthm,bshm->bhts", feats(q, True, True), feats(k, False, True)),
                performer_features(30 * q, proj, is_query=True, eps=0.0),
                performer_features(30 * k, proj, is_query=False),
                performer_features(30 * q, proj, is_query=True, eps=0.0, stabilize=False))

    plain, stab, big, big_keys, naive = (np.asarray(a) for a in run(q, k, jax.random.key(5)))
    # the shifts are a positive factor per query row and per (batch, head): row-normalised weights agree
    np.testing.assert_allclose(stab / stab.sum(-1, keepdims=True), plain / plain.sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.max(big, axis=-1), 32 ** -0.5, rtol=1e-6)  # largest feature is exactly 1/√m
    assert np.all(np.isfinite(big_keys)) and np.all(big_keys > 0)
    assert np.all(naive == 0)  # negative control: without the shift e^{−‖q‖²/2} underflows to 0


def test_features_and_attention_equal_the_google_formula_in_float64():
    # x̃ = m^{−1/2}(exp(ω·x' − ‖x'‖²/2 − shift) + eps), x' = d^{−1/4}x; shift = max over the features per
    # query row, over the sequence and features per (batch, head) for keys. eps = 0.3 makes its placement
    # and the shift's axes visible in the output (a shift cancels exactly only for eps = 0); example 1 is
    # scaled up so that a shift shared across the batch would differ from the per-(batch, head) one.
    rng = np.random.default_rng(10)
    b, t, h, d, m, e, eps = 2, 5, 3, 4, 12, 2, 0.3
    scale = np.array([1.0, 2.5])[:, None, None, None]
    q, k = (rng.normal(size=(b, t, h, d)) * scale for _ in range(2))
    v, proj = rng.normal(size=(b, t, h, e)), rng.normal(size=(m, d))
    with jax.enable_x64(True):
        fq, fk, out = jax.jit(lambda q, k, v, proj: (
            performer_features(q, proj, is_query=True, eps=eps), performer_features(k, proj, is_query=False, eps=eps),
            performer_attention(q, k, v, projection=proj, eps=eps)))(q, k, v, proj)

    def features(x, axes):
        xs = x * d ** -0.25
        log = np.einsum("bthd,md->bthm", xs, proj) - 0.5 * np.sum(xs ** 2, -1, keepdims=True)
        return (np.exp(log - log.max(axis=axes, keepdims=True)) + eps) / np.sqrt(m)

    ref_q, ref_k = features(q, (3,)), features(k, (1, 3))
    np.testing.assert_allclose(fq, ref_q, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fk, ref_k, rtol=1e-12, atol=1e-14)
    a = np.einsum("bthm,bshm->bhts", ref_q, ref_k)
    ref = np.einsum("bhts,bshe->bthe", a / a.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_causal_performer_equals_masked_quadratic_form_of_its_features():
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 8, 2, 4)), jnp.float32) for _ in range(3))
    @jax.jit
    def run(q, k, v, key):
        proj = performer_projection(key, 16, 4)
        fq = performer_features(q, proj, is_query=True)
        fk = performer_features(k, proj, is_query=False)
        a = jnp.einsum("bthm,bshm->bhts", fq, fk) * jnp.tril(jnp.ones((1, 1, 8, 8)))
        ref = jnp.einsum("bhts,bshe->bthe", a / a.sum(-1, keepdims=True), v)
        return performer_attention(q, k, v, projection=proj, causal=True, chunk_size=4), ref

    out, ref = run(q, k, v, jax.random.key(7))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_google_unit_test_thresholds():
    # fast_attention_test.py: q = k (same key), d = 8, v dim 10, length 2, 10,000 features, no stabiliser.
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 1, 8))
    v = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 1, 10))
    # causal toy: q = k = 1, v = e_1 at the first step -> 1, 1/2, 1/3 (error < 0.02)
    ones, value = jnp.ones((1, 3, 1, 1)), jnp.zeros((1, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)

    @jax.jit
    def run(q, v, key, ones, value):  # every draw of both tests in one compilation
        exact = attention(q, q, v, implementation="einsum")
        draw = lambda orthogonal: _projections(key, 12, 10000, 8, orthogonal=orthogonal)  # 12 draws
        rel = lambda projections: jax.vmap(lambda p: jnp.max(jnp.abs(
            (exact - performer_attention(q, q, v, projection=p, eps=0.0)) / exact)))(projections)
        toy = lambda orthogonal: performer_attention(ones, ones, value, key=key, num_features=10000,
                                                     orthogonal=orthogonal, causal=True, eps=0.0)[0, :, 0, 0]
        return rel(draw(False)), rel(draw(True)), toy(False), toy(True)

    iid, ortho, toy_iid, toy_ortho = (np.asarray(a) for a in run(q, v, jax.random.key(8), ones, value))
    # Google asserts one fixed draw (of sin/cos features); positive features with q = k are heavy-tailed,
    # so a single draw exceeds 0.33 about one time in ten: assert the median draw.
    assert np.median(iid) < 0.33
    assert max(ortho) < 2.0
    for toy in (toy_iid, toy_ortho):
        np.testing.assert_allclose(toy, [1.0, 0.5, 1 / 3], atol=0.02)


def test_redraw_key_is_constant_within_a_period():
    base = jax.random.key(9)
    data = lambda key: jax.random.key_data(performer_redraw_key(base, key, redraw_every=10))
    np.testing.assert_array_equal(data(0), data(9))
    assert not np.array_equal(data(9), data(10))
    np.testing.assert_array_equal(data(10), jax.random.key_data(jax.random.fold_in(base, 1)))


# Causal mode: key j's shift is the running max R_i of the log-features over j ≤ i and the features, so
# causal output i is the non-causal formula (Google's) on the prefix (q_i, k[:i+1], v[:i+1]), eps included,
# and a later key can never change an earlier output (with the whole-sequence max and eps added after it, one
# later key 17 above moved earlier outputs by O(1): review 2026-11-23).

def _log_features(x, proj):
    xs = x * x.shape[-1] ** -0.25
    return np.einsum("bthd,md->bthm", xs, proj) - 0.5 * np.sum(xs ** 2, -1, keepdims=True)


def _with_log_feature(k, proj, pos, target):
    """k with key `pos` (every example and head) replaced by one whose largest log-feature is `target`
    (feature 0, whose projection row is the longest)."""
    w = proj[0]
    norm = np.linalg.norm(w)
    assert np.all(np.linalg.norm(proj[1:], axis=-1) < norm) and 2 * target <= norm ** 2
    beta = norm - np.sqrt(norm ** 2 - 2 * target)  # β‖ω_0‖ − β²/2 = target for x̂ = β ω_0/‖ω_0‖
    k = k.copy()
    k[:, pos] = beta * w / norm * k.shape[-1] ** 0.25
    return k


def _gap_data(seed, t=8, d=4, m=8, e=3):
    rng = np.random.default_rng(seed)
    q, k = (0.5 * rng.normal(size=(2, t, 2, d)) for _ in range(2))
    v, proj = rng.normal(size=(2, t, 2, e)), rng.normal(size=(m, d))
    proj[0] *= 8 / np.linalg.norm(proj[0])  # max_x of its log-feature is ‖ω_0‖²/2 = 32
    return q, k, v, proj


def _prefix_oracle(q, k, v, proj, eps):
    """Causal output i as the non-causal `performer_attention` on (q[:, i], k[:, :i+1], v[:, :i+1])."""
    return jnp.concatenate([performer_attention(q[:, i:i + 1], k[:, :i + 1], v[:, :i + 1], projection=proj, eps=eps)
                            for i in range(q.shape[1])], axis=1)


# Jitted once per shape, dtype, eps and chunk size, shared by the tests below (compilation dominates).
_oracle = jax.jit(_prefix_oracle, static_argnames="eps")
_causal = jax.jit(lambda q, k, v, proj, *, eps=1e-6, chunk: performer_attention(
    q, k, v, projection=proj, eps=eps, causal=True, chunk_size=chunk), static_argnames=("eps", "chunk"))


@pytest.mark.parametrize("eps, gap, chunks", [(1e-6, 17.0, (1, 2, 4, 8)), (0.3, 3.0, (1, 2, 8))])
def test_causal_output_i_equals_the_non_causal_formula_on_the_prefix(eps, gap, chunks):
    q, k, v, proj = _gap_data(12)
    k = _with_log_feature(k, proj, 5, _log_features(k[:, :5], proj).max() + gap)
    with jax.enable_x64(True):
        ref = np.asarray(_oracle(q, k, v, proj, eps=eps))
        outs = [_causal(q, k, v, proj, eps=eps, chunk=c) for c in chunks]
    for chunk, out in zip(chunks, outs):
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12, err_msg=f"chunk {chunk}")


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_causal_outputs_ignore_a_much_larger_later_key(dtype, atol):
    # The review's case: one last key 17 above the rest (eps = 1e-6) moved outputs 0–6 by up to 1.7.
    q, k, v, proj = _gap_data(13)
    k_big = _with_log_feature(k, proj, 7, _log_features(k, proj).max() + 17.0)
    rng = np.random.default_rng(14)
    k_rand, v_rand = k.copy(), v.copy()
    k_rand[:, 5:], v_rand[:, 5:] = 0.5 * rng.normal(size=k[:, 5:].shape), rng.normal(size=v[:, 5:].shape)
    with jax.enable_x64(True):
        q, proj = jnp.asarray(q, dtype), jnp.asarray(proj, dtype)
        for chunk in (1, 4):
            base, big, rand = (np.asarray(_causal(q, jnp.asarray(kk, dtype), jnp.asarray(vv, dtype), proj, eps=1e-6,
                                                  chunk=chunk))
                               for kk, vv in ((k, v), (k_big, v), (k_rand, v_rand)))
            assert base.dtype == dtype and np.all(np.isfinite(big))
            np.testing.assert_allclose(big[:, :7], base[:, :7], rtol=0, atol=atol, err_msg=f"chunk {chunk}")
            np.testing.assert_allclose(rand[:, :5], base[:, :5], rtol=0, atol=atol, err_msg=f"chunk {chunk}")


def test_causal_equals_the_whole_sequence_shift_when_the_first_key_holds_the_max():
    # R_i is then the whole-sequence max for every i: the previous causal formula (features with one key
    # shift per (batch, head), eps = 0.3 added after it, masked quadratic form), written out in float64.
    q, k, v, proj = _gap_data(15)
    k = _with_log_feature(k, proj, 0, _log_features(k, proj).max() + 1.0)
    eps, m = 0.3, proj.shape[0]
    lq, lk = _log_features(q, proj), _log_features(k, proj)
    fq = (np.exp(lq - lq.max(-1, keepdims=True)) + eps) / np.sqrt(m)
    fk = (np.exp(lk - lk.max(axis=(1, 3), keepdims=True)) + eps) / np.sqrt(m)
    a = np.einsum("bthm,bshm->bhts", fq, fk) * np.tril(np.ones((8, 8)))
    ref = np.einsum("bhts,bshe->bthe", a / a.sum(-1, keepdims=True), v)
    with jax.enable_x64(True):
        for chunk in (1, 2, 8):
            np.testing.assert_allclose(_causal(q, k, v, proj, eps=eps, chunk=chunk), ref, rtol=1e-12, atol=1e-13)


def test_causal_gradients_equal_the_prefix_oracle_gradients():
    q, k, v, proj = _gap_data(16, t=4)
    k = _with_log_feature(k, proj, 2, _log_features(k[:, :2], proj).max() + 17.0)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.cos(f(q, k, v)))
    with jax.enable_x64(True):
        g_ref, g = jax.jit(lambda q, k, v, proj: (
            jax.grad(loss(lambda q, k, v: _prefix_oracle(q, k, v, proj, 1e-6)), argnums=(0, 1, 2))(q, k, v),
            jax.grad(loss(lambda q, k, v: performer_attention(q, k, v, projection=proj, causal=True, chunk_size=2)),
                     argnums=(0, 1, 2))(q, k, v)))(q, k, v, proj)
    for name, a, b in zip("qkv", g, g_ref):
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10, err_msg=name)


_X = jnp.zeros((1, 4, 2, 8))


@pytest.mark.parametrize("fn, args, kwargs, match", [
    (performer_projection, (jax.random.key(0), 0, 4), {}, r"`num_features` must be a positive int; got 0"),
    (performer_projection, (jax.random.key(0), 4, 4), dict(scaling="unit"), r"`scaling` must be one of"),
    (performer_features, (_X, jnp.zeros((16, 7))), dict(is_query=True), r"`projection` must have shape \[m, 8\]"),
    (performer_features, (_X, jnp.zeros((16, 8))), dict(is_query=True, eps=-1.0), r"`eps` must be >= 0"),
    (performer_attention, (_X, _X, _X), {}, r"`key` or `projection` must be given"),
    (performer_attention, (_X, jnp.zeros((1, 4, 2, 6)), _X), dict(key=jax.random.key(0)),
     r"`k` must have the head dim of `q` \(8\)"),
    (performer_attention, (_X, _X, _X), dict(key=jax.random.key(0), causal=True, chunk_size=3),
     r"`chunk_size` must be a positive int dividing the length 4"),
    (performer_redraw_key, (jax.random.key(0), 3), dict(redraw_every=0), r"`redraw_every` must be a positive int"),
])
def test_bad_inputs(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)
