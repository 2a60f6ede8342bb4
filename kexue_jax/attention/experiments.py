"""Runners of the attention experiments (configs in experiments/attention/): DeepNet's update explosion,
the Performer approximation curve and a retrieval comparison of attention kernels, RoFormerV2's α warmup
on a character MLM, and RoPE vs learned absolute positions on a lagged-copy task.

Every training loop here is data-parallel in the jit + NamedSharding model (kexue_jax.core.sharding):
`config.mesh` ({'data': -1} by default) builds the mesh, parameters and optimiser state are replicated,
each stacked chunk of batches [k, B, ...] is placed with the batch axis split over the mesh's batch axes,
and one `jax.jit` with in/out shardings scans the k steps (XLA inserts the gradient all-reduce). The
losses of every loop are written to `workdir/train_losses.json` ({run name: [loss per step]}), which
tests/attention/test_experiments.py compares between 1 and 8 simulated devices.

Each runner is `run_<slug>(config, workdir) -> dict`: it writes `workdir/results.json` (a flat dict of
floats) and its figures (`*.png`) into `workdir`, and returns the dict (CONTRIBUTING.md, experiment
contract). Everything is small enough for a 2-core CPU; the configs give the sizes.

Every runner is resumable job by job (`kexue_jax.core.units.UnitStore`): each independent training run or
measurement (a depth of the one-step table, a "why residual" training, an input of the Performer curve, a
recall kernel, an MLM run, a position scheme) is a unit whose output is saved under `workdir/units/` when
it finishes. Rerunning the same command with the same --workdir restores the finished units and computes
only the rest, so a killed run loses at most the job in progress; resuming with a different config is a
`ConfigError` before any job runs. Every unit's inputs (PRNG keys included) are derived from the config
alone, so a resumed run's results equal an uninterrupted run's bit for bit, except the timing entries
(`*seconds*`): a restored unit keeps the times measured in the run that computed it.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from kexue_jax.attention.core import attention
from kexue_jax.attention.deepnorm import deepnorm_coefficients
from kexue_jax.attention.linear import linear_attention
from kexue_jax.attention.masks import causal_mask
from kexue_jax.attention.performer import performer_attention, performer_projection
from kexue_jax.attention.roformer import RoFormerV2, RoFormerV2Config
from kexue_jax.attention.rope import apply_rope
from kexue_jax.attention.transformer import TransformerBlock, layer_norm, rms_norm
from kexue_jax.core import sharding
from kexue_jax.core.config import check_int, check_positive, mesh_size, require
from kexue_jax.core.metrics import write_results
from kexue_jax.core.units import UnitStore

__all__ = ["run_deepnorm", "run_linear", "run_roformer", "run_rope", "char_corpus", "CopyLM", "lagged_copy_batch",
           "check_deepnorm_config", "check_linear_config", "check_roformer_config", "check_rope_config"]


_write = write_results


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _check_batch_sizes(config, **sizes: int) -> dict:
    """Resolves `config.mesh` against the devices and checks that every named batch size splits over the
    batch-parallel devices; raises before anything compiles."""
    axes = mesh_size(config.get("mesh"), jax.device_count())
    n = axes.get("data", 1) * axes.get("fsdp", 1)
    for name, value in sizes.items():
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
                and value % n == 0):
            raise ValueError(f"`{name}` must be a positive multiple of the batch-parallel device count {n} "
                             f"(mesh {axes}); got {value!r}")
    return axes


def _check_ints(config, names, *, minimum: int = 1, prefix: str = "") -> None:
    """`check_int` on each `config[name]`; the error names the key as `prefix + name` (e.g. 'recall.seq_len')."""
    for name in names:
        check_int(config[name], prefix + name, minimum=minimum)


def _check_int_tuple(values, key: str, *, minimum: int = 1) -> None:
    """A non-empty tuple (or list) of integers >= `minimum`."""
    ok = isinstance(values, (tuple, list)) and len(values) > 0 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum for v in values)
    require(ok, key, f"a non-empty tuple of integers >= {minimum}", values)


def _check_heads(d_model, num_heads, *, d_key: str, heads_key: str, rope: bool) -> None:
    """`num_heads` divides `d_model` (and, under RoPE, into an even head dim: RoPE rotates pairs)."""
    if rope:
        require(d_model % num_heads == 0 and (d_model // num_heads) % 2 == 0, heads_key,
                f"a divisor of {d_key}={d_model} giving an even head dim (RoPE rotates pairs of dims)", num_heads)
    else:
        require(d_model % num_heads == 0, heads_key, f"a divisor of {d_key}={d_model}", num_heads)


def _shardings(config):
    """(replicated, one batch [B, ...] split over the batch axes, a chunk of batches [k, B, ...] split on B)."""
    mesh = sharding.make_mesh(config.get("mesh"))
    axes = sharding.batch_axes(mesh)
    return sharding.replicated(mesh), NamedSharding(mesh, P(axes)), NamedSharding(mesh, P(None, axes))


def _write_losses(workdir: str, losses: dict[str, np.ndarray]) -> None:
    import json
    with open(os.path.join(workdir, "train_losses.json"), "w") as f:
        json.dump({k: [float(x) for x in np.asarray(v).ravel()] for k, v in losses.items()}, f)


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


def why_residual_inputs(key, *, batch, d, steps):
    """The inputs of `why_residual_curve` for one seed key: x_i ~ N(0, I) [steps, batch, d], step i drawn
    from fold_in(kd, i) with kd the third split of the key."""
    kd = jax.random.split(key, 3)[2]
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(kd, i), (batch, d)))(jnp.arange(steps))


def why_residual_curve(key, eps, xs, *, plain, depth, d, lr):
    """Training loss curve (Adam, no warmup) of a depth-N MLP on a random sin teacher (spec §10.5, second
    part), one step per batch of xs [steps, batch, d]. Plain: W1[:, :d] ~ N(0, 1/d) with the √2 ReLU gain;
    residual: He-initialised W1, W2."""
    kp, kt, _ = jax.random.split(key, 3)
    k1, k2 = jax.random.split(kp)
    w1 = jax.random.normal(k1, (depth, d, 4 * d)) * np.sqrt((1.0 if plain else 2.0) / d)
    params = {"w1": w1, "w2": jax.random.normal(k2, (depth, 4 * d, d)) / np.sqrt(4 * d)}
    teacher = jax.random.normal(kt, (d, d)) / np.sqrt(d)
    tx = optax.adam(lr)

    def loss_fn(p, x):
        return jnp.mean((_mlp_stack(p, x, eps, plain) - jnp.sin(x @ teacher)) ** 2)

    def step(carry, x):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    return jax.lax.scan(step, (params, tx.init(params)), xs)[1]


def train_why_residual(config, keys, *, plain: bool) -> np.ndarray:
    """Loss curves [eps, seeds, steps] of the depth-`why_residual_depth` MLPs (plain: eps = (0,); residual:
    eps = (1, 1/√N)), data-parallel: the inputs [seeds, steps, B, d] are split over the batch axes and the
    vmapped training scans run in one jit with the parameters replicated."""
    n, d, steps = config.why_residual_depth, config.d_model, config.why_residual_steps
    rep, _, _ = _shardings(config)
    data_sh = NamedSharding(rep.mesh, P(None, None, sharding.batch_axes(rep.mesh)))  # [seeds, steps, B, d]
    xs = jax.jit(jax.vmap(functools.partial(why_residual_inputs, batch=config.batch_size, d=d, steps=steps)),
                 in_shardings=rep, out_shardings=data_sh)(keys)
    epss = jnp.asarray([0.0] if plain else [1.0, 1.0 / np.sqrt(n)], jnp.float32)
    fn = jax.jit(jax.vmap(jax.vmap(functools.partial(
        why_residual_curve, plain=plain, depth=n, d=d, lr=config.why_residual_lr),
        in_axes=(0, None, 0)), in_axes=(None, 0, None)),
        in_shardings=(rep, rep, data_sh), out_shardings=rep)
    return np.asarray(fn(keys, epss, xs))


def one_step_table(config, keys, depth: int, coefficients) -> dict:
    """`one_step_relative_change` of every variant and seed key at one depth, in one compilation ((α, β) are
    traced, both optimisers run). `coefficients`: per variant, the optimizer its (α, β) are derived for
    (`deepnorm_coefficients`), or None for plain Post-LN (α = β = 1). Returns {'sgd': (change, ratio),
    'adam': (change, ratio)} of numpy arrays [variants, seeds]."""
    coefs = [(1.0, 1.0) if coef is None else deepnorm_coefficients(num_encoder_layers=depth, optimizer=coef)
             for coef in coefficients]
    alphas, betas = (jnp.asarray([c[i] for c in coefs], jnp.float32) for i in (0, 1))
    fn = jax.jit(jax.vmap(jax.vmap(functools.partial(
        one_step_relative_change, depth=depth, d=config.d_model, batch=config.batch_size, sgd_lr=config.sgd_lr,
        adam_lr=config.adam_lr), in_axes=(0, None, None)), in_axes=(None, 0, 0)))
    return jax.tree.map(np.asarray, fn(keys, alphas, betas))


def check_deepnorm_config(config) -> None:
    """Every key `run_deepnorm` reads, checked in plain Python before anything is traced (ConfigError, a
    ValueError naming the key). `why_residual_steps` = 0 is valid: it skips the "why residual" part."""
    _check_batch_sizes(config, batch_size=config.batch_size)
    check_int(config.seed, "seed", minimum=0)
    _check_ints(config, ("num_seeds", "d_model", "why_residual_depth"))
    check_int(config.why_residual_steps, "why_residual_steps", minimum=0)
    _check_int_tuple(config.depths, "depths")
    for key in ("sgd_lr", "adam_lr", "why_residual_lr"):
        check_positive(config[key], key)


def run_deepnorm(config, workdir: str) -> dict:
    """One-step relative output change vs depth for Post-LN / DeepNorm / Su's Adam coefficients, and the
    "why residual" training comparison (see experiments/attention/deepnorm.py).

    Resumable job by job (module docstring): the units are 'one_step/N<depth>' (`one_step_table`, every
    variant and seed of one depth), then 'why_residual/residual' and 'why_residual/plain'
    (`train_why_residual`)."""
    check_deepnorm_config(config)
    os.makedirs(workdir, exist_ok=True)
    store = UnitStore(workdir, config)
    results: dict[str, float] = {}
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    variants = {  # name: (coefficients, optimizer, lr)
        "postln_sgd": (None, "sgd", config.sgd_lr), "postln_adam": (None, "adam", config.adam_lr),
        "deepnorm_sgd": ("sgd", "sgd", config.sgd_lr), "deepnorm_paper_adam": ("sgd", "adam", config.adam_lr),
        "su_adam": ("adam", "adam", config.adam_lr)}
    table = {}
    for depth in config.depths:
        out = store.run(f"one_step/N{depth}", one_step_table, config, keys, depth,
                        [coef for coef, _, _ in variants.values()])  # leaves [variants, seeds]
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
        curves, train_losses = {}, {}
        names = ("residual_eps_1", "residual_eps_inv_sqrt_n", "plain")
        for plain in (False, True):
            unit = "why_residual/plain" if plain else "why_residual/residual"
            losses = store.run(unit, train_why_residual, config, keys, plain=plain)  # [eps, seeds, steps]
            for name, loss in zip(names[2:] if plain else names[:2], losses):
                train_losses[f"why_residual/{name}"] = loss
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
        _write_losses(workdir, train_losses)
    return _write(workdir, results)


# ----------------------------------------------------------------------------------------------------
# Performer → linear attention (archives/8338): the approximation curve and a retrieval task.


@functools.partial(jax.jit, static_argnames=("num_features", "dim", "orthogonal"))
def _projection(key, *, num_features, dim, orthogonal):
    return performer_projection(key, num_features, dim, orthogonal=orthogonal)


def draw_projections(key, *, num: int, m: int, d: int, orthogonal: bool) -> jax.Array:
    """`num` FAVOR+ projections [num, m, d] from ONE `performer_projection` call of num·m rows, compiled on
    its own (the QR never sits inside a vmap or a larger graph: a batched QR under vmap inside the MSE
    graph hung XLA:CPU at full size). For m a multiple of d the num projections are independent (each is
    m/d whole orthogonal blocks); for m < d consecutive projections share a block, which leaves each one
    distributed as an m-row projection and so keeps the mean over them unbiased."""
    return _projection(key, num_features=num * m, dim=d, orthogonal=orthogonal).reshape(num, m, d)


@jax.jit
def _favor_mse(q, k, v, projections):
    """Mean over the projections [draws, m, d] of the squared error of FAVOR+ against exact attention."""
    exact = attention(q, k, v, implementation="einsum")
    err = lambda p: jnp.mean((performer_attention(q, k, v, projection=p) - exact) ** 2)
    return jnp.mean(jax.lax.map(err, projections))


def performer_mse_curve(key, *, n, d, ms, draws, qk_scale):
    """Mean squared error of FAVOR+ attention vs exact softmax attention (1/√d folded in), per m, for iid
    and orthogonal features.

    q, k ~ N(0, qk_scale² I) [1, n, 1, d], v ~ N(0, I); `draws` projections per m, drawn outside the
    jitted error (`draw_projections`) and looped over with lax.map. Returns {'iid', 'orthogonal'} of
    [len(ms)] numpy arrays."""
    kq, kk, kv, kp = jax.random.split(key, 4)
    q, k = (qk_scale * jax.random.normal(kk_, (1, n, 1, d)) for kk_ in (kq, kk))
    v = jax.random.normal(kv, (1, n, 1, d))
    out = {}
    for name in ("iid", "orthogonal"):
        mse = []
        for j, m in enumerate(ms):
            proj = draw_projections(jax.random.fold_in(kp, j), num=draws, m=m, d=d, orthogonal=name == "orthogonal")
            mse.append(float(_favor_mse(q, k, v, proj)))
        out[name] = np.asarray(mse)
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


def _recall_logits(params, keys, values, *, kernel, heads, head_dim, projection):
    """Logits [b, values] at the last position; `projection` [m, head_dim] is FAVOR+'s (unused otherwise)."""
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
            o = performer_attention(q, k, v, projection=projection)
        h = h + o.reshape(b, n, heads * head_dim) @ p["o"]
        h = h + jax.nn.relu(rms_norm(h) @ p["w1"]) @ p["w2"]
    return rms_norm(h[:, -1]) @ params["out"]  # [b, values]


