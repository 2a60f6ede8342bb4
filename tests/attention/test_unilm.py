"""UniLM reading comprehension: the vote formula and its properties (spec §1.6.4), the extractive
constraint (every decoded answer is a substring of a passage, property test on random passages and a
random model), the metric definitions, cached vs full-recompute decoding agreement, bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kexue_jax.attention import unilm
from kexue_jax.attention.gpt import GPT
from kexue_jax.data import qa


def test_vote_formula_and_ranking():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=3)  # [R=3, V]
    alive = np.array([True, False, True])
    got = np.asarray(unilm.vote(jnp.asarray(p), jnp.asarray(alive)))
    ref = (p[0] ** 2 + p[2] ** 2) / (1 + p[0] + p[2])
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    one = np.asarray(unilm.vote(jnp.asarray(p[:1]), jnp.ones(1, bool)))
    np.testing.assert_allclose(one, p[0] ** 2 / (1 + p[0]), rtol=1e-6)
    # one passage, or identical passages: the token ranking is that of the single passage
    assert np.array_equal(np.argsort(-one), np.argsort(-p[0]))
    same = np.asarray(unilm.vote(jnp.asarray(np.stack([p[0]] * 3)), jnp.ones(3, bool)))
    assert np.array_equal(np.argsort(-same), np.argsort(-p[0]))


def test_extractive_constraint_bruteforce():
    """allowed(prefix) == {P[i + t] : P[i:i + t] == prefix} ∪ {SEP}, by enumeration over prefixes."""
    rng = np.random.default_rng(1)
    v = 9
    pas = rng.integers(3, v, size=(2, 12))
    valid = np.ones((2, 12), bool)
    valid[1, 9:] = False
    alive = np.array([True, True])
    for _ in range(30):
        r, i = rng.integers(2), rng.integers(0, 8)
        prefix = list(pas[r, i:i + rng.integers(0, 3)])
        match = jnp.asarray(valid)
        for w in prefix:
            match = unilm.extractive_update(match, jnp.asarray(pas), jnp.asarray(w))
        got = set(np.nonzero(np.asarray(unilm.extractive_allowed(match, jnp.asarray(pas), jnp.asarray(valid), jnp.asarray(alive), v,
                                                                   qa.SEP)))[0])
        ref = {qa.SEP}
        for rr in range(2):
            n = int(valid[rr].sum())
            for j in range(n - len(prefix)):
                if list(pas[rr, j:j + len(prefix)]) == prefix:
                    ref.add(int(pas[rr, j + len(prefix)]))
        assert got == ref


@pytest.fixture(scope="module")
def model():
    return GPT(qa.FIRST_WORD + 30, 16, 2, 1, 32, type_vocab_size=2, rngs=nnx.Rngs(0))


def test_decoded_answers_are_substrings_and_cache_equals_recompute(model):
    """Property: with a random (untrained) model and random passages, every extractive answer is empty or
    a substring of one of its passages; the KV-cache decoder and the full re-run agree exactly."""
    data = qa.make_dataset(8, seed=2, num_keys=10, num_words=30)
    kw = dict(source_len=85, max_answer=5, beam_size=2, batch=8)
    fast = unilm.answer_questions(model, data, **kw)
    slow = unilm.answer_questions(model, data, use_cache=False, **kw)
    for a, b, ex in zip(fast, slow, data):
        assert np.array_equal(a, b)
        assert a.size == 0 or any(unilm._is_sub(a, p) for p in ex["passages"])


def test_metrics():
    assert unilm.exact_match("ＡＢ，c", ["abc"]) == 1.0  # full-width, case, punctuation
    assert unilm.exact_match("", [""]) == 0.0
    np.testing.assert_allclose(unilm.char_f1("abcd", ["abxy", "zzz"]), 0.5)
    assert unilm.char_f1([], [[1, 2]]) == 0.0
    assert unilm.final_score(0.7259005836184343, 0.813860036706151) == pytest.approx(0.7698803101622926)


def test_training_layout_segments():
    ex = qa.make_dataset(1, seed=3)[0]
    tok, seg = qa.encode_training([ex], length=100, rng=np.random.default_rng(0))
    n = int((tok[0] != 0).sum())
    assert tok[0, n - 1] == qa.SEP and seg[0, n - 1] == 1 and seg[0, 0] == 0
    assert int(seg[0].sum()) in (1, 2, 3, 4, 5)


@pytest.mark.parametrize("make, message", [
    (lambda m: unilm.vote(jnp.ones((3, 4)), jnp.ones((2,), bool)), "`alive` must have shape"),
    (lambda m: unilm.answer_questions(m, qa.make_dataset(1, seed=0), source_len=85, beam_size=0),
     "`beam_size` must be a positive int; got 0"),
    (lambda m: unilm.answer_questions(m, qa.make_dataset(1, seed=0), source_len=10), "`source_len` must be at least"),
    (lambda m: unilm.answer_questions(m, qa.make_dataset(1, seed=0), source_len=85, passages="two"),
     "`passages` must be one of"),
    (lambda m: qa.make_dataset(0, seed=0), "`n` must be a positive int"),
])
def test_bad_inputs(model, make, message):
    with pytest.raises(ValueError) as err:
        make(model)
    assert message in str(err.value)
