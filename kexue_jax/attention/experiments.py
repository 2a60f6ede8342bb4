"""Runners of the attention experiments (configs in experiments/attention/): DeepNet's update explosion,
the Performer approximation curve and a retrieval comparison of attention kernels, RoFormerV2's α warmup
on a character MLM, and RoPE vs learned absolute positions on a lagged-copy task.

Each runner is `run_<slug>(config, workdir) -> dict`: it writes `workdir/results.json` (a flat dict of
floats) and its figures (`*.png`) into `workdir`, and returns the dict (CONTRIBUTING.md, experiment
contract). Everything is small enough for a 2-core CPU; the configs give the sizes.
"""
from __future__ import annotations

import functools
import inspect
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kexue_jax.attention.core import attention
from kexue_jax.attention.deepnorm import deepnorm_coefficients
from kexue_jax.attention.linear import linear_attention
from kexue_jax.attention.masks import causal_mask
from kexue_jax.attention.performer import performer_attention, performer_projection
from kexue_jax.attention.roformer import RoFormerV2, RoFormerV2Config
from kexue_jax.attention.rope import apply_rope
from kexue_jax.attention.transformer import layer_norm, rms_norm
from kexue_jax.core.metrics import write_results

__all__ = ["run_deepnorm", "run_linear", "run_roformer", "run_rope", "char_corpus"]


_write = write_results


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.sgd(lr)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"`optimizer` must be 'sgd' or 'adam'; got {name!r}")


# ----------------------------------------------------------------------------------------------------
# DeepNet (archives/8994, 8978): the one-step "update explosion" and "why residual".


def _post_ln_stack(params, x, alpha):
    """N post-LN blocks of two FFN sublayers each: h ← LN(α h + W2 relu(W1 h)), scanned over blocks."""
    def block(h, p):
        for w1, w2 in ((p["w1a"], p["w2a"]), (p["w1b"], p["w2b"])):
            h = layer_norm(alpha * h + jax.nn.relu(h @ w1) @ w2)  # [b, d]
        return h, None
    return jax.lax.scan(block, x, params)[0]


def _xavier(key, shape, n):
    std = np.sqrt(2.0 / (shape[-2] + shape[-1]))
    return std * jax.random.normal(key, (n,) + shape)


def _deepnorm_params(key, depth, d, beta):
    """Xavier-normal FFN kernels (d -> 4d -> d) for `depth` blocks, all scaled by β (DeepNorm's init)."""
    keys = jax.random.split(key, 4)
    shapes = dict(w1a=(d, 4 * d), w2a=(4 * d, d), w1b=(d, 4 * d), w2b=(4 * d, d))
    return {name: beta * _xavier(k, shape, depth) for k, (name, shape) in zip(keys, shapes.items())}


def one_step_relative_change(key, alpha, beta, *, depth, d, batch, sgd_lr, adam_lr):
    """‖f(θ + Δθ)(x) − f(θ)(x)‖ / ‖f(θ)(x)‖ after one optimiser step on an MSE regression to random
    targets, and the ratio loss_after / loss_before on the same batch (spec §10.5), for one SGD step and
    one Adam step from the same init. Returns {'sgd': (change, ratio), 'adam': (change, ratio)}."""
    kp, kx, ky = jax.random.split(key, 3)
    params = _deepnorm_params(kp, depth, d, beta)
    x = jax.random.normal(kx, (batch, d))
    y = jax.random.normal(ky, (batch, d))
    loss = lambda p: jnp.mean((_post_ln_stack(p, x, alpha) - y) ** 2)
    grads = jax.grad(loss)(params)
    f0, loss0 = _post_ln_stack(params, x, alpha), loss(params)
    out = {}
    for name, tx in (("sgd", optax.sgd(sgd_lr)), ("adam", optax.adam(adam_lr))):
        updates, _ = tx.update(grads, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        out[name] = (jnp.linalg.norm(_post_ln_stack(new, x, alpha) - f0) / jnp.linalg.norm(f0), loss(new) / loss0)
    return out


def _mlp_stack(params, x, eps, plain):
    """Depth-N MLPs without normalisation: plain h ← relu(W1 h)·√2 (He-stable forward; W2 unused),
    residual h ← h + ε W2 relu(W1 h)."""
    def layer(h, p):
        if plain:
            return jax.nn.relu(h @ p[0][:, :h.shape[-1]]) * np.sqrt(2.0), None
        return h + eps * (jax.nn.relu(h @ p[0]) @ p[1]), None
    return jax.lax.scan(layer, x, (params["w1"], params["w2"]))[0]


def why_residual_curve(key, eps, *, plain, depth, d, batch, steps, lr):
    """Training loss curve (Adam, no warmup) of a depth-N MLP on a random sin teacher (spec §10.5, second
    part). Plain: W1[:, :d] ~ N(0, 1/d) with the √2 ReLU gain; residual: He-initialised W1, W2."""
    kp, kt, kd = jax.random.split(key, 3)
    k1, k2 = jax.random.split(kp)
    w1 = jax.random.normal(k1, (depth, d, 4 * d)) * np.sqrt((1.0 if plain else 2.0) / d)
    params = {"w1": w1, "w2": jax.random.normal(k2, (depth, 4 * d, d)) / np.sqrt(4 * d)}
    teacher = jax.random.normal(kt, (d, d)) / np.sqrt(d)
    tx = optax.adam(lr)

    def loss_fn(p, x):
        return jnp.mean((_mlp_stack(p, x, eps, plain) - jnp.sin(x @ teacher)) ** 2)

    def step(carry, i):
        p, s = carry
        x = jax.random.normal(jax.random.fold_in(kd, i), (batch, d))
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))[1]


