"""Generated multi-passage extractive QA (spec nlp_attention_losses.md §1.7), a stand-in for SogouQA/WebQA.

Tokens: 0 [PAD], 1 [CLS], 2 [SEP], 3 '=', 4 ';', then `num_words` word tokens. Keys are the first
`num_keys` words; values and filler are the rest. A passage (40–80 tokens) holds 3–5 facts
`key = value ;` (values 1–4 tokens) between filler words. A question is one key; of its 3 passages,
0, 1 or 2 hold the key (always with the same value), the others hold only other keys, so some
questions have no answer (the model should then emit [SEP] first).

References:
  https://kexue.fm/archives/7115
"""
from __future__ import annotations

import numpy as np

__all__ = ["PAD", "CLS", "SEP", "EQ", "SEMI", "FIRST_WORD", "make_example", "make_dataset", "encode_training"]

PAD, CLS, SEP, EQ, SEMI = 0, 1, 2, 3, 4
FIRST_WORD = 5


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


def make_example(rng: np.random.Generator, *, num_keys: int = 50, num_words: int = 200, num_passages: int = 3
                 ) -> dict:
    """One question: {'question': [1] key, 'answer': value tokens (empty: no answer), 'passages': list,
    'has_key': [R] bool}."""
    key = int(rng.integers(FIRST_WORD, FIRST_WORD + num_keys))
    value = rng.integers(FIRST_WORD + num_keys, FIRST_WORD + num_words, size=int(rng.integers(1, 5)))
    n_with = int(rng.choice([0, 1, 2], p=[0.25, 0.4, 0.35]))
    with_key = set(rng.permutation(num_passages)[:n_with].tolist())
    passages = []
    others = [k for k in range(FIRST_WORD, FIRST_WORD + num_keys) if k != key]
    for r in range(num_passages):
        n_facts = int(rng.integers(3, 6))
        ks = rng.choice(others, size=n_facts - (r in with_key), replace=False)
        facts = [(int(k), rng.integers(FIRST_WORD + num_keys, FIRST_WORD + num_words, size=int(rng.integers(1, 5))))
                 for k in ks]
        if r in with_key:
            facts.insert(int(rng.integers(0, len(facts) + 1)), (key, value))
        passages.append(_passage(rng, facts, num_keys, num_words, int(rng.integers(40, 81))))
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
