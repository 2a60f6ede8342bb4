"""UniLM seq2seq reading comprehension (万能的seq2seq, kexue.fm/archives/7115): passage vote, extractive
constraint, SogouQA-style metrics, and the experiment on generated multi-passage QA (spec §1.7).

Decoding (bert4keras `ReadingComprehension.get_ngram_set` / `predict`): every passage P_r runs as
[CLS] P_r [SEP] Q [SEP] once (segment 0, bidirectional, into a KV cache); the answer prefix is decoded
with segment 1. At step 0 a passage whose argmax is [SEP] has no answer and is dropped (all dropped:
empty answer). Per step, the surviving passages' distributions are combined by the un-normalised vote

    p̄(w) = Σ_r p_r(w)² / (1 + Σ_r p_r(w)),

and in extractive mode every token that would not extend the prefix to an n-gram of some surviving
passage gets p̄ = 0 ([SEP] is always allowed). Beam search runs on log p̄.

The extractive constraint is jittable: `match[r, i]` says the prefix equals P_r[i − t : i], so the allowed
next tokens are {P_r[i] : match[r, i]} and emitting w shifts (match ∧ P_r = w) one place right.

Metrics (dgcnn_for_reading_comprehension `evaluate.py`): accuracy = exact match after normalisation,
F1 = character-level F1, both maximised over the reference answers; an empty prediction scores 0;
Final = (Accuracy + F1) / 2. Here a "character" is a token. "No answer" is scored as a binary classifier
(`no_answer_metrics`: recall, precision, the rate of answerable questions answered empty, balanced
accuracy), since recall alone is 1 for a model that never answers.

Training (`train`) is data-parallel with the jitted step of `chess.data_parallel_train_step`: mesh from
`config.mesh`, replicated parameters, the batch split over the batch axes (8 simulated devices give the
losses of one: tests/attention/test_runners_multidevice.py).
"""
from __future__ import annotations

import collections
import os
import time
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kexue_jax.attention import decoding
from kexue_jax.attention.gpt import GPT, full_recompute_step_fn
from kexue_jax.attention.chess import (check_batch_mesh, check_training_config, data_parallel_train_step,
                                      learning_rate_schedule, resumable_loop)
from kexue_jax.core import sharding
from kexue_jax.core.config import check_int, require
from kexue_jax.core.metrics import write_results
from kexue_jax.data import qa

__all__ = ["vote", "extractive_allowed", "extractive_update", "normalize_text", "exact_match", "char_f1",
           "final_score", "no_answer_metrics", "make_vote_step", "answer_questions", "generator_kwargs",
           "sequence_lengths", "seq2seq_loss", "train", "check_config", "run"]

TINY = 1e-12


def vote(probs: jax.Array, alive: jax.Array) -> jax.Array:
    """p̄ = Σ_r a_r p_r² / (1 + Σ_r a_r p_r) over axis −2 (passages); probs [..., R, V], alive [..., R]."""
    probs, alive = jnp.asarray(probs), jnp.asarray(alive)
    if probs.ndim < 2 or alive.shape != probs.shape[:-1]:
        raise ValueError(f"`alive` must have shape probs.shape[:-1] = {probs.shape[:-1]}; got {alive.shape}")
    p = jnp.where(alive[..., None], probs, 0.0)
    return jnp.sum(p * p, axis=-2) / (1.0 + jnp.sum(p, axis=-2))


def extractive_allowed(match: jax.Array, passages: jax.Array, valid: jax.Array, alive: jax.Array,
                       vocab_size: int, end_id: int) -> jax.Array:
    """Allowed next tokens [..., V]: P_r[i] for matched real positions of surviving passages, plus end_id.

    match, passages, valid: [..., R, Lp] (valid False on passage padding); alive [..., R]."""
    ok = match & valid & alive[..., None]  # [..., R, Lp]
    onehot = jax.nn.one_hot(passages, vocab_size, dtype=jnp.bool_)  # [..., R, Lp, V]
    allowed = jnp.any(onehot & ok[..., None], axis=(-3, -2))  # [..., V]
    return allowed.at[..., end_id].set(True)