def train_recall(config, kernel: str, key) -> dict:
    """Trains one kernel on associative recall with Adam, data-parallel over `config.mesh`; returns test
    accuracy, loss, seconds/step and the per-step loss curve.

    Every `log_every` steps: one jitted generator places the next chunk of batches [k, B, n] split over
    the batch axes, FAVOR+ draws k fresh projections (features redrawn every step) outside the step, and
    one jitted scan (params and Adam state replicated) trains on the chunk; the test batch is evaluated once,
    after the last chunk, by a separate jitted forward."""
    c = config.recall
    if kernel not in KERNELS:
        raise ValueError(f"`recall.kernels` entries must be in {KERNELS}; got {kernel!r}")
    kinit, ktrain, ktest, kfeat = jax.random.split(key, 4)
    shape = dict(d=c.d_model, heads=c.num_heads, head_dim=c.head_dim, layers=c.num_layers,
                 num_keys=c.num_keys, num_values=c.num_values)
    rep, bsh, csh = _shardings(config)
    params = jax.device_put(_init_recall(kinit, kernel=kernel, **shape), rep)
    fwd = functools.partial(_recall_logits, kernel=kernel, heads=c.num_heads, head_dim=c.head_dim)
    data = functools.partial(recall_batch, num_pairs=c.seq_len - 1, num_keys=c.num_keys, num_values=c.num_values)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(c.learning_rate))
    k_steps, m = c.log_every, 4 * c.head_dim
    favor = kernel == "favor_4d"

    def loss_fn(p, batch, projection):
        logits = fwd(p, batch[0], batch[1], projection=projection)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[2]).mean()

    @functools.partial(jax.jit, out_shardings=csh)
    def chunk(start):
        return jax.vmap(lambda i: data(jax.random.fold_in(ktrain, i), batch=c.batch_size))(start + jnp.arange(k_steps))

    def projections(start):  # [k, m, head_dim]: a fresh projection per step
        if not favor:
            return jax.device_put(jnp.zeros((k_steps, 1, 1)), rep)
        return jax.device_put(draw_projections(jax.random.fold_in(kfeat, start), num=k_steps, m=m, d=c.head_dim,
                                               orthogonal=True), rep)

    test_batch = jax.device_put(data(ktest, batch=c.eval_size), bsh)
    test_projection = (jax.device_put(draw_projections(jax.random.fold_in(kfeat, c.num_steps), num=1, m=m,
                                                       d=c.head_dim, orthogonal=True)[0], rep)
                       if favor else jax.device_put(jnp.zeros((1, 1)), rep))  # one fixed draw for the test

    @functools.partial(jax.jit, in_shardings=(rep, rep, csh, rep), out_shardings=(rep, rep, rep),
                       donate_argnums=(0, 1))
    def steps(p, s, batches, projs):
        def body(carry, xs):
            p, s = carry
            batch, proj = xs
            loss, g = jax.value_and_grad(loss_fn)(p, batch, proj)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (p, s), losses = jax.lax.scan(body, (p, s), (batches, projs))
        return p, s, losses

    @functools.partial(jax.jit, in_shardings=(rep, bsh, rep), out_shardings=rep)
    def evaluate(p, test, test_proj):  # test accuracy, once after training (not once per chunk)
        logits = fwd(p, test[0], test[1], projection=test_proj)
        return jnp.mean(jnp.argmax(logits, -1) == test[2])

    state = jax.device_put(tx.init(params), rep)
    losses = []
    params, state, first = steps(params, state, chunk(0), projections(0))
    losses.append(np.asarray(first))  # compile outside the timing
    t0 = time.perf_counter()
    for start in range(k_steps, c.num_steps, k_steps):
        params, state, out = steps(params, state, chunk(start), projections(start))
        losses.append(np.asarray(out))  # a host sync per chunk
    seconds = (time.perf_counter() - t0) / max(1, c.num_steps - k_steps)
    accuracy = evaluate(params, test_batch, test_projection)
    losses = np.concatenate(losses)
    return dict(accuracy=float(accuracy), final_loss=float(np.mean(losses[-max(1, k_steps):])),
                seconds_per_step=seconds, curve=losses)


