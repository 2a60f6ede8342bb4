"""Decoding: beam 1 == greedy, top-k 1 == greedy, top-p never leaves the nucleus and samples it with the
right frequencies, beam search with enough beams finds the exhaustive optimum, the score hook, errors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import decoding
from kexue_jax.attention.gpt import GPT

V = 11
END = 2


@pytest.fixture(scope="module")
def setup():
    model = GPT(V, 8, 2, 1, 16, rngs=nnx.Rngs(3))
    prompt = jax.random.randint(jax.random.key(0), (4, 3), 3, V)
    logits, cache = nnx.jit(lambda m, c, x: m.step(c, x))(model, model.init_cache(4, 12), prompt)
    return model, cache, logits[:, -1]


def test_beam_one_equals_greedy(setup):
    model, cache, first = setup
    for end in (None, END):
        g, gl = nnx.jit(lambda m, c, f: decoding.greedy_decode(decoding.gpt_step_fn(m), c, f, max_len=8,
                                                               end_id=end))(model, cache, first)
        b, _, bl = nnx.jit(lambda m, c, f: decoding.beam_search(decoding.gpt_step_fn(m), c, f, beam_size=1,
                                                                max_len=8, end_id=end))(model, cache, first)
        np.testing.assert_array_equal(g, b)
        np.testing.assert_array_equal(gl, bl)


def test_top_k_one_equals_greedy(setup):
    model, cache, first = setup
    g, _ = nnx.jit(lambda m, c, f: decoding.greedy_decode(decoding.gpt_step_fn(m), c, f, max_len=8))(
        model, cache, first)
    s, _ = nnx.jit(lambda m, c, f: decoding.sample_decode(decoding.gpt_step_fn(m), c, f, key=jax.random.key(5),
                                                          max_len=8, top_k=1, temperature=0.7))(model, cache, first)
    np.testing.assert_array_equal(g, s)


def _nucleus_numpy(logits, p):
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep, mass = [], 0.0
    for i in order:
        keep.append(i)
        mass += probs[i]
        if mass >= p:
            break
    return set(keep), probs


def test_top_k_top_p_filter_matches_bruteforce():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 9)) * 2
    for p in (0.3, 0.7, 0.95):
        out = np.asarray(decoding.top_k_top_p_filter(jnp.asarray(logits), top_p=p))
        for row, o in zip(logits, out):
            keep, _ = _nucleus_numpy(row, p)
            assert set(np.nonzero(o > decoding.NEG_INF / 2)[0]) == keep
    out = np.asarray(decoding.top_k_top_p_filter(jnp.asarray(logits), top_k=3))
    for row, o in zip(logits, out):
        assert set(np.nonzero(o > decoding.NEG_INF / 2)[0]) == set(np.argsort(-row, kind="stable")[:3])


def test_filter_exact_ties_and_nucleus_boundary():
    """Exactly representable probabilities (0.5, 0.25): ties at the k-th value are broken by index (exactly k
    survive), and the token whose preceding mass equals p exactly is dropped (the nucleus is the smallest
    set with Σ p ≥ p); both against the brute-force nucleus."""
    flat = jnp.zeros((1, 4))  # probabilities 1/4 each
    kept = lambda out: set(np.nonzero(np.asarray(out)[0] > decoding.NEG_INF / 2)[0].tolist())
    assert kept(decoding.top_k_top_p_filter(flat, top_k=2)) == {0, 1}
    for logits, p in ((flat, 0.5), (jnp.asarray([[-50.0, 0.0, 0.0]]), 0.5), (flat, 0.75), (flat, 1.0)):
        assert kept(decoding.top_k_top_p_filter(logits, top_p=p)) == _nucleus_numpy(np.asarray(logits[0]), p)[0]
    assert _nucleus_numpy(np.zeros(4), 0.5)[0] == {0, 1}


def test_top_k_then_top_p_matches_bruteforce():
    """Both filters together: the nucleus is taken in the top-k distribution renormalised (brute force)."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(50, 9)) * 2
    for k, p in ((2, 0.5), (4, 0.6), (6, 0.9)):
        out = np.asarray(decoding.top_k_top_p_filter(jnp.asarray(logits), top_k=k, top_p=p))
        for row, o in zip(logits, out):
            top = np.argsort(-row, kind="stable")[:k]
            keep, _ = _nucleus_numpy(row[top], p)
            assert set(np.nonzero(o > decoding.NEG_INF / 2)[0]) == {int(top[i]) for i in keep}