def extractive_update(match: jax.Array, passages: jax.Array, token: jax.Array) -> jax.Array:
    """After emitting `token` [...]: new_match[..., i + 1] = match[..., i] ∧ P[..., i] = token."""
    hit = match & (passages == token[..., None, None])  # [..., R, Lp]
    return jnp.concatenate([jnp.zeros_like(hit[..., :1]), hit[..., :-1]], axis=-1)


# ----------------------------------------------------------------------------- metrics
def normalize_text(s: str) -> str:
    """Full-width -> half-width (NFKC), lower case, punctuation and blanks removed."""
    s = unicodedata.normalize("NFKC", s).lower()
    return "".join(ch for ch in s if not (ch.isspace() or unicodedata.category(ch).startswith("P")))


def _norm(x):
    return list(normalize_text(x)) if isinstance(x, str) else list(x)


def exact_match(pred, answers) -> float:
    """1 if the normalised prediction equals a normalised answer; an empty prediction scores 0."""
    p = _norm(pred)
    if not p:
        return 0.0
    return float(any(p == _norm(a) for a in answers))


def char_f1(pred, answers) -> float:
    """max over answers of the character (token) F1 of the normalised strings; empty prediction: 0."""
    p = _norm(pred)
    best = 0.0
    for a in answers:
        a = _norm(a)
        common = sum((collections.Counter(p) & collections.Counter(a)).values())
        if not p or not a or common == 0:
            continue
        prec, rec = common / len(p), common / len(a)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


def final_score(accuracy: float, f1: float) -> float:
    return (accuracy + f1) / 2


def no_answer_metrics(pred_empty, unanswerable) -> dict:
    """"No answer" detection as a binary classifier (positive = the empty answer), so that a model that
    always answers empty does not score 1:

      answerable_empty_rate = P(empty | answerable)  (answerable questions lost to "no answer")
      no_answer_recall      = P(empty | unanswerable)  (the old `no_answer_detection`)
      no_answer_precision   = P(unanswerable | empty)  (0 when nothing is answered empty)
      no_answer_balanced_accuracy = (recall + 1 − answerable_empty_rate) / 2  (0.5 for a constant answer)

    A rate over an empty class is 0. pred_empty, unanswerable: sequences of bools, one per question."""
    e, u = np.asarray(pred_empty, bool), np.asarray(unanswerable, bool)
    if e.shape != u.shape or e.ndim != 1:
        raise ValueError(f"`pred_empty` and `unanswerable` must be 1-D of the same length; got shapes "
                         f"{e.shape} and {u.shape}")
    rate = lambda num, den: float(num) / float(den) if den else 0.0
    empty_rate = rate(np.sum(e & ~u), np.sum(~u))
    recall = rate(np.sum(e & u), np.sum(u))
    return {"answerable_empty_rate": empty_rate, "no_answer_recall": recall,
            "no_answer_precision": rate(np.sum(e & u), np.sum(e)),
            "no_answer_balanced_accuracy": (recall + 1.0 - empty_rate) / 2}


# ----------------------------------------------------------------------------- decoding
def make_vote_step(inner_step, *, num_passages: int, vocab_size: int, end_id: int, extractive: bool):
    """Wraps a model step over N·R rows into a step over N rows returning log p̄ as 'logits'.

    state = {'inner': inner state with leading axis N·R reshaped to [N, R, ...], 'match', 'passages',
    'valid': [N, R, Lp], 'alive': [N, R]}."""
    r_ = num_passages

    def step_fn(state, tokens):
        n = tokens.shape[0]
        inner = jax.tree_util.tree_map(lambda x: x.reshape((n * r_,) + x.shape[2:]), state["inner"])
        logits, inner = inner_step(inner, jnp.repeat(tokens, r_, axis=0))  # [N·R, 1, V]
        probs = jax.nn.softmax(logits[:, -1].astype(jnp.float32), axis=-1).reshape(n, r_, vocab_size)
        pbar = vote(probs, state["alive"])  # [N, V]
        match = extractive_update(state["match"], state["passages"], tokens[:, 0])
        if extractive:
            pbar = jnp.where(extractive_allowed(match, state["passages"], state["valid"], state["alive"],
                                                vocab_size, end_id),
                             pbar, 0.0)
        inner = jax.tree_util.tree_map(lambda x: x.reshape((n, r_) + x.shape[1:]), inner)
        new = dict(state, inner=inner, match=match)
        return jnp.log(pbar + TINY)[:, None, :], new

    return step_fn