def _approx_curve(config, key) -> dict:
    """`performer_mse_curve` of one input key at the sizes of `config.approx`, and its wall-clock seconds."""
    a = config.approx
    t0 = time.perf_counter()
    out = performer_mse_curve(key, n=a.length, d=a.head_dim, ms=tuple(a.features), draws=a.draws,
                              qk_scale=a.qk_scale)
    return dict(out, seconds=time.perf_counter() - t0)


def check_linear_config(config) -> None:
    """Every key `run_linear` reads, checked in plain Python before anything is traced (ConfigError, a
    ValueError naming the dotted key, e.g. `recall.num_heads`)."""
    r, a = config.recall, config.approx
    _check_batch_sizes(config, **{"recall.batch_size": r.batch_size, "recall.eval_size": r.eval_size})
    check_int(config.seed, "seed", minimum=0)
    _check_ints(a, ("length", "head_dim", "draws", "inputs"), prefix="approx.")
    _check_int_tuple(a.features, "approx.features")
    check_positive(a.qk_scale, "approx.qk_scale")
    for kernel in r.kernels:
        if kernel not in KERNELS:
            raise ValueError(f"`recall.kernels` entries must be in {KERNELS}; got {kernel!r}")
    _check_ints(r, ("num_keys", "num_values", "d_model", "num_heads", "head_dim", "num_layers", "num_steps"),
                prefix="recall.")
    check_positive(r.learning_rate, "recall.learning_rate")
    # seq_len − 1 (key, value) pairs with distinct keys, then the query: 1 <= seq_len − 1 <= num_keys
    require(isinstance(r.seq_len, numbers.Integral) and not isinstance(r.seq_len, bool)
            and 2 <= r.seq_len <= r.num_keys + 1, "recall.seq_len",
            f"an integer in [2, recall.num_keys + 1 = {r.num_keys + 1}] (seq_len − 1 pairs with distinct keys, "
            "then the query)", r.seq_len)
    if not (isinstance(r.log_every, int) and 1 <= r.log_every and r.num_steps % r.log_every == 0):
        raise ValueError(f"`recall.log_every` must be a positive divisor of recall.num_steps={r.num_steps}; "
                         f"got {r.log_every!r}")