def run_deepnorm(config, workdir: str) -> dict:
    """One-step relative output change vs depth for Post-LN / DeepNorm / Su's Adam coefficients, and the
    "why residual" training comparison (see experiments/attention/deepnorm.py)."""
    os.makedirs(workdir, exist_ok=True)
    results: dict[str, float] = {}
    d, batch, seeds = config.d_model, config.batch_size, config.num_seeds
    keys = jax.random.split(jax.random.key(config.seed), seeds)
    variants = {  # name: (coefficients, optimizer, lr)
        "postln_sgd": (None, "sgd", config.sgd_lr), "postln_adam": (None, "adam", config.adam_lr),
        "deepnorm_sgd": ("sgd", "sgd", config.sgd_lr), "deepnorm_paper_adam": ("sgd", "adam", config.adam_lr),
        "su_adam": ("adam", "adam", config.adam_lr)}
    table = {}
    for depth in config.depths:
        # every variant and seed of this depth in one compilation: (α, β) are traced, both optimisers run
        coefs = [(1.0, 1.0) if coef is None else deepnorm_coefficients(num_encoder_layers=depth, optimizer=coef)
                 for coef, _, _ in variants.values()]
        alphas, betas = (jnp.asarray([c[i] for c in coefs], jnp.float32) for i in (0, 1))
        fn = jax.jit(jax.vmap(jax.vmap(functools.partial(
            one_step_relative_change, depth=depth, d=d, batch=batch, sgd_lr=config.sgd_lr,
            adam_lr=config.adam_lr), in_axes=(0, None, None)), in_axes=(None, 0, 0)))
        out = jax.tree.map(np.asarray, fn(keys, alphas, betas))  # leaves [variants, seeds]
        for i, (name, (_, opt, _)) in enumerate(variants.items()):
            change, ratio = out[opt][0][i], out[opt][1][i]
            results[f"update/{name}/N{depth}"] = float(change.mean())
            results[f"loss_ratio/{name}/N{depth}"] = float(ratio.mean())
            table[(name, depth)] = float(change.mean())
    for name in variants:  # the deepest stack under a depth-free name, and the growth from the shallowest
        results[f"update/{name}/deepest"] = table[(name, config.depths[-1])]
        results[f"loss_ratio/{name}/deepest"] = results[f"loss_ratio/{name}/N{config.depths[-1]}"]
    for name in variants:  # growth from the shallowest to the deepest stack
        results[f"growth/{name}"] = table[(name, config.depths[-1])] / table[(name, config.depths[0])]

    if config.why_residual_steps > 0:
        n = config.why_residual_depth
        curves = {}
        names = ("residual_eps_1", "residual_eps_inv_sqrt_n", "plain")
        for plain in (False, True):
            epss = jnp.asarray([0.0] if plain else [1.0, 1.0 / np.sqrt(n)], jnp.float32)
            fn = jax.jit(jax.vmap(jax.vmap(functools.partial(
                why_residual_curve, plain=plain, depth=n, d=d, batch=batch, steps=config.why_residual_steps,
                lr=config.why_residual_lr), in_axes=(0, None)), in_axes=(None, 0)))
            losses = np.asarray(fn(keys, epss))  # [eps, seeds, steps]
            for name, loss in zip(names[2:] if plain else names[:2], losses):
                loss = np.where(np.isfinite(loss), loss, np.inf)
                curves[name] = np.median(loss, axis=0)
                tail = max(1, config.why_residual_steps // 10)
                results[f"why_residual/{name}/final_loss"] = float(np.median(loss[:, -tail:]))
                results[f"why_residual/{name}/initial_loss"] = float(np.median(loss[:, 0]))
                results[f"why_residual/{name}/max_loss"] = float(np.median(loss.max(axis=1)))
        plt = _plt()
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        for name in variants:
            ax[0].plot(config.depths, [table[(name, n_)] for n_ in config.depths], "o-", label=name)
        ax[0].set(xscale="log", yscale="log", xlabel="depth N (blocks)", ylabel="relative output change",
                  title="one optimiser step")
        ax[0].legend(fontsize=7)
        for name, c in curves.items():
            ax[1].plot(np.minimum(c, 1e3), label=name)
        ax[1].set(yscale="log", xlabel="step", ylabel="train loss (median over seeds)",
                  title=f"why residual, N = {n}")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "deepnorm.png"), dpi=120)
        plt.close(fig)
    return _write(workdir, results)


