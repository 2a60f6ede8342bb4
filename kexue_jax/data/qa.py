"""Generated multi-passage extractive QA (spec nlp_attention_losses.md §1.7), a stand-in for SogouQA/WebQA.

Tokens: 0 [PAD], 1 [CLS], 2 [SEP], 3 '=', 4 ';', then `num_words` word tokens. Keys are the first
`num_keys` words; values and filler are the rest. A passage (by default 40–80 tokens, `passage_len`)
holds 3–5 facts (`num_facts`) `key = value ;` with values of 1–4 tokens (`value_len`) between filler
words. A question is one key; of its 3 passages, 0, 1 or 2 hold the key (always with the same value),
the others hold only other keys, so some questions have no answer (the model should then emit [SEP]
first). The defaults are the spec's sizes; the experiment's full config uses a smaller generator.

References:
  https://kexue.fm/archives/7115
"""
from __future__ import annotations

import numpy as np

__all__ = ["PAD", "CLS", "SEP", "EQ", "SEMI", "FIRST_WORD", "make_example", "make_dataset", "encode_training"]

PAD, CLS, SEP, EQ, SEMI = 0, 1, 2, 3, 4
FIRST_WORD = 5


def _check_range(name, r):
    if not (isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, (int, np.integer)) for x in r)
            and 1 <= r[0] <= r[1]):
        raise ValueError(f"`{name}` must be a (min, max) pair of ints with 1 <= min <= max; got {r!r}")


def _passage(rng, facts, num_keys, num_words, length):
    """facts: list of (key, value tokens). Filler words are drawn from the non-key words."""
    body = []
    for k, v in facts:
        body.append([k, EQ] + list(v) + [SEMI])
    fixed = sum(len(f) for f in body)
    n_fill = max(length - fixed, len(body) + 1)
    # split the filler into len(body) + 1 gaps
    cuts = np.sort(rng.integers(0, n_fill + 1, size=len(body)))
    gaps = np.diff(np.concatenate([[0], cuts, [n_fill]]))
    filler = lambda n: list(rng.integers(FIRST_WORD + num_keys, FIRST_WORD + num_words, size=n))
    out = filler(gaps[0])
    for f, g in zip(body, gaps[1:]):
        out += f + filler(g)
    return np.array(out, np.int32)


def make_example(rng: np.random.Generator, *, num_keys: int = 50, num_words: int = 200, num_passages: int = 3,
                 passage_len: tuple[int, int] = (40, 80), num_facts: tuple[int, int] = (3, 5),
                 value_len: tuple[int, int] = (1, 4)) -> dict:
    """One question: {'question': [1] key, 'answer': value tokens (empty: no answer), 'passages': list,
    'has_key': [R] bool}. passage_len, num_facts, value_len: inclusive (min, max) ranges."""
    _check_range("passage_len", passage_len)
    _check_range("num_facts", num_facts)
    _check_range("value_len", value_len)
    if num_facts[1] > num_keys - 1:
        raise ValueError(f"`num_facts` must be at most num_keys - 1 = {num_keys - 1} facts; got {num_facts!r}")
    vlen = lambda: int(rng.integers(value_len[0], value_len[1] + 1))
    key = int(rng.integers(FIRST_WORD, FIRST_WORD + num_keys))
    value = rng.integers(FIRST_WORD + num_keys, FIRST_WORD + num_words, size=vlen())
    n_with = int(rng.choice([0, 1, 2], p=[0.25, 0.4, 0.35]))
    with_key = set(rng.permutation(num_passages)[:n_with].tolist())
    passages = []
    others = [k for k in range(FIRST_WORD, FIRST_WORD + num_keys) if k != key]
    for r in range(num_passages):
        n_facts = int(rng.integers(num_facts[0], num_facts[1] + 1))
        ks = rng.choice(others, size=n_facts - (r in with_key), replace=False)
        facts = [(int(k), rng.integers(FIRST_WORD + num_keys, FIRST_WORD + num_words, size=vlen())) for k in ks]
        if r in with_key:
            facts.insert(int(rng.integers(0, len(facts) + 1)), (key, value))
        passages.append(_passage(rng, facts, num_keys, num_words,
                                 int(rng.integers(passage_len[0], passage_len[1] + 1))))
    return dict(question=np.array([key], np.int32), answer=value.astype(np.int32) if n_with else np.zeros(0, np.int32),
                passages=passages, has_key=np.array([r in with_key for r in range(num_passages)]))


def make_dataset(n: int, *, seed: int, **kwargs) -> list[dict]:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive int; got {n!r}")
    rng = np.random.default_rng(seed)
    return [make_example(rng, **kwargs) for _ in range(int(n))]


def source_ids(passage: np.ndarray, question: np.ndarray) -> np.ndarray:
    """[CLS] passage [SEP] question [SEP] (segment 0)."""
    return np.concatenate([[CLS], passage, [SEP], question, [SEP]]).astype(np.int32)


def encode_training(examples: list[dict], *, length: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Su's pipeline: one random passage per question; the target is the answer if that passage holds
    the key, else empty; sequence [CLS] P [SEP] Q [SEP] A [SEP], segment 1 on A [SEP]. Returns
    (tokens, segments) [n, length], right-padded with 0."""
    tokens = np.zeros((len(examples), length), np.int32)
    segments = np.zeros((len(examples), length), np.int32)
    for i, ex in enumerate(examples):
        r = int(rng.integers(len(ex["passages"])))
        src = source_ids(ex["passages"][r], ex["question"])
        tgt = np.concatenate([ex["answer"] if ex["has_key"][r] else [], [SEP]]).astype(np.int32)
        seq = np.concatenate([src, tgt])
        if len(seq) > length:
            raise ValueError(f"`length` must be at least {len(seq)}; got {length}")
        tokens[i, :len(seq)] = seq
        segments[i, len(src):len(seq)] = 1
    return tokens, segments