def run_linear(config, workdir: str) -> dict:
    """Performer MSE vs m (iid vs orthogonal, log-log slope) and the retrieval comparison of kernels.

    Resumable job by job (module docstring): the units are 'approx/input<j>' (the error curve of input j
    of the `approx.inputs`; 'approx/seconds' is the sum of their times) and 'recall/<i>/<kernel>' (the
    `train_recall` of the i-th kernel of `recall.kernels`)."""
    check_linear_config(config)
    r = config.recall
    os.makedirs(workdir, exist_ok=True)
    store = UnitStore(workdir, config)
    results: dict[str, float] = {}
    a = config.approx
    ms = tuple(a.features)
    per_input = [store.run(f"approx/input{j}", _approx_curve, config, key)
                 for j, key in enumerate(jax.random.split(jax.random.key(config.seed), a.inputs))]
    results["approx/seconds"] = sum(r_["seconds"] for r_ in per_input)
    curves = {name: np.mean([r_[name] for r_ in per_input], axis=0) for name in ("iid", "orthogonal")}  # [len(ms)]
    for name, mse in curves.items():
        for m, e in zip(ms, mse):
            results[f"approx/{name}/mse_m{m}"] = float(e)
        results[f"approx/{name}/mse_min_m"] = float(mse[0])
        results[f"approx/{name}/mse_max_m"] = float(mse[-1])
        results[f"approx/{name}/loglog_slope"] = float(np.polyfit(np.log(ms), np.log(mse), 1)[0])
    results["approx/orthogonal_over_iid_mean_ratio"] = float(np.mean(curves["orthogonal"] / curves["iid"]))

    runs = {}
    for i, kernel in enumerate(r.kernels):
        out = store.run(f"recall/{i}/{kernel}", train_recall, config, kernel,
                        jax.random.fold_in(jax.random.key(config.seed), i))
        runs[kernel] = out
        for key in ("accuracy", "final_loss", "seconds_per_step"):
            results[f"recall/{kernel}/{key}"] = out[key]
    results["recall/chance_accuracy"] = 1.0 / r.num_values
    _write_losses(workdir, {f"recall/{kernel}": out["curve"] for kernel, out in runs.items()})

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