def answer_questions(model: GPT, examples: list[dict], *, passages: str = "all", extractive: bool = True,
                     beam_size: int = 1, max_answer: int = 6, source_len: int, use_cache: bool = True,
                     rng: np.random.Generator | None = None, batch: int = 16) -> list[np.ndarray]:
    """Decodes an answer for each example with the vote over its passages ('all') or one random passage
    ('single'); returns token arrays (empty = no answer)."""
    if passages not in ("all", "single"):
        raise ValueError(f"`passages` must be one of ('all', 'single'); got {passages!r}")
    _ = decoding.beam_search  # validated inside
    if not (isinstance(beam_size, (int, np.integer)) and beam_size >= 1):
        raise ValueError(f"`beam_size` must be a positive int; got {beam_size!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    r_ = len(examples[0]["passages"]) if passages == "all" else 1
    lp = source_len
    out = []
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        n = len(chunk)
        pad_n = batch
        src = np.zeros((pad_n, r_, lp), np.int32)
        valid = np.zeros((pad_n, r_, lp), bool)
        pas = np.zeros((pad_n, r_, lp), np.int32)
        pvalid = np.zeros((pad_n, r_, lp), bool)
        valid[:, :, 0] = True
        for i, ex in enumerate(chunk):
            idx = range(r_) if passages == "all" else [int(rng.integers(len(ex["passages"])))]
            for j, r in enumerate(idx):
                s = qa.source_ids(ex["passages"][r], ex["question"])
                if len(s) > lp:
                    raise ValueError(f"`source_len` must be at least {len(s)}; got {lp}")
                src[i, j, :len(s)], valid[i, j, :len(s)] = s, True
                p = ex["passages"][r]
                pas[i, j, :len(p)], pvalid[i, j, :len(p)] = p, True
        toks, first_alive = _decode_batch(model, jnp.asarray(src), jnp.asarray(valid), jnp.asarray(pas),
                                          jnp.asarray(pvalid), r_=r_, beam_size=int(beam_size),
                                          max_answer=max_answer, extractive=extractive, use_cache=use_cache)
        toks, first_alive = np.asarray(toks), np.asarray(first_alive)
        for i in range(n):
            t = toks[i]
            if not first_alive[i]:
                out.append(np.zeros(0, np.int32))
                continue
            end = np.nonzero(t == qa.SEP)[0]
            out.append(t[:end[0]] if end.size else t)
    return out


@nnx.jit(static_argnames=("r_", "beam_size", "max_answer", "extractive", "use_cache"))
def _decode_batch(model, src, valid, pas, pvalid, *, r_, beam_size, max_answer, extractive, use_cache):
    n, _, lp = src.shape
    flat_src, flat_valid = src.reshape(n * r_, lp), valid.reshape(n * r_, lp)
    size = lp + max_answer + 1
    if use_cache:
        last, inner = decoding.unilm_prefill(model, flat_src, max_len=size, source_valid=flat_valid)
        inner_step = decoding.gpt_step_fn(model, segment=1)
    else:
        pad = size - lp
        inner = dict(tokens=jnp.pad(flat_src, ((0, 0), (0, pad))), segments=jnp.zeros((n * r_, size), jnp.int32),
                     valid=jnp.pad(flat_valid, ((0, 0), (0, pad))), length=jnp.full((n * r_,), lp, jnp.int32))
        logits = model(inner["tokens"], inner["segments"], key_mask=inner["valid"],
                       positions=jnp.cumsum(inner["valid"], axis=1) - 1)
        last = jnp.take_along_axis(logits, (jnp.sum(flat_valid, axis=1) - 1)[:, None, None], axis=1)[:, 0]
        inner_step = full_recompute_step_fn(model, unilm=True)
    probs = jax.nn.softmax(last.astype(jnp.float32), axis=-1).reshape(n, r_, -1)  # [N, R, V]
    alive = jnp.argmax(probs, axis=-1) != qa.SEP  # [N, R]: step-0 drop of "no answer" passages
    v = probs.shape[-1]
    pbar = vote(probs, alive)
    match = pvalid
    if extractive:
        pbar = jnp.where(extractive_allowed(match, pas, pvalid, alive, v, qa.SEP), pbar, 0.0)
    state = dict(inner=jax.tree_util.tree_map(lambda x: x.reshape((n, r_) + x.shape[1:]), inner),
                 match=match, passages=pas, valid=pvalid, alive=alive)
    step = make_vote_step(inner_step, num_passages=r_, vocab_size=v, end_id=qa.SEP, extractive=extractive)
    toks, _, _ = decoding.beam_search(step, state, jnp.log(pbar + TINY), beam_size=beam_size, max_len=max_answer,
                                      end_id=qa.SEP, logits_are_logprobs=True)
    return toks, jnp.any(alive, axis=1)


# ----------------------------------------------------------------------------- training + experiment
def seq2seq_loss(model: GPT, tokens: jax.Array, segments: jax.Array) -> jax.Array:
    """CE of y_true[:, 1:] vs y_pred[:, :-1] weighted by segment_ids[:, 1:] (bert4keras script)."""
    logits = model(tokens, segments, key_mask=tokens != qa.PAD)[:, :-1]
    w = segments[:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def generator_kwargs(config) -> dict:
    """The `qa.make_example` keyword arguments held by `config` (absent keys keep the generator defaults)."""
    kw = dict(num_keys=config.num_keys, num_words=config.num_words)
    for name in ("passage_len", "num_facts", "value_len"):
        if config.get(name) is not None:
            kw[name] = tuple(config[name])
    return kw


def sequence_lengths(*datasets: list[dict]) -> tuple[int, int]:
    """(source_len, train_len) covering every example of `datasets`: [CLS] P [SEP] Q [SEP] plus one spare
    slot, then answer [SEP] plus one spare."""
    exs = [ex for d in datasets for ex in d]
    source_len = max(len(p) for ex in exs for p in ex["passages"]) + max(len(ex["question"]) for ex in exs) + 4
    return source_len, source_len + max(len(ex["answer"]) for ex in exs) + 2


def train(config, train_examples: list[dict], *, rng: np.random.Generator, writer=None,
          workdir: str | None = None) -> tuple[GPT, np.ndarray]:
    """Data-parallel Adam training on `seq2seq_loss` (one random passage per example and step); returns
    (model, per-step losses). The mesh comes from `config.mesh`; each batch is split over its batch axes.
    Learning rate: `chess.learning_rate_schedule` (`lr_schedule` 'constant' or 'cosine', `warmup_steps`).
    With `workdir`, training checkpoints there every `config.checkpoint_every` steps and resumes from the
    latest checkpoint bit-identically (`chess.resumable_loop`)."""
    c = config
    check_batch_mesh(c)
    model = GPT(qa.FIRST_WORD + c.num_words, c.d_model, c.num_heads, c.num_layers, c.ffn_dim, type_vocab_size=2,
                rngs=nnx.Rngs(c.seed))
    mesh = sharding.make_mesh(c.get("mesh"))
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    tx = optax.adam(learning_rate_schedule(c))
    graphdef, params = nnx.split(model, nnx.Param)  # a GPT holds only nnx.Param variables
    params = jax.device_put(params, rep)
    opt_state = jax.device_put(tx.init(params), rep)
    train_step = data_parallel_train_step(graphdef, tx, lambda m, t, s: (seq2seq_loss(m, t, s), None), mesh, 2)
    train_len = sequence_lengths(train_examples)[1]

    def make_batch(step):
        idx = rng.integers(len(train_examples), size=c.batch_size)
        tok, seg = qa.encode_training([train_examples[i] for i in idx], length=train_len, rng=rng)
        return dict(tokens=tok, segments=seg), {}

    params, losses = resumable_loop(c, params, opt_state, train_step, make_batch, rep=rep, bsh=bsh,
                                    workdir=workdir, writer=writer)
    return nnx.merge(graphdef, jax.device_get(params)), losses


def check_config(config) -> None:
    """Every key `run` reads, checked in plain Python before the data is generated or anything is traced
    (a ValueError naming the key): the training keys (`chess.check_training_config`), the data sizes, the
    decoding keys, and the generator keys (one example is drawn from a throwaway rng, which runs
    `qa.make_example`'s own checks)."""
    check_training_config(config)
    for key in ("num_train", "num_test", "beam_size", "max_answer", "decode_batch", "throughput_examples"):
        check_int(config[key], key)
    check_int(config.num_keys, "num_keys", minimum=2)  # a question's key plus at least one other fact key
    nw = config.num_words
    require(isinstance(nw, int) and not isinstance(nw, bool) and nw > config.num_keys, "num_words",
            f"an integer > num_keys ({config.num_keys}): values and filler are drawn from the non-key words", nw)
    qa.make_example(np.random.default_rng(0), **generator_kwargs(config))


def run(config, workdir: str) -> dict:
    """Data -> training -> EM / F1 / Final, no-answer detection, vote vs single passage, generative
    decoding, cached vs recomputed decoding throughput; writes results.json."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    c = config
    t0 = time.time()
    rng = np.random.default_rng(c.seed)
    kw = generator_kwargs(c)
    train_examples = qa.make_dataset(c.num_train, seed=c.seed, **kw)
    test = qa.make_dataset(c.num_test, seed=c.seed + 1, **kw)
    source_len = sequence_lengths(train_examples, test)[0]
    model, losses = train(c, train_examples, rng=rng, workdir=workdir)
    loss = float(losses[-1])
    train_s = time.time() - t0

    def score(preds, subset):
        em = [exact_match(p.tolist(), [ex["answer"].tolist()]) for p, ex in zip(preds, subset)]
        f1 = [char_f1(p.tolist(), [ex["answer"].tolist()]) for p, ex in zip(preds, subset)]
        return float(np.mean(em)), float(np.mean(f1))

    ans = [i for i, ex in enumerate(test) if ex["answer"].size]
    none = [i for i, ex in enumerate(test) if not ex["answer"].size]
    res = {"train/final_loss": float(loss), "time/train_s": train_s}
    opts = dict(source_len=source_len, max_answer=c.max_answer, batch=c.decode_batch)
    t1 = time.time()
    preds = answer_questions(model, test, passages="all", beam_size=c.beam_size, **opts)
    res["time/decode_cached_examples_per_s"] = len(test) / (time.time() - t1)
    acc, f1 = score([preds[i] for i in ans], [test[i] for i in ans])
    res.update({"eval/accuracy": acc, "eval/f1": f1, "eval/final": final_score(acc, f1),
                "eval/no_answer_detection": float(np.mean([preds[i].size == 0 for i in none])) if none else 0.0})
    res.update({f"eval/{k}": v for k, v in no_answer_metrics([p.size == 0 for p in preds],
                                                              [ex["answer"].size == 0 for ex in test]).items()})
    single = answer_questions(model, test, passages="single", beam_size=c.beam_size, rng=np.random.default_rng(1),
                              **opts)
    acc1, f11 = score([single[i] for i in ans], [test[i] for i in ans])
    res.update({"eval/single_passage_accuracy": acc1, "eval/single_passage_final": final_score(acc1, f11)})
    gen = answer_questions(model, test, passages="all", beam_size=c.beam_size, extractive=False, **opts)
    accg, f1g = score([gen[i] for i in ans], [test[i] for i in ans])
    res["eval/generative_final"] = final_score(accg, f1g)
    res["eval/extractive_substring_rate"] = float(np.mean([
        p.size == 0 or any(_is_sub(p, q) for q in ex["passages"]) for p, ex in zip(preds, test)]))
    sub = test[:c.throughput_examples]
    answer_questions(model, sub, passages="all", beam_size=c.beam_size, use_cache=False, **opts)  # compile
    t2 = time.time()
    slow = answer_questions(model, sub, passages="all", beam_size=c.beam_size, use_cache=False, **opts)
    res["time/decode_full_recompute_examples_per_s"] = len(sub) / (time.time() - t2)
    t3 = time.time()
    fast = answer_questions(model, sub, passages="all", beam_size=c.beam_size, **opts)
    res["time/decode_cached_examples_per_s"] = len(sub) / (time.time() - t3)
    res["eval/cache_vs_recompute_agreement"] = float(np.mean([np.array_equal(a, b) for a, b in zip(slow, fast)]))
    res["time/total_s"] = time.time() - t0
    return write_results(workdir, res)


def _is_sub(p: np.ndarray, q: np.ndarray) -> bool:
    n = len(p)
    return any(np.array_equal(q[i:i + n], p) for i in range(len(q) - n + 1))