# ----------------------------------------------------------------------------------------------------
# Performer → linear attention (archives/8338): the approximation curve and a retrieval task.


def performer_mse_curve(key, *, n, d, ms, draws, qk_scale):
    """Mean squared error of FAVOR+ attention vs exact softmax attention (1/√d folded in), per m, for iid
    and orthogonal features.

    q, k ~ N(0, qk_scale² I) [n, d], v ~ N(0, I); `draws` projections per m. Returns {'iid', 'orthogonal'}
    of [len(ms)]."""
    kq, kk, kv, kp = jax.random.split(key, 4)
    q, k = (qk_scale * jax.random.normal(kk_, (1, n, 1, d)) for kk_ in (kq, kk))
    v = jax.random.normal(kv, (1, n, 1, d))
    exact = attention(q, k, v, implementation="einsum")
    out = {}
    for name in ("iid", "orthogonal"):
        mse = []
        for m in ms:  # `draws` independent m-row projections (orthogonal blocks are drawn independently)
            proj = performer_projection(kp, draws * m, d, orthogonal=name == "orthogonal").reshape(draws, m, d)
            approx = jax.vmap(lambda p: performer_attention(q, k, v, projection=p))(proj)  # [draws, 1, n, 1, d]
            mse.append(jnp.mean((approx - exact[None]) ** 2))
        out[name] = jnp.stack(mse)
    return out


def recall_batch(key, *, batch, num_pairs, num_keys, num_values):
    """Associative recall: num_pairs (key, value) tokens with distinct keys, then a query key; the label is
    the value stored with that key. Returns keys [b, n], values [b, n] (num_values = none), labels [b]."""
    kk, kv, kq = jax.random.split(key, 3)
    keys = jax.vmap(lambda k: jax.random.permutation(k, num_keys)[:num_pairs])(jax.random.split(kk, batch))
    values = jax.random.randint(kv, (batch, num_pairs), 0, num_values)
    which = jax.random.randint(kq, (batch,), 0, num_pairs)
    query = jnp.take_along_axis(keys, which[:, None], axis=1)  # [b, 1]
    labels = jnp.take_along_axis(values, which[:, None], axis=1)[:, 0]  # [b]
    keys = jnp.concatenate([keys, query], axis=1)  # [b, n]
    values = jnp.concatenate([values, jnp.full((batch, 1), num_values)], axis=1)  # [b, n]
    return keys, values, labels


KERNELS = ("softmax", "elu_linear", "exp_linear_4d", "favor_4d")


def _init_recall(key, *, kernel, d, heads, head_dim, layers, num_keys, num_values):
    m = 4 * head_dim if kernel == "exp_linear_4d" else head_dim  # Su's recipe: key size m = 4 × head size
    ks = iter(jax.random.split(key, 3 + 6 * layers))
    dense = lambda i, o: jax.random.normal(next(ks), (i, o)) / np.sqrt(i)
    params = {"key_emb": jax.random.normal(next(ks), (num_keys, d)),
              "value_emb": jax.random.normal(next(ks), (num_values + 1, d)),
              "out": dense(d, num_values), "layers": []}
    for _ in range(layers):
        params["layers"].append({"q": dense(d, heads * m), "k": dense(d, heads * m), "v": dense(d, heads * head_dim),
                                 "o": dense(heads * head_dim, d), "w1": dense(d, 4 * d), "w2": dense(4 * d, d)})
    return params