def mlm_trainer(config, corpus: np.ndarray | None = None) -> Callable[[float, int], tuple[np.ndarray, float]]:
    """`train_one(lr, alpha_warmup_steps) -> (per-step losses, test loss)`: trains the tiny RoFormerV2 MLM
    once (warmup 0 = no warmup). Data-parallel: every training batch is drawn once, on the first call, by a
    jitted generator whose output [num_steps, B, t] is split over the batch axes, and shared by later
    calls; each run is one jitted scan (lr and warmup traced, one compilation for every call) with the
    parameters and Adam state replicated. `corpus`: character ids (default `char_corpus()`), split 90/10
    into train/test by position."""
    corpus = char_corpus() if corpus is None else corpus
    split = int(0.9 * corpus.shape[0])
    rep, _, csh = _shardings(config)
    train, test = jax.device_put(jnp.asarray(corpus[:split]), rep), jax.device_put(jnp.asarray(corpus[split:]), rep)
    cfg = RoFormerV2Config(vocab_size=VOCAB_SIZE, hidden_size=config.hidden_size, num_layers=config.num_layers,
                           num_heads=config.num_heads, intermediate_size=4 * config.hidden_size,
                           type_vocab_size=0, dropout_rate=0.0)
    graphdef, params0 = nnx.split(nnx.eval_shape(lambda: RoFormerV2(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    init = lambda: nnx.state(RoFormerV2(cfg, rngs=nnx.Rngs(config.seed)), nnx.Param)
    tx = optax.scale_by_adam()

    def mlm_loss(p, batch):
        model = nnx.merge(graphdef, p)
        inputs, ids, target = batch[:3]
        logits = model.mlm_logits(model(inputs, alpha=batch[3] if len(batch) > 3 else 1.0, deterministic=True))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), ids)
        return jnp.sum(ce * target) / jnp.maximum(jnp.sum(target), 1)

    @functools.partial(jax.jit, static_argnums=(1, 2), out_shardings=csh)
    def batches(corpus_, seed, num):  # [num, B, t] inputs, ids, target; batch j from fold_in(key(seed), j)
        return jax.vmap(lambda i: mlm_batch(jax.random.fold_in(jax.random.key(seed), i), corpus_,
                                            batch=config.batch_size, length=config.seq_len))(jnp.arange(num))

    @functools.cache
    def train_and_test_batches():
        return batches(train, config.seed, config.num_steps), batches(test, 1, config.eval_batches)

    @functools.partial(jax.jit, in_shardings=(rep, rep, csh, csh), out_shardings=(rep, rep))
    def train_run(lr, warmup, data, test_data):
        def body(carry, xs):
            p, s = carry
            i, (inputs, ids, target) = xs
            alpha = jnp.where(warmup > 0, jnp.minimum(1.0, i / jnp.maximum(warmup, 1)), 1.0)
            loss, g = jax.value_and_grad(mlm_loss)(p, (inputs, ids, target, alpha))
            u, s = tx.update(g, s, p)
            p = jax.tree.map(lambda a, b: a - lr * b, p, u)
            return (p, s), loss
        p = init()
        (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), (jnp.arange(config.num_steps), data))
        test_loss = jnp.mean(jax.lax.map(lambda b: mlm_loss(p, b), test_data))
        return losses, test_loss

    def train_one(lr: float, warmup: int) -> tuple[np.ndarray, float]:
        losses, test_loss = jax.block_until_ready(train_run(jnp.float32(lr), jnp.int32(warmup),
                                                            *train_and_test_batches()))
        return np.asarray(losses), float(test_loss)

    return train_one


