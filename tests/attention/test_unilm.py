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


def _f1_by_matching(pred, answer):
    """Character F1 by greedy one-to-one matching (each answer character used at most once)."""
    left, common = list(answer), 0
    for ch in pred:
        if ch in left:
            left.remove(ch)
            common += 1
    if not pred or not answer or not common:
        return 0.0
    return 2 * common / (len(pred) + len(answer))  # = 2PR/(P + R) with P = c/|pred|, R = c/|answer|


def test_metrics_bruteforce_over_several_answers():
    """EM and F1 are maxima over the reference answers (the best one may come last), F1 counts repeated
    characters as a multiset; against one-to-one matching on random token lists."""
    assert unilm.exact_match("ab", ["xy", "AB"]) == 1.0
    assert unilm.exact_match("ab", ["xy", "abc"]) == 0.0
    assert unilm.char_f1("aa", ["aa"]) == 1.0  # a set intersection would give 0.5
    np.testing.assert_allclose(unilm.char_f1("abcd", ["zzz", "abxy"]), 0.5)
    rng = np.random.default_rng(6)
    for _ in range(200):
        pred = rng.integers(0, 4, size=rng.integers(0, 6)).tolist()
        answers = [rng.integers(0, 4, size=rng.integers(0, 6)).tolist() for _ in range(rng.integers(1, 4))]
        assert unilm.char_f1(pred, answers) == pytest.approx(max(_f1_by_matching(pred, a) for a in answers))
        assert unilm.exact_match(pred, answers) == float(bool(pred) and any(pred == a for a in answers))


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


def test_training_layout_bruteforce():
    """Each row is [CLS] P [SEP] Q [SEP] A [SEP] + padding for one of its passages P (found by matching the
    tokens), with A the answer when P holds the key and empty otherwise; segment 1 on exactly A [SEP]."""
    data = qa.make_dataset(40, seed=8, num_keys=10, num_words=30, passage_len=(8, 14), num_facts=(1, 2))
    tok, seg = qa.encode_training(data, length=30, rng=np.random.default_rng(1))
    kinds = set()
    for ex, t, s in zip(data, tok, seg):
        rs = [r for r, p in enumerate(ex["passages"]) if t[1:1 + len(p)].tolist() == p.tolist()
              and t[1 + len(p)] == qa.SEP]
        assert rs, t
        r = rs[0]
        src = [qa.CLS] + ex["passages"][r].tolist() + [qa.SEP] + ex["question"].tolist() + [qa.SEP]
        tgt = (ex["answer"].tolist() if ex["has_key"][r] else []) + [qa.SEP]
        assert t.tolist() == src + tgt + [qa.PAD] * (30 - len(src) - len(tgt))
        assert s.tolist() == [0] * len(src) + [1] * len(tgt) + [0] * (30 - len(src) - len(tgt))
        kinds.add((bool(ex["has_key"][r]), ex["answer"].size > 0))
    assert kinds == {(True, True), (False, True), (False, False)}  # answered, other passage, unanswerable


def _seq2seq_reference(model, tok, seg):
    """bert4keras' seq2seq loss by hand: each row alone, unpadded, through the full forward; float64
    log-softmax; CE of token i + 1 at position i weighted by segment i + 1; the weighted mean."""
    full = nnx.jit(lambda m, x, s: m(x, s))
    total = weight = 0.0
    for t, s in zip(tok, seg):
        n = int(np.nonzero(t)[0][-1]) + 1
        logits = np.asarray(full(model, jnp.asarray(t[None, :n]), jnp.asarray(s[None, :n])), np.float64)[0]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        for i in range(n - 1):
            total -= s[i + 1] * logp[i, t[i + 1]]
            weight += s[i + 1]
    return total / weight