def _recall_logits(params, keys, values, *, kernel, heads, head_dim, feature_key, num_features):
    h = params["key_emb"][keys] + params["value_emb"][values]  # [b, n, d]
    b, n, _ = h.shape
    for p in params["layers"]:
        x = rms_norm(h)
        q = (x @ p["q"]).reshape(b, n, heads, -1)  # [b, n, h, m]
        k = (x @ p["k"]).reshape(b, n, heads, -1)
        v = (x @ p["v"]).reshape(b, n, heads, head_dim)
        if kernel == "softmax":
            o = attention(q, k, v)
        elif kernel == "elu_linear":
            o = linear_attention(q, k, v, feature_map="elu_plus_one")
        elif kernel == "exp_linear_4d":
            o = linear_attention(q, k, v, feature_map="exp")
        else:
            o = performer_attention(q, k, v, key=feature_key, num_features=num_features)
        h = h + o.reshape(b, n, heads * head_dim) @ p["o"]
        h = h + jax.nn.relu(rms_norm(h) @ p["w1"]) @ p["w2"]
    return rms_norm(h[:, -1]) @ params["out"]  # [b, values]


def train_recall(config, kernel: str, key) -> dict:
    """Trains one kernel on associative recall with Adam; returns test accuracy, loss and seconds/step."""
    c = config.recall
    kinit, ktrain, ktest, kfeat = jax.random.split(key, 4)
    shape = dict(d=c.d_model, heads=c.num_heads, head_dim=c.head_dim, layers=c.num_layers,
                 num_keys=c.num_keys, num_values=c.num_values)
    params = _init_recall(kinit, kernel=kernel, **shape)
    fwd = functools.partial(_recall_logits, kernel=kernel, heads=c.num_heads, head_dim=c.head_dim,
                            num_features=4 * c.head_dim)
    data = functools.partial(recall_batch, num_pairs=c.seq_len - 1, num_keys=c.num_keys, num_values=c.num_values)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(c.learning_rate))

    def loss_fn(p, batch, fkey):
        logits = fwd(p, batch[0], batch[1], feature_key=fkey)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[2]).mean()

    @jax.jit
    def steps(p, s, start):  # `log_every` steps per call; FAVOR+ redraws its features every step
        def body(carry, i):
            p, s = carry
            batch = data(jax.random.fold_in(ktrain, i), batch=c.batch_size)
            loss, g = jax.value_and_grad(loss_fn)(p, batch, jax.random.fold_in(kfeat, i))
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (p, s), losses = jax.lax.scan(body, (p, s), start + jnp.arange(c.log_every))
        return p, s, losses, evaluate(p)  # test accuracy in the same compilation

    def evaluate(p):
        batch = data(ktest, batch=c.eval_size)
        logits = fwd(p, batch[0], batch[1], feature_key=kfeat)
        return jnp.mean(jnp.argmax(logits, -1) == batch[2])

    state = tx.init(params)
    losses = []
    params, state, first, accuracy = steps(params, state, 0)  # compile outside the timing
    losses.append(np.asarray(first))
    t0 = time.perf_counter()
    for start in range(c.log_every, c.num_steps, c.log_every):
        params, state, chunk, accuracy = steps(params, state, start)
        losses.append(np.asarray(chunk))
    seconds = (time.perf_counter() - t0) / max(1, c.num_steps - c.log_every)
    losses = np.concatenate(losses)
    return dict(accuracy=float(accuracy), final_loss=float(np.mean(losses[-max(1, c.log_every):])),
                seconds_per_step=seconds, curve=losses)