def train_mlm(config, runs, corpus: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
    """[(per-step losses, test loss)] of `mlm_trainer` once per (lr, alpha_warmup_steps) of `runs`."""
    train_one = mlm_trainer(config, corpus)
    return [train_one(lr, warmup) for lr, warmup in runs]


def check_roformer_config(config) -> None:
    """Every key `run_roformer` reads, checked in plain Python before the corpus is built or anything is
    traced (ConfigError, a ValueError naming the key). `alpha_warmup_steps` = 0 is valid (the warmup run
    then equals the no-warmup run: α = 1 from step 0)."""
    _check_batch_sizes(config, batch_size=config.batch_size)
    check_int(config.seed, "seed", minimum=0)
    _check_ints(config, ("hidden_size", "num_layers", "num_heads", "seq_len", "num_steps", "eval_batches"))
    _check_heads(config.hidden_size, config.num_heads, d_key="hidden_size", heads_key="num_heads", rope=True)
    check_int(config.alpha_warmup_steps, "alpha_warmup_steps", minimum=0)
    lrs = config.learning_rates
    require(isinstance(lrs, (tuple, list)) and len(lrs) > 0 and all(
        isinstance(lr, numbers.Real) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0 for lr in lrs),
        "learning_rates", "a non-empty tuple of finite numbers > 0", lrs)


def run_roformer(config, workdir: str) -> dict:
    """A tiny RoFormerV2 MLM on stdlib docstrings, post-norm from scratch at each lr, with and without the
    α warmup (α = min(1, step / warmup_steps)); one compilation for every run (`mlm_trainer`).

    Resumable job by job (module docstring): each run is a unit, 'mlm/lr<lr>/no_warmup' and
    'mlm/lr<lr>/alpha_warmup' per lr. 'seconds' is the corpus build of this call plus every run's training
    time as measured when the run was computed."""
    check_roformer_config(config)
    os.makedirs(workdir, exist_ok=True)
    store = UnitStore(workdir, config)
    t0 = time.perf_counter()
    corpus = char_corpus()
    train_one = mlm_trainer(config, corpus)
    seconds = time.perf_counter() - t0

    def mlm_run(lr, warmup):
        start = time.perf_counter()
        losses, test_loss = train_one(lr, warmup)
        return dict(losses=losses, test_loss=test_loss, seconds=time.perf_counter() - start)

    results, curves = {}, {}
    for lr in config.learning_rates:
        for name, warmup in (("no_warmup", 0), ("alpha_warmup", config.alpha_warmup_steps)):
            tag = f"lr{lr:g}/{name}"
            out = store.run(f"mlm/{tag}", mlm_run, lr, warmup)
            losses, test_loss = out["losses"], out["test_loss"]
            seconds += out["seconds"]
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
    results["seconds"] = seconds
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
    _write_losses(workdir, {f"mlm/{tag}": c for tag, c in curves.items()})
    return _write(workdir, results)


# ----------------------------------------------------------------------------------------------------
# RoPE (archives/8998 §"RoPE", spec §9.6 (c)): length generalisation on a lagged copy, RoPE vs learned
# absolute positions.

POSITIONS = ("rope", "learned")


def lagged_copy_batch(key, *, batch: int, length: int, vocab_size: int, lag: int):
    """A delay line: tokens x [b, t] uniform over the vocabulary, targets y_i = x_{i−lag} for i ≥ lag.
    Only the relative offset −lag determines the answer, so a model that attends by relative position
    solves it at any length. Returns (tokens [b, t], targets [b, t], weights [b, t] = 1[i ≥ lag])."""
    x = jax.random.randint(key, (batch, length), 0, vocab_size)
    y = jnp.roll(x, lag, axis=1)  # y_i = x_{i−lag}; the wrapped first `lag` positions carry weight 0
    w = jnp.broadcast_to(jnp.arange(length) >= lag, (batch, length)).astype(jnp.float32)
    return x, y, w


class CopyLM(nnx.Module):
    """A small causal pre-norm transformer (`TransformerBlock`s under `causal_mask`, parameter-free RMS
    norms) with position information either from RoPE on q and k ('rope', no position table) or from a
    learned absolute table added to the token embeddings ('learned', `max_len` rows, no RoPE).

    The learned table has `max_len` rows so that longer test sequences can be run at all; rows at and
    beyond the training length receive no gradient (no training position reaches them) and stay at their
    N(0, 0.02²) initial values: that is what a learned absolute position "extrapolates" with."""

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, ffn_dim: int, *,
                 positions: str, max_len: int, rngs: nnx.Rngs):
        if positions not in POSITIONS:
            raise ValueError(f"`positions` must be one of {POSITIONS}; got {positions!r}")
        init = nnx.initializers.normal(0.02)
        self.token_embedding = nnx.Embed(vocab_size, d_model, embedding_init=init, rngs=rngs)
        self.position_embedding = (nnx.Embed(max_len, d_model, embedding_init=init, rngs=rngs)
                                   if positions == "learned" else None)
        self.layers = nnx.List([
            TransformerBlock(d_model, num_heads, ffn_dim, norm="rms", placement="pre", activation="relu",
                             rope="interleaved" if positions == "rope" else None, rngs=rngs)
            for _ in range(num_layers)])
        self.head = nnx.Linear(d_model, vocab_size, use_bias=False, rngs=rngs)
        self.max_len = max_len

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens [b, t] (t ≤ max_len) -> logits [b, t, V]."""
        t = tokens.shape[1]
        if t > self.max_len:
            raise ValueError(f"`tokens` must have length <= max_len={self.max_len}; got shape {tokens.shape}")
        x = self.token_embedding(tokens)  # [b, t, d]
        if self.position_embedding is not None:
            x = x + self.position_embedding(jnp.arange(t))[None]
        mask = causal_mask(t)
        for layer in self.layers:
            x = layer(x, mask=mask, deterministic=True)
        return self.head(rms_norm(x))


def copy_loss(model: CopyLM, tokens, targets, weights):
    """Token-weighted cross-entropy over the positions with a target (the global mean over the batch)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(model(tokens).astype(jnp.float32), targets)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1)