def test_top_p_samples_only_the_nucleus_with_its_frequencies():
    """20000 draws with a fixed key from a fixed distribution: every draw is in the nucleus (a hard
    check) and each nucleus token's frequency is within 5 standard errors of p_i / Σ_nucleus p."""
    logits = jnp.asarray(np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02])))[None]  # [1, 7]
    n = 20000

    def step_fn(cache, tokens):  # a constant model: same distribution every step
        return jnp.broadcast_to(logits[:, None, :], (tokens.shape[0], 1, 7)), cache

    first = jnp.broadcast_to(logits, (n, 7))
    toks, _ = decoding.sample_decode(step_fn, jnp.zeros((n,)), first, key=jax.random.key(0), max_len=2,
                                     top_p=0.75)
    draws = np.asarray(toks).reshape(-1)
    keep, probs = _nucleus_numpy(np.asarray(logits[0]), 0.75)
    assert keep == {0, 1, 2}
    assert set(np.unique(draws)) <= keep
    q = probs[list(keep)] / probs[list(keep)].sum()
    freq = np.array([(draws == i).mean() for i in sorted(keep)])
    se = np.sqrt(q * (1 - q) / draws.size)
    assert np.all(np.abs(freq - q) < 5 * se)


def test_temperature_frequencies():
    """softmax(logits / T) frequencies within 5 standard errors (T = 0.5)."""
    logits = jnp.asarray([[1.0, 0.5, 0.0, -1.0]])
    n = 20000
    step_fn = lambda c, t: (jnp.broadcast_to(logits[:, None], (t.shape[0], 1, 4)), c)
    toks, _ = decoding.sample_decode(step_fn, jnp.zeros((n,)), jnp.broadcast_to(logits, (n, 4)),
                                     key=jax.random.key(1), max_len=1, temperature=0.5)
    q = np.asarray(jax.nn.softmax(logits[0] / 0.5))
    freq = np.bincount(np.asarray(toks).reshape(-1), minlength=4) / n
    assert np.all(np.abs(freq - q) < 5 * np.sqrt(q * (1 - q) / n))


def test_sampling_steps_are_independent_draws():
    """With a constant distribution q, two decoding steps of one row are independent draws: the rate of
    y_1 = y_2 is Σ q² (within 5 standard errors over 20000 rows), not 1 (one key reused every step)."""
    logits = jnp.asarray([[1.0, 0.5, 0.0, -1.0]])
    n = 20000
    step_fn = lambda c, t: (jnp.broadcast_to(logits[:, None], (t.shape[0], 1, 4)), c)
    toks, _ = decoding.sample_decode(step_fn, jnp.zeros((n,)), jnp.broadcast_to(logits, (n, 4)),
                                     key=jax.random.key(2), max_len=2)
    toks = np.asarray(toks)
    q = np.asarray(jax.nn.softmax(logits[0]), np.float64)
    same, rate = (toks[:, 0] == toks[:, 1]).mean(), np.sum(q ** 2)
    assert abs(same - rate) < 5 * np.sqrt(rate * (1 - rate) / n), (same, rate)


def _markov_step(table):
    """A bigram model: next logits depend on the last token only; the cache holds nothing but the batch."""
    def step_fn(cache, tokens):
        return table[tokens[:, -1]][:, None, :], cache
    return step_fn