def test_seq2seq_loss_equals_unpadded_bruteforce(model):
    """The loss on a right-padded batch equals the per-row unpadded computation (rtol 1e-5): padding
    masked as keys, targets shifted by one, weights on target positions only."""
    data = qa.make_dataset(3, seed=9, num_keys=10, num_words=30, passage_len=(8, 14), num_facts=(1, 2))
    tok, seg = qa.encode_training(data, length=30, rng=np.random.default_rng(2))
    assert (tok == qa.PAD).any(axis=1).all()
    got = float(jax.jit(unilm.seq2seq_loss)(model, jnp.asarray(tok), jnp.asarray(seg)))
    np.testing.assert_allclose(got, _seq2seq_reference(model, tok, seg), rtol=1e-5)


def _reference_answers(model, data, *, max_answer, length):
    """Greedy (beam 1) extractive vote decoding written out: every passage's [CLS] P [SEP] Q [SEP] + prefix
    (segment 1 on the prefix) through the full forward; step 0 drops passages whose argmax is [SEP] (all
    dropped: empty answer); p̄ = Σ p² / (1 + Σ p) over the survivors; tokens that do not extend the
    prefix to an n-gram of a surviving passage (brute-force substring search) get p̄ = 0; stop at [SEP]."""
    full = nnx.jit(lambda m, x, s, km: m(x, s, key_mask=km))
    out, dropped = [], []
    for ex in data:
        srcs = [qa.source_ids(p, ex["question"]) for p in ex["passages"]]

        def next_probs(prefix):
            x, s, km = (np.zeros((len(srcs), length), d) for d in (np.int32, np.int32, bool))
            for r, src in enumerate(srcs):
                seq = np.concatenate([src, prefix]).astype(np.int32)
                x[r, :len(seq)], s[r, len(src):len(seq)], km[r, :len(seq)] = seq, 1, True
            lg = np.asarray(full(model, jnp.asarray(x), jnp.asarray(s), jnp.asarray(km)), np.float64)
            last = np.array([lg[r, len(src) + len(prefix) - 1] for r, src in enumerate(srcs)])
            p = np.exp(last - last.max(-1, keepdims=True))
            return p / p.sum(-1, keepdims=True)

        p0 = next_probs([])
        alive = [r for r in range(len(srcs)) if np.argmax(p0[r]) != qa.SEP]
        dropped.append(len(srcs) - len(alive))
        prefix = []
        for step in range(max_answer if alive else 0):
            p = (p0 if step == 0 else next_probs(prefix))[alive]
            pbar = (p ** 2).sum(0) / (1 + p.sum(0))
            allowed = {qa.SEP}
            for r in alive:
                P, n = ex["passages"][r].tolist(), len(prefix)
                allowed |= {P[i + n] for i in range(len(P) - n) if P[i:i + n] == prefix}
            w = int(np.argmax(np.where(np.isin(np.arange(pbar.size), sorted(allowed)), pbar, 0.0)))
            if w == qa.SEP:
                break
            prefix.append(w)
        out.append(prefix)
    return out, dropped


def test_answer_questions_equals_bruteforce_vote_decoding():
    """`answer_questions` (beam 1, extractive, KV cache) equals the written-out decoding on 8 questions.
    [SEP]'s tied embedding is scaled ×3.3 so that step 0 drops some passages (and every passage of one
    question), exercising the no-answer path; some answers are longer than one token."""
    model = GPT(qa.FIRST_WORD + 30, 16, 2, 1, 32, type_vocab_size=2, rngs=nnx.Rngs(0))
    model.token_embedding.embedding[...] = model.token_embedding.embedding[...].at[qa.SEP].multiply(3.3)
    data = qa.make_dataset(8, seed=7, num_keys=10, num_words=30, passage_len=(8, 14), num_facts=(1, 2),
                           value_len=(1, 3))
    ref, dropped = _reference_answers(model, data, max_answer=4, length=28)
    got = unilm.answer_questions(model, data, source_len=24, max_answer=4, beam_size=1, batch=8)
    assert [a.tolist() for a in got] == ref
    assert 3 in dropped and any(0 < d < 3 for d in dropped) and max(len(a) for a in ref) >= 2, (dropped, ref)


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