def copy_accuracy(model: CopyLM, tokens, targets, weights):
    """Per-position accuracy [t] over the batch (positions with weight 0 give 0)."""
    hit = (jnp.argmax(model(tokens), -1) == targets).astype(jnp.float32) * weights
    return jnp.sum(hit, 0) / jnp.maximum(jnp.sum(weights, 0), 1)


def train_copy(config, positions: str, key) -> tuple[CopyLM, np.ndarray]:
    """Adam on the lagged copy at `config.train_length`, data-parallel over `config.mesh`; returns the
    trained model and the per-step losses."""
    c = config
    rep, _, csh = _shardings(c)
    model = CopyLM(c.vocab_size, c.d_model, c.num_heads, c.num_layers, c.ffn_dim, positions=positions,
                   max_len=max(c.train_length, *c.test_lengths), rngs=nnx.Rngs(c.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(c.learning_rate)
    params = jax.device_put(params, rep)
    state = jax.device_put(tx.init(params), rep)
    k_steps = c.log_every

    @functools.partial(jax.jit, out_shardings=csh)
    def chunk(start):
        return jax.vmap(lambda i: lagged_copy_batch(jax.random.fold_in(key, i), batch=c.batch_size,
                                                    length=c.train_length, vocab_size=c.vocab_size,
                                                    lag=c.lag))(start + jnp.arange(k_steps))

    @functools.partial(jax.jit, in_shardings=(rep, rep, csh), out_shardings=(rep, rep, rep), donate_argnums=(0, 1))
    def steps(p, s, batches):
        def body(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(lambda p_: copy_loss(nnx.merge(graphdef, p_), *batch))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (p, s), losses = jax.lax.scan(body, (p, s), batches)
        return p, s, losses

    losses = []
    for start in range(0, c.num_steps, k_steps):
        params, state, out = steps(params, state, chunk(start))
        losses.append(np.asarray(out))  # a host sync per chunk
    return nnx.merge(graphdef, jax.device_get(params)), np.concatenate(losses)


def _rope_unit(config, positions: str, kdata, ktest) -> dict:
    """`train_copy` of one position scheme and its per-position copy accuracy [t] at every test length t
    (test batch from fold_in(ktest, t)): {'losses', 'seconds' (of the training), 'accuracy': {'len<t>'}}."""
    c = config
    t0 = time.perf_counter()
    model, losses = train_copy(c, positions, kdata)
    seconds = time.perf_counter() - t0
    acc_fn = nnx.jit(copy_accuracy)
    accuracy = {}
    for t in c.test_lengths:
        batch = lagged_copy_batch(jax.random.fold_in(ktest, t), batch=c.eval_size, length=t,
                                  vocab_size=c.vocab_size, lag=c.lag)
        accuracy[f"len{t}"] = np.asarray(acc_fn(model, *batch))  # [t]
    return dict(losses=losses, seconds=seconds, accuracy=accuracy)


def check_rope_config(config) -> None:
    """Every key `run_rope` reads, checked in plain Python before anything is traced (ConfigError, a
    ValueError naming the key)."""
    c = config
    _check_batch_sizes(c, batch_size=c.batch_size)
    for name in ("train_length", "lag", "vocab_size", "num_steps", "log_every", "eval_size"):
        value = c[name]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"`{name}` must be a positive int; got {value!r}")
    if not c.lag < c.train_length:
        raise ValueError(f"`lag` must be < train_length={c.train_length}; got {c.lag!r}")
    if not (len(c.test_lengths) >= 1 and all(isinstance(t, int) and t > c.lag for t in c.test_lengths)):
        raise ValueError(f"`test_lengths` must be ints > lag={c.lag}; got {tuple(c.test_lengths)!r}")
    if c.num_steps % c.log_every:
        raise ValueError(f"`log_every` must divide num_steps={c.num_steps}; got {c.log_every!r}")
    for name in c.positions:
        if name not in POSITIONS:
            raise ValueError(f"`positions` entries must be in {POSITIONS}; got {name!r}")
    check_int(c.seed, "seed", minimum=0)
    _check_ints(c, ("d_model", "num_heads", "num_layers", "ffn_dim"))
    _check_heads(c.d_model, c.num_heads, d_key="d_model", heads_key="num_heads", rope="rope" in c.positions)
    check_positive(c.learning_rate, "learning_rate")


def run_rope(config, workdir: str) -> dict:
    """RoPE vs learned absolute positions on the lagged copy: trained at `train_length`, per-token copy
    accuracy at every length of `test_lengths` (also split into positions inside / beyond the training
    length), for each position scheme.

    Resumable job by job (module docstring): each position scheme is a unit, 'rope_copy/<scheme>' (its
    training and its test accuracies, `_rope_unit`)."""
    c = config
    check_rope_config(c)
    os.makedirs(workdir, exist_ok=True)
    store = UnitStore(workdir, c)
    results: dict[str, float] = {}
    curves, per_position = {}, {}
    kdata, ktest = jax.random.split(jax.random.key(c.seed))
    for name in c.positions:
        out = store.run(f"rope_copy/{name}", _rope_unit, c, name, kdata, ktest)
        losses = out["losses"]
        results[f"rope_copy/{name}/seconds"] = out["seconds"]
        curves[name] = losses
        results[f"rope_copy/{name}/final_train_loss"] = float(np.mean(losses[-max(1, c.log_every):]))
        for t in c.test_lengths:
            acc = out["accuracy"][f"len{t}"]  # [t]
            per_position[(name, t)] = acc
            results[f"rope_copy/{name}/accuracy_len{t}"] = float(np.mean(acc[c.lag:]))
            if t > c.train_length:
                results[f"rope_copy/{name}/accuracy_len{t}_within_train"] = float(np.mean(acc[c.lag:c.train_length]))
                results[f"rope_copy/{name}/accuracy_len{t}_beyond_train"] = float(np.mean(acc[c.train_length:]))
    results["rope_copy/chance_accuracy"] = 1.0 / c.vocab_size
    _write_losses(workdir, {f"rope_copy/{name}": v for name, v in curves.items()})

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, curve in curves.items():
        ax[0].plot(curve, label=name)
    ax[0].set(yscale="log", xlabel="step", ylabel="train loss", title=f"lagged copy (lag {c.lag}), t = {c.train_length}")
    ax[0].legend(fontsize=8)
    t = max(c.test_lengths)
    for name in c.positions:
        ax[1].plot(np.arange(c.lag, t), per_position[(name, t)][c.lag:], label=name)
    ax[1].axvline(c.train_length, color="gray", ls="--", lw=0.8)
    ax[1].set(xlabel="position", ylabel="copy accuracy", title=f"test length {t}", ylim=(-0.02, 1.02))
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "rope_copy.png"), dpi=120)
    plt.close(fig)
    return _write(workdir, results)