def test_greedy_and_top1_sampling_equal_a_python_loop_with_end_handling():
    """On a random bigram model, greedy decoding (and sampling restricted to top-1) equals a plain argmax
    loop in which a row that emitted END keeps emitting END; the length counts tokens up to and including
    END. The rows are chosen so that some end early and one never ends."""
    v, t, end = 5, 6, 1
    rng = np.random.default_rng(3)
    table = rng.normal(size=(v, v)) * 3
    table[end, end] = -10.0  # after END the model itself would continue: the decoder must freeze the row
    first = rng.normal(size=(40, v)) * 3
    ref_toks, ref_len = [], []
    for row in first:
        out, logits, length = [], row, t
        for i in range(t):
            w = end if out and out[-1] == end else int(np.argmax(logits))
            out.append(w)
            logits = table[w]
            if w == end and length == t:
                length = i + 1
        ref_toks.append(out)
        ref_len.append(length)
    step = _markov_step(jnp.asarray(table))
    g, gl = decoding.greedy_decode(step, jnp.zeros((40,)), jnp.asarray(first), max_len=t, end_id=end)
    s, sl = decoding.sample_decode(step, jnp.zeros((40,)), jnp.asarray(first), key=jax.random.key(0), max_len=t,
                                   end_id=end, top_k=1)
    for toks, lens in ((g, gl), (s, sl)):
        np.testing.assert_array_equal(np.asarray(toks), ref_toks)
        np.testing.assert_array_equal(np.asarray(lens), ref_len)
    assert min(ref_len) < t - 1 and max(ref_len) == t and any(end not in r for r in ref_toks), ref_len


def test_beam_search_finds_exhaustive_optimum():
    """With K = V^(T-1) beams, beam search returns the max of Σ log p over all V^T sequences (with end
    handling: after END the sequence is frozen, later steps cost 0), checked by enumeration."""
    v, t = 4, 3
    rng = np.random.default_rng(1)
    table = jnp.asarray(rng.normal(size=(v, v)) * 2)
    first = jnp.asarray(rng.normal(size=(2, v)) * 2)
    lp_table = np.asarray(jax.nn.log_softmax(table, axis=-1))
    lp_first = np.asarray(jax.nn.log_softmax(first, axis=-1))
    toks, scores, lengths = decoding.beam_search(_markov_step(table), jnp.zeros((2,)), first, beam_size=v ** (t - 1),
                                                 max_len=t, end_id=1)
    for r in range(2):
        best, best_seq = -np.inf, None
        for seq in itertools.product(range(v), repeat=t):
            s, prev, ended = 0.0, None, False
            for i, w in enumerate(seq):
                if ended:
                    if w != 1:
                        s = -np.inf
                    continue
                s += lp_first[r, w] if i == 0 else lp_table[prev, w]
                prev, ended = w, w == 1
            if s > best:
                best, best_seq = s, seq
        np.testing.assert_allclose(float(scores[r]), best, atol=1e-5)
        assert tuple(np.asarray(toks[r]).tolist()) == best_seq
        assert int(lengths[r]) == (best_seq.index(1) + 1 if 1 in best_seq else t)


def test_score_hook_bans_a_token_and_sees_the_prefix(setup):
    model, cache, first = setup
    seen = []

    def ban(logp, tokens, step):
        seen.append(tokens.shape)
        return logp.at[:, :, 5].set(decoding.NEG_INF)

    toks, _, _ = nnx.jit(lambda m, c, f: decoding.beam_search(decoding.gpt_step_fn(m), c, f, beam_size=3,
                                                              max_len=6, score_fn=ban))(model, cache, first)
    assert not np.any(np.asarray(toks) == 5)
    assert seen[0] == (4, 3, 6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(fn="beam", beam_size=0), "`beam_size` must be a positive int; got 0"),
    (dict(fn="greedy", max_len=0), "`max_len` must be a positive int; got 0"),
    (dict(fn="greedy", end_id=V), f"`end_id` must be None or an int in [0, {V})"),
    (dict(fn="sample", top_p=0.0), "`top_p` must be None or in (0, 1]"),
    (dict(fn="sample", top_k=V + 1), f"`top_k` must be None or an int in [1, {V}]"),
    (dict(fn="sample", temperature=0.0), "`temperature` must be > 0"),
])
def test_bad_inputs(setup, kwargs, message):
    model, cache, first = setup
    kwargs = dict(kwargs)
    fn = kwargs.pop("fn")
    kwargs.setdefault("max_len", 3)
    step = decoding.gpt_step_fn(model)
    with pytest.raises(ValueError) as err:
        if fn == "beam":
            decoding.beam_search(step, cache, first, **kwargs)
        elif fn == "greedy":
            decoding.greedy_decode(step, cache, first, **kwargs)
        else:
            decoding.sample_decode(step, cache, first, key=jax.random.key(0), **kwargs)
    assert message in str(err.value)
