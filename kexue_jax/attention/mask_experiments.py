"""The masks article's experiment: a BiRNN classifier with Su's masked wrapper vs the naive flip (spec §3.3).

Article: "让Keras更酷一些！"：层中层与mask (https://kexue.fm/archives/6810).

Task (generated, seeded): token sequences of random length in [min_len, max_len] over ids 1..vocab−1,
padded with id 0 to the bucket length; the label is (first token) mod num_classes, so the information
sits at the start of each sequence -- the end that a naive backward RNN reaches only after running over
all the padding. Two models with the same parameters shape, trained the same way:

- masked: `masks.masked_bidirectional_rnn` (the backward RNN runs on the reversed valid prefix) and
  `masks.masked_max` pooling -- Su's rules;
- naive: Keras' stock behaviour without masks -- the backward RNN runs on the whole flipped padded
  sequence and max pooling also sees the padding positions.

Both train on batches padded to `train_len`; the test set (fixed sequences) is scored padded to every
length in `test_lens`. Reported per model and padding: accuracy, and the largest change of any test
logit relative to the shortest padding (exactly 0 for the masked model, by construction; that the
masked model's logits do not move is asserted in tests/attention/test_mask_experiments.py).

The training loop is data-parallel (`kexue_jax.core.sharding.data_parallel_step`): `config.mesh` builds a
mesh, every batch is sharded over its batch axes, the parameters are replicated; 8 simulated devices give
the same losses as one (tested).

`run` is resumable job by job (`kexue_jax.core.units.UnitStore`): the training and scoring of each model
('train/<variant>_<pooling>') is a unit saved under `workdir/units/` when it finishes. Rerunning the same
command with the same --workdir restores the finished models' results and trains only the rest, so a
killed run loses at most the model in training; resuming with a different config is a `ConfigError`
before anything trains. Every unit depends on the config alone, so the resumed results equal an
uninterrupted run's bit for bit, except `<model>/train_seconds`: a restored unit keeps the time measured
in the run that computed it.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kexue_jax.attention.masks import masked_bidirectional_rnn, masked_max, masked_mean, padding_mask
from kexue_jax.core import sharding
from kexue_jax.core.config import check_int, check_positive, require
from kexue_jax.core.metrics import write_results
from kexue_jax.core.units import UnitStore

__all__ = ["VARIANTS", "POOLINGS", "make_sequences", "pad_to", "init_params", "logits_fn", "train",
           "train_and_score", "check_config", "run"]

VARIANTS = ("masked", "naive")
POOLINGS = ("max", "mean")


def make_sequences(rng: np.random.Generator, n: int, *, vocab: int, min_len: int, max_len: int,
                   num_classes: int) -> tuple[list[np.ndarray], np.ndarray]:
    """n random sequences (ids 1..vocab−1, lengths uniform in [min_len, max_len]) and labels tok0 mod C."""
    lengths = rng.integers(min_len, max_len + 1, size=n)
    seqs = [rng.integers(1, vocab, size=int(k)) for k in lengths]
    labels = np.array([int(s[0]) % num_classes for s in seqs], dtype=np.int32)
    return seqs, labels


def pad_to(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """[n, length] int32 ids, right-padded with 0."""
    if max(len(s) for s in seqs) > length:
        raise ValueError(f"`length` must be >= the longest sequence ({max(len(s) for s in seqs)}); got {length}")
    out = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def init_params(key, *, vocab: int, embed: int, hidden: int, num_classes: int) -> dict:
    ks = jax.random.split(key, 6)

    def rnn(k1, k2):
        return dict(wx=jax.random.normal(k1, (embed, hidden)) / np.sqrt(embed),
                    wh=jax.random.normal(k2, (hidden, hidden)) / np.sqrt(hidden), b=jnp.zeros(hidden))

    return dict(embed=jax.random.normal(ks[0], (vocab, embed)) * 0.5, fw=rnn(ks[1], ks[2]), bw=rnn(ks[3], ks[4]),
                out=dict(w=jax.random.normal(ks[5], (2 * hidden, num_classes)) / np.sqrt(2 * hidden),
                         b=jnp.zeros(num_classes)))


def _rnn(p, x):
    """A tanh RNN over time: x [b, t, e] -> hidden states [b, t, h] (causal in time)."""
    def step(h, xt):
        h = jnp.tanh(xt @ p["wx"] + h @ p["wh"] + p["b"][None, :])
        return h, h
    h0 = jnp.zeros((x.shape[0], p["wh"].shape[0]), x.dtype)
    _, hs = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(hs, 0, 1)


def logits_fn(params, ids, *, variant: str, pooling: str = "max"):
    """Class logits [b, C] of the BiRNN + pooling classifier; `variant` 'masked' or 'naive', `pooling`
    'max' or 'mean' (masked: `masked_max` / `masked_mean`; naive: over every position, padding included)."""
    x = params["embed"][ids]
    fw, bw = functools.partial(_rnn, params["fw"]), functools.partial(_rnn, params["bw"])
    if variant == "masked":
        mask = padding_mask(ids)
        y = masked_bidirectional_rnn(fw, bw, x, mask)
        feats = masked_max(y, mask, axis=1) if pooling == "max" else masked_mean(y, mask, axis=1)
    else:  # Keras' Bidirectional without a mask: flip everything, pool over everything
        y = jnp.concatenate([fw(x), jnp.flip(bw(jnp.flip(x, axis=1)), axis=1)], axis=-1)
        feats = jnp.max(y, axis=1) if pooling == "max" else jnp.mean(y, axis=1)
    return feats @ params["out"]["w"] + params["out"]["b"][None, :]


def check_config(config) -> None:
    """Every key `run` reads, checked in plain Python before any data is generated or anything is traced
    (a ValueError naming the key), the mesh and the batch split over it included."""
    for k in ("vocab", "min_len", "max_len", "train_len", "batch_size", "num_steps", "test_size"):
        v = config[k]
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"`{k}` must be a positive integer; got {v!r}")
    require(config.vocab >= 2, "vocab", "an integer >= 2 (token ids 1..vocab-1; 0 is the padding)", config.vocab)
    check_int(config.seed, "seed", minimum=0)
    for k in ("num_classes", "embed", "hidden"):
        check_int(config[k], k)
    check_positive(config.learning_rate, "learning_rate")
    if config.max_len > config.train_len or config.min_len > config.max_len:
        raise ValueError(f"need 1 <= `min_len` <= `max_len` <= `train_len`; got {config.min_len}, "
                         f"{config.max_len}, {config.train_len}")
    require(isinstance(config.test_lens, (tuple, list)) and len(config.test_lens) > 0
            and all(isinstance(n, int) and not isinstance(n, bool) for n in config.test_lens),
            "test_lens", "a non-empty tuple of integers", config.test_lens)
    if min(config.test_lens) < config.max_len:
        raise ValueError(f"every `test_lens` entry must be >= `max_len` ({config.max_len}); got {config.test_lens}")
    for v in config.variants:
        if v not in VARIANTS:
            raise ValueError(f"`variants` entries must be in {VARIANTS}; got {v!r}")
    for v in config.poolings:
        if v not in POOLINGS:
            raise ValueError(f"`poolings` entries must be in {POOLINGS}; got {v!r}")
    sharding.check_batch_size(config.batch_size, config.get("mesh"))


def train(config, variant: str, mesh, pooling: str = "max") -> tuple[dict, np.ndarray]:
    """Trains one variant; returns (params, per-step losses). Batch s is drawn from (seed, s) alone."""
    c = config
    key = jax.random.key(c.seed)
    params = init_params(key, vocab=c.vocab, embed=c.embed, hidden=c.hidden, num_classes=c.num_classes)
    tx = optax.adam(c.learning_rate)
    rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    params = jax.device_put(params, rep)
    opt_state = jax.device_put(tx.init(params), rep)

    def loss_fn(p, ids, labels):
        lg = logits_fn(p, ids, variant=variant, pooling=pooling)
        return optax.softmax_cross_entropy_with_integer_labels(lg, labels).mean(), None

    step = sharding.data_parallel_step(loss_fn, tx, mesh, 2)

    losses = []
    for s in range(c.num_steps):
        rng = np.random.default_rng([c.seed, 1, s])
        seqs, labels = make_sequences(rng, c.batch_size, vocab=c.vocab, min_len=c.min_len, max_len=c.max_len,
                                      num_classes=c.num_classes)
        batch = sharding.put_batch(dict(ids=pad_to(seqs, c.train_len), labels=labels), bsh)
        params, opt_state, loss = step(params, opt_state, batch["ids"], batch["labels"])
        losses.append(loss)
    return params, np.asarray(jax.device_get(jnp.stack(losses)))


def train_and_score(config, name: str, mesh, test_seqs, test_labels) -> dict:
    """Trains model `name` ('<variant>_<pooling>') and scores the test set padded to every length of
    `config.test_lens`: {'losses', 'train_seconds', 'accuracy': [per length], 'max_logit_change': [per
    length, the largest |logit − logit at the first length|]}."""
    variant, pooling = name.split("_")
    t0 = time.perf_counter()
    params, losses = train(config, variant, mesh, pooling)
    seconds = time.perf_counter() - t0
    score = jax.jit(functools.partial(logits_fn, variant=variant, pooling=pooling))
    accuracy, change, ref = [], [], None
    for length in config.test_lens:
        lg = np.asarray(score(params, jnp.asarray(pad_to(test_seqs, length))))
        accuracy.append(float(np.mean(lg.argmax(-1) == test_labels)))
        ref = lg if ref is None else ref
        change.append(float(np.max(np.abs(lg - ref))))
    return dict(losses=losses, train_seconds=seconds, accuracy=accuracy, max_logit_change=change)


def run(config, workdir: str) -> dict:
    """Trains both variants and scores them at every test padding; writes results.json and a figure.

    Resumable job by job (module docstring): one unit per model, 'train/<variant>_<pooling>'
    (`train_and_score`)."""
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    store = UnitStore(workdir, config)
    mesh = sharding.make_mesh(config.get("mesh"))
    test_seqs, test_labels = make_sequences(np.random.default_rng([config.seed, 2]), config.test_size,
                                            vocab=config.vocab, min_len=config.min_len, max_len=config.max_len,
                                            num_classes=config.num_classes)
    results, curves, acc_table = {}, {}, {}
    names = [f"{v}_{p}" for p in config.poolings for v in config.variants]
    for name in names:
        out = store.run(f"train/{name}", train_and_score, config, name, mesh, test_seqs, test_labels)
        losses = out["losses"]
        curves[name] = losses
        results[f"{name}/final_train_loss"] = float(np.mean(losses[-max(1, config.num_steps // 10):]))
        results[f"{name}/train_seconds"] = out["train_seconds"]
        for length, acc, change in zip(config.test_lens, out["accuracy"], out["max_logit_change"]):
            acc_table[(name, length)] = acc
            results[f"{name}/test_accuracy_len{length}"] = acc
            results[f"{name}/max_logit_change_len{length}"] = change
        accs = [acc_table[(name, n)] for n in config.test_lens]
        results[f"{name}/accuracy_drop"] = accs[0] - accs[-1]
    results["chance_accuracy"] = 1.0 / config.num_classes

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    for name in names:
        ax[0].plot([acc_table[(name, n)] for n in config.test_lens], "o-", label=name)
        w = max(1, len(curves[name]) // 50)
        ax[1].plot(np.convolve(curves[name], np.ones(w) / w, mode="valid"), label=name)
    ax[0].set(xticks=range(len(config.test_lens)), xticklabels=[str(n) for n in config.test_lens],
              xlabel="test padding length", ylabel="accuracy", title="first-token label, BiRNN + pooling")
    ax[1].set(xlabel="step", ylabel="train loss")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "masks.png"), dpi=120)
    plt.close(fig)
    return write_results(workdir, results)
