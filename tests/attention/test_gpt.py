"""GPT with a KV cache: incremental logits equal full-sequence logits (1e-5), for the causal LM mask,
right-padded prompts and the UniLM mask; no leakage; the full-recompute step_fn agrees; bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import decoding
from kexue_jax.attention.gpt import GPT, full_recompute_step_fn, reorder_cache, tile_cache

V = 13
TOL = 1e-5
# Jitted wrappers: one compile per shape instead of op-by-op dispatch (the tests stay fast).
jfull = nnx.jit(lambda m, x, s=None, km=None, pos=None: m(x, s, key_mask=km, positions=pos))
jstep = nnx.jit(lambda m, c, x, s=None, valid=None: m.step(c, x, s, valid=valid))


@pytest.fixture(scope="module")
def lm():
    return GPT(V, 8, 2, 2, 16, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def unilm():
    return GPT(V, 8, 2, 2, 16, type_vocab_size=2, placement="post", rngs=nnx.Rngs(1))


def _ids(seed, shape, low=1):
    return jax.random.randint(jax.random.key(seed), shape, low, V)


def _explicit_forward(model, x, seg=None, key_mask=None):
    """logits = Norm(blocks(E_tok[x] + E_seg[s])) E_tokᵀ written out: NumPy embeddings, masks (j ≤ i, or
    c_j ≤ c_i with c = cumsum(s), and the key mask), the final RMS norm (pre-norm only) and the tied output
    in float64; only the `TransformerBlock`s (tested in test_transformer.py) come from the library."""
    emb = np.asarray(model.token_embedding.embedding[...], np.float64)  # [V, d]
    ids = np.asarray(x)
    h = emb[ids]  # [b, t, d]
    t = ids.shape[1]
    if seg is None:
        mask = np.broadcast_to(np.tril(np.ones((t, t), bool)), (ids.shape[0], t, t))
    else:
        h = h + np.asarray(model.segment_embedding.embedding[...], np.float64)[np.asarray(seg)]
        c = np.cumsum(np.asarray(seg), axis=1)
        mask = c[:, None, :] <= c[:, :, None]  # [b, t(query), t(key)]
    if key_mask is not None:
        mask = mask & np.asarray(key_mask)[:, None, :]

    @nnx.jit
    def blocks(m, h, mask):
        for layer in m.layers:
            h = layer(h, mask=mask, deterministic=True)
        return h

    h = np.asarray(blocks(model, jnp.asarray(h, jnp.float32), jnp.asarray(mask)), np.float64)
    if model.placement == "pre":
        h = h / np.sqrt(np.mean(h ** 2, axis=-1, keepdims=True) + model.layers[0].norm_eps)
    return h @ emb.T  # [b, t, V]


def test_full_forward_equals_explicit_composition(lm, unilm):
    """GPT.__call__ against the formula of the module docstring (1e-5): the causal LM with its final norm, and
    the post-norm UniLM model with segment embeddings, the UniLM mask and a key padding mask."""
    x = _ids(9, (2, 7))
    np.testing.assert_allclose(jfull(lm, x), _explicit_forward(lm, x), atol=TOL, rtol=0)
    seg = jnp.asarray([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]])
    km = jnp.asarray([[True] * 5 + [False] * 2, [True] * 7])
    np.testing.assert_allclose(jfull(unilm, x, seg, km), _explicit_forward(unilm, x, seg, km), atol=TOL, rtol=0)


def test_incremental_equals_full_causal(lm):
    """Prefill 4 tokens, a 3-token chunk, then single tokens: every position's logits equal the
    full-sequence forward under causal_mask (the reference path is TransformerBlock.__call__)."""
    x = _ids(0, (2, 11))
    full = jfull(lm, x)
    cache = lm.init_cache(2, 12)
    outs = []
    for a, b in ((0, 4), (4, 7)) + tuple((i, i + 1) for i in range(7, 11)):
        logits, cache = jstep(lm, cache, x[:, a:b])
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=TOL, rtol=0)
    assert int(cache["index"][0]) == 11 and cache["position"].tolist() == [11, 11]


def test_right_padded_prompts_continue_at_their_own_position(lm):
    """A batch of prompts of lengths 3 and 6, right-padded in one chunk, then 3 more tokens each: row r
    equals the unpadded full forward of its own sequence (RoPE positions count valid tokens only)."""
    seqs = [np.asarray(_ids(1, (1, 6)))[0, :3], np.asarray(_ids(2, (1, 6)))[0]]
    cont = np.asarray(_ids(3, (2, 3)))
    prompt = np.zeros((2, 6), np.int32)
    valid = np.zeros((2, 6), bool)
    for r, s in enumerate(seqs):
        prompt[r, :len(s)], valid[r, :len(s)] = s, True
    cache = lm.init_cache(2, 9)
    logits0, cache = jstep(lm, cache, jnp.asarray(prompt), valid=jnp.asarray(valid))
    steps = []
    for i in range(3):
        lg, cache = jstep(lm, cache, jnp.asarray(cont[:, i:i + 1]))
        steps.append(lg)
    steps = jnp.concatenate(steps, axis=1)
    for r, s in enumerate(seqs):
        full = jfull(lm, jnp.asarray(np.concatenate([s, cont[r]])[None]))[0]
        np.testing.assert_allclose(logits0[r, :len(s)], full[:len(s)], atol=TOL, rtol=0)
        np.testing.assert_allclose(steps[r], full[len(s):], atol=TOL, rtol=0)


def test_unilm_source_once_then_target_incremental(unilm):
    """UniLM mode: the source runs once (segment 0, bidirectional), target tokens with segment 1 one at a
    time; equals the full forward under unilm_mask; a target given segment 0 would differ."""
    x = _ids(4, (2, 10))
    seg = jnp.asarray([[0] * 6 + [1] * 4] * 2)
    full = jfull(unilm, x, seg)
    last, cache = nnx.jit(lambda m, src: decoding.unilm_prefill(m, src, max_len=10))(unilm, x[:, :6])
    np.testing.assert_allclose(last, full[:, 5], atol=TOL, rtol=0)
    outs = []
    for i in range(6, 10):
        lg, cache = jstep(unilm, cache, x[:, i:i + 1], jnp.ones((2, 1), jnp.int32))
        outs.append(lg)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full[:, 6:], atol=TOL, rtol=0)
    # a teacher-forced prefix in unilm_prefill carries segment 1, as in training
    last2, _ = nnx.jit(lambda m, src, pre: decoding.unilm_prefill(m, src, prefix_ids=pre, max_len=10))(
        unilm, x[:, :6], x[:, 6:9])
    np.testing.assert_allclose(last2, full[:, 8], atol=TOL, rtol=0)
    wrong = jfull(unilm, x, jnp.zeros_like(seg))[:, 8]
    assert float(jnp.max(jnp.abs(wrong - full[:, 8]))) > 1e-3


def test_unilm_no_leakage(unilm):
    """Spec §1.6.2: perturbing target token k changes nothing before k (exactly), nothing at source
    positions; perturbing a source token changes every position."""
    x = _ids(5, (1, 10))
    seg = jnp.asarray([[0] * 6 + [1] * 4])
    base = jfull(unilm, x, seg)
    y = x.at[0, 7].set((x[0, 7] % (V - 1)) + 1)
    pert = jfull(unilm, y, seg)
    assert float(jnp.max(jnp.abs(pert[0, :7] - base[0, :7]))) == 0.0
    z = x.at[0, 2].set((x[0, 2] % (V - 1)) + 1)
    diff = jnp.max(jnp.abs(jfull(unilm, z, seg)[0] - base[0]), axis=-1)
    assert bool(jnp.all(diff > 0))


def test_full_recompute_step_fn_matches_cache(unilm):
    """The bert4keras-style full re-run gives the cached logits at every step (padded sources too)."""
    src = np.asarray(_ids(6, (2, 5)))
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    src = np.where(valid, src, 0)
    tgt = _ids(7, (2, 3))
    _, cache = nnx.jit(lambda m, s, v: decoding.unilm_prefill(m, s, max_len=8, source_valid=v))(
        unilm, jnp.asarray(src), jnp.asarray(valid))
    state = dict(tokens=jnp.zeros((2, 8), jnp.int32).at[:, :5].set(src), segments=jnp.zeros((2, 8), jnp.int32),
                 valid=jnp.zeros((2, 8), bool).at[:, :5].set(valid), length=jnp.full((2,), 5, jnp.int32))
    step_full = nnx.jit(lambda m, st, t: full_recompute_step_fn(m, unilm=True)(st, t))
    step_cache = nnx.jit(lambda m, c, t: decoding.gpt_step_fn(m, segment=1)(c, t))
    for i in range(3):
        a, cache = step_cache(unilm, cache, tgt[:, i:i + 1])
        b, state = step_full(unilm, state, tgt[:, i:i + 1])
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_reorder_and_tile_cache(lm):
    x = _ids(8, (2, 4))
    _, cache = jstep(lm, lm.init_cache(2, 6), x)
    tiled = tile_cache(cache, 3)
    assert tiled["k"].shape[0] == 6
    np.testing.assert_array_equal(tiled["k"][4], cache["k"][1])
    back = reorder_cache(tiled, jnp.asarray([5, 0]))
    np.testing.assert_array_equal(back["v"][0], cache["v"][1])


def test_step_compiles_once(lm):
    """A jitted step with the same shapes does not retrace for a different cache content."""
    traces = []

    @nnx.jit
    def f(model, cache, tok):
        traces.append(1)
        return model.step(cache, tok)

    cache = lm.init_cache(2, 4)
    for i in range(3):
        _, cache = f(lm, cache, _ids(i, (2, 1)))
    assert len(traces) == 1


@pytest.mark.parametrize("make, message", [
    (lambda m: m.step(m.init_cache(1, 4), jnp.ones((1, 5), jnp.int32)), "at most 4 tokens"),
    (lambda m: m.step(m.step(m.init_cache(1, 4), jnp.ones((1, 3), jnp.int32))[1], jnp.ones((1, 2), jnp.int32)),
     "must fit in the cache (4 slots, 3 used)"),
    (lambda m: m(jnp.full((1, 3), V, jnp.int32)), f"`token_ids` must hold ids in [0, {V})"),
    (lambda m: m(jnp.ones((3,), jnp.int32)), "`token_ids` must be an integer array [b, t]"),
    (lambda m: m(jnp.ones((1, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32)), "`segment_ids` must be None"),
    (lambda m: m.step(m.init_cache(2, 4), jnp.ones((1, 2), jnp.int32)), "`token_ids` must be a batch of 2"),
    (lambda m: decoding.unilm_prefill(m, jnp.ones((1, 6), jnp.int32), max_len=5),
     "`max_len` must be at least the prompt length 6"),
    (lambda m: GPT(V, 16, 3, 1, 8, rngs=nnx.Rngs(0)), "`num_heads` must be a divisor of d_model=16"),
    (lambda m: GPT(0, 16, 2, 1, 8, rngs=nnx.Rngs(0)), "`vocab_size` must be a positive int"),
])
def test_bad_inputs(lm, make, message):
    with pytest.raises(ValueError) as err:
        make(lm)
    assert message in str(err.value)