def run_linear(config, workdir: str) -> dict:
    """Performer MSE vs m (iid vs orthogonal, log-log slope) and the retrieval comparison of kernels."""
    os.makedirs(workdir, exist_ok=True)
    results: dict[str, float] = {}
    a = config.approx
    ms = tuple(a.features)
    # one input per call: a vmap over inputs of this graph (batched QR inside) hung XLA:CPU at full size
    fn = jax.jit(functools.partial(performer_mse_curve, n=a.length, d=a.head_dim, ms=ms, draws=a.draws,
                                   qk_scale=a.qk_scale))
    per_input = [jax.tree.map(np.asarray, fn(key)) for key in jax.random.split(jax.random.key(config.seed), a.inputs)]
    curves = {name: np.mean([r[name] for r in per_input], axis=0) for name in ("iid", "orthogonal")}  # [len(ms)]
    for name, mse in curves.items():
        for m, e in zip(ms, mse):
            results[f"approx/{name}/mse_m{m}"] = float(e)
        results[f"approx/{name}/mse_min_m"] = float(mse[0])
        results[f"approx/{name}/mse_max_m"] = float(mse[-1])
        results[f"approx/{name}/loglog_slope"] = float(np.polyfit(np.log(ms), np.log(mse), 1)[0])
    results["approx/orthogonal_over_iid_mean_ratio"] = float(np.mean(curves["orthogonal"] / curves["iid"]))

    r = config.recall
    runs = {}
    for i, kernel in enumerate(r.kernels):
        out = train_recall(config, kernel, jax.random.fold_in(jax.random.key(config.seed), i))
        runs[kernel] = out
        for key in ("accuracy", "final_loss", "seconds_per_step"):
            results[f"recall/{kernel}/{key}"] = out[key]
    results["recall/chance_accuracy"] = 1.0 / r.num_values

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, mse in curves.items():
        ax[0].plot(ms, mse, "o-", label=f"{name} (slope {results[f'approx/{name}/loglog_slope']:.2f})")
    ax[0].set(xscale="log", yscale="log", xlabel="features m", ylabel="MSE vs softmax attention",
              title=f"FAVOR+, n = {a.length}, d = {a.head_dim}")
    ax[0].legend(fontsize=8)
    for kernel, out in runs.items():
        curve = out["curve"]
        w = max(1, len(curve) // 50)
        ax[1].plot(np.convolve(curve, np.ones(w) / w, mode="valid"), label=f"{kernel} (acc {out['accuracy']:.2f})")
    ax[1].set(xlabel="step", ylabel="train loss", title=f"associative recall, n = {r.seq_len}")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "linear.png"), dpi=120)
    plt.close(fig)
    return _write(workdir, results)


# ----------------------------------------------------------------------------------------------------
# RoFormerV2 (archives/8998): post-norm MLM from scratch with and without the α warmup.

CORPUS_MODULES = ("json", "collections", "functools", "itertools", "os", "re", "inspect", "textwrap",
                  "argparse", "logging", "unittest", "pathlib", "subprocess", "threading", "typing", "string",
                  "random", "statistics", "decimal", "fractions", "datetime", "calendar", "csv", "heapq",
                  "bisect", "shutil", "tempfile", "glob", "fnmatch", "pickle", "copy", "pprint", "enum",
                  "dataclasses", "contextlib", "abc", "io", "codecs", "difflib", "zipfile", "tarfile", "email",
                  "http.client", "urllib.parse", "socket", "selectors", "asyncio", "queue", "sched", "math")
PAD, MASK, UNK, FIRST_CHAR = 0, 1, 2, 3  # ids; printable ASCII 32..126 map to FIRST_CHAR + (ord − 32)
VOCAB_SIZE = FIRST_CHAR + 95


def char_corpus(modules=CORPUS_MODULES) -> np.ndarray:
    """Character ids of the docstrings of standard-library modules and their public members (whitespace
    runs collapsed to one space, non-printable characters -> UNK); deterministic for a Python version."""
    import importlib
    texts = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        texts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                texts.append(inspect.getdoc(obj) or "")
    text = " ".join(" ".join(t.split()) for t in dict.fromkeys(texts) if t)
    codes = np.frombuffer(text.encode("ascii", "replace"), np.uint8).astype(np.int32)
    return np.where((codes >= 32) & (codes < 127), codes - 32 + FIRST_CHAR, UNK).astype(np.int32)


def mlm_batch(key, corpus, *, batch, length, mask_rate=0.15):
    """Random windows of the corpus; 15% of positions are targets: 80% -> MASK, 10% random, 10% kept."""
    ko, kt, kr, kc = jax.random.split(key, 4)
    starts = jax.random.randint(ko, (batch,), 0, corpus.shape[0] - length)
    ids = jax.vmap(lambda s: jax.lax.dynamic_slice(corpus, (s,), (length,)))(starts)  # [b, t]
    target = jax.random.uniform(kt, ids.shape) < mask_rate
    u = jax.random.uniform(kc, ids.shape)
    random_ids = jax.random.randint(kr, ids.shape, FIRST_CHAR, VOCAB_SIZE)
    inputs = jnp.where(target & (u < 0.8), MASK, jnp.where(target & (u < 0.9), random_ids, ids))
    return inputs, ids, target


