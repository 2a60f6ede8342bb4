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


def test_no_answer_metrics_bruteforce():
    """Against a hand count by a plain loop, on random labels, plus the degenerate always-empty model."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        e, u = rng.random(n) < 0.5, rng.random(n) < 0.3
        tp = fp = fn = tn = 0
        for pe, pu in zip(e, u):
            tp += bool(pe and pu)
            fp += bool(pe and not pu)
            fn += bool(pu and not pe)
            tn += bool(not pe and not pu)
        got = unilm.no_answer_metrics(e.tolist(), u.tolist())
        empty_rate = fp / (fp + tn) if fp + tn else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        assert got["answerable_empty_rate"] == pytest.approx(empty_rate)
        assert got["no_answer_recall"] == pytest.approx(recall)
        assert got["no_answer_precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert got["no_answer_balanced_accuracy"] == pytest.approx((recall + 1 - empty_rate) / 2)
    # the failed run's model: everything empty -> recall 1 but balanced accuracy 0.5, empty rate 1
    got = unilm.no_answer_metrics([True] * 4, [True, False, False, True])
    assert got == {"answerable_empty_rate": 1.0, "no_answer_recall": 1.0, "no_answer_precision": 0.5,
                   "no_answer_balanced_accuracy": 0.5}
    # 3 answerable (one answered empty), 2 unanswerable (one detected): hand-counted
    got = unilm.no_answer_metrics([True, False, False, True, False], [False, False, False, True, True])
    assert got == pytest.approx({"answerable_empty_rate": 1 / 3, "no_answer_recall": 0.5,
                                 "no_answer_precision": 0.5, "no_answer_balanced_accuracy": (0.5 + 2 / 3) / 2})
    with pytest.raises(ValueError, match="must be 1-D of the same length"):
        unilm.no_answer_metrics([True], [True, False])


def _facts(passage):
    """(key, value) pairs parsed from `key = value ;` in a passage."""
    p, out = list(passage), []
    for i, t in enumerate(p):
        if t == qa.EQ:
            out.append((p[i - 1], tuple(p[i + 1:p.index(qa.SEMI, i)])))
    return out


@pytest.mark.parametrize("kw", [dict(), dict(num_keys=20, num_words=100, passage_len=(10, 30), num_facts=(1, 2),
                                           value_len=(1, 2))])
def test_generator_ranges_and_answers(kw):
    """Facts per passage, value lengths and passage lengths stay in their ranges (a passage may exceed the
    maximum length only when its facts leave no room for one filler word per gap); the answer is the key's
    value in exactly the passages flagged `has_key`, and no key appears twice in a passage."""
    nf, vl, pl = kw.get("num_facts", (3, 5)), kw.get("value_len", (1, 4)), kw.get("passage_len", (40, 80))
    nk = kw.get("num_keys", 50)
    for ex in qa.make_dataset(200, seed=5, **kw):
        key = int(ex["question"][0])
        assert qa.FIRST_WORD <= key < qa.FIRST_WORD + nk
        assert vl[0] <= len(ex["answer"]) <= vl[1] or (ex["answer"].size == 0 and not ex["has_key"].any())
        for p, has in zip(ex["passages"], ex["has_key"]):
            facts = _facts(p)
            assert nf[0] <= len(facts) <= nf[1]
            assert pl[0] <= len(p) <= max(pl[1], sum(len(v) + 4 for _, v in facts) + 1)
            assert all(vl[0] <= len(v) <= vl[1] for _, v in facts)
            keys = [k for k, _ in facts]
            assert len(set(keys)) == len(keys)
            assert (key in keys) == bool(has)
            if has:
                assert dict(facts)[key] == tuple(ex["answer"].tolist())


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
    (lambda m: qa.make_dataset(1, seed=0, passage_len=(30, 10)), "`passage_len` must be a (min, max) pair"),
    (lambda m: qa.make_dataset(1, seed=0, num_keys=3, num_facts=(1, 3)), "`num_facts` must be at most"),
])
def test_bad_inputs(model, make, message):
    with pytest.raises(ValueError) as err:
        make(model)
    assert message in str(err.value)


def test_training_interrupted_then_resumed_is_bit_identical(tmp_path):
    """Stopped after its step-3 checkpoint and run again on the same workdir, UniLM training replays the
    example draws and passage sampling (the rng) to step 3 and ends exactly where an uninterrupted run ends."""
    import ml_collections

    from experiments.reproduce import load_config

    c = load_config("experiments/attention/unilm_reading_comprehension.py", "smoke")
    c = ml_collections.ConfigDict(dict(c, num_steps=6, checkpoint_every=3, log_every=1))
    data = qa.make_dataset(c.num_train, seed=c.seed, num_keys=c.num_keys, num_words=c.num_words)

    class StopAt4:
        def write(self, step, metrics):
            if step >= 4:
                raise KeyboardInterrupt

    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    model_a, losses_a = unilm.train(c, data, rng=rng_a, workdir=str(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        unilm.train(c, data, rng=np.random.default_rng(0), writer=StopAt4(), workdir=str(tmp_path / "b"))
    model_b, losses_b = unilm.train(c, data, rng=rng_b, workdir=str(tmp_path / "b"))
    np.testing.assert_array_equal(losses_a, losses_b)
    assert np.all(losses_a > 0)
    for x, y in zip(jax.tree.leaves(nnx.state(model_a)), jax.tree.leaves(nnx.state(model_b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert rng_a.integers(1 << 30) == rng_b.integers(1 << 30)