def run_roformer(config, workdir: str) -> dict:
    """A tiny RoFormerV2 MLM on stdlib docstrings, post-norm from scratch at each lr, with and without the
    α warmup (α = min(1, step / warmup_steps)); one compilation for every run (lr and warmup are traced)."""
    os.makedirs(workdir, exist_ok=True)
    corpus = char_corpus()
    split = int(0.9 * corpus.shape[0])
    train, test = jnp.asarray(corpus[:split]), jnp.asarray(corpus[split:])
    cfg = RoFormerV2Config(vocab_size=VOCAB_SIZE, hidden_size=config.hidden_size, num_layers=config.num_layers,
                           num_heads=config.num_heads, intermediate_size=4 * config.hidden_size,
                           type_vocab_size=0, dropout_rate=0.0)
    graphdef, params0 = nnx.split(nnx.eval_shape(lambda: RoFormerV2(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    init = jax.jit(lambda: nnx.state(RoFormerV2(cfg, rngs=nnx.Rngs(config.seed)), nnx.Param))
    tx = optax.scale_by_adam()

    def mlm_loss(p, batch):
        model = nnx.merge(graphdef, p)
        inputs, ids, target = batch[:3]
        logits = model.mlm_logits(model(inputs, alpha=batch[3] if len(batch) > 3 else 1.0, deterministic=True))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), ids)
        return jnp.sum(ce * target) / jnp.maximum(jnp.sum(target), 1)

    @jax.jit
    def train_run(lr, warmup):
        def body(carry, i):
            p, s = carry
            inputs, ids, target = mlm_batch(jax.random.fold_in(jax.random.key(config.seed), i), train,
                                            batch=config.batch_size, length=config.seq_len)
            alpha = jnp.where(warmup > 0, jnp.minimum(1.0, i / jnp.maximum(warmup, 1)), 1.0)
            loss, g = jax.value_and_grad(mlm_loss)(p, (inputs, ids, target, alpha))
            u, s = tx.update(g, s, p)
            p = jax.tree.map(lambda a, b: a - lr * b, p, u)
            return (p, s), loss
        p = init()
        (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), jnp.arange(config.num_steps))
        test_loss = jnp.mean(jnp.stack([mlm_loss(p, mlm_batch(jax.random.fold_in(jax.random.key(1), j), test,
                                                              batch=config.batch_size, length=config.seq_len))
                                        for j in range(config.eval_batches)]))
        return losses, test_loss

    results, curves = {}, {}
    t0 = time.perf_counter()
    for lr in config.learning_rates:
        for name, warmup in (("no_warmup", 0), ("alpha_warmup", config.alpha_warmup_steps)):
            losses, test_loss = jax.block_until_ready(train_run(jnp.float32(lr), jnp.int32(warmup)))
            losses = np.asarray(losses)
            tag = f"lr{lr:g}/{name}"
            curves[tag] = losses
            tail = max(1, config.num_steps // 10)
            finite = np.isfinite(losses).all() and np.isfinite(test_loss)
            results[f"mlm/{tag}/test_loss"] = float(test_loss) if finite else float(np.log(VOCAB_SIZE))
            results[f"mlm/{tag}/final_train_loss"] = float(np.mean(losses[-tail:])) if finite else float("nan")
            results[f"mlm/{tag}/diverged"] = float(not finite)
            results[f"mlm/{tag}/max_train_loss_after_warmup"] = float(np.max(losses[min(config.alpha_warmup_steps, len(losses) - 1):]))
    hi = max(config.learning_rates)
    results["mlm/high_lr/alpha_warmup/test_loss"] = results[f"mlm/lr{hi:g}/alpha_warmup/test_loss"]
    results["mlm/high_lr/no_warmup/test_loss"] = results[f"mlm/lr{hi:g}/no_warmup/test_loss"]
    results["mlm/uniform_test_loss"] = float(np.log(VOCAB_SIZE - FIRST_CHAR))
    results["seconds"] = time.perf_counter() - t0
    results["corpus_chars"] = float(corpus.shape[0])

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for tag, c in curves.items():
        w = max(1, len(c) // 50)
        ax.plot(np.convolve(np.minimum(c, 10), np.ones(w) / w, mode="valid"), label=tag)
    ax.set(xlabel="step", ylabel="MLM loss (nats/char)", title="post-norm RoFormerV2 from scratch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "roformer.png"), dpi=120)
    plt.close(fig)
    return _write(workdir, results)
