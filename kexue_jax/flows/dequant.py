"""Variational dequantisation (Flow++): a learned noise distribution q(u|x) inside each integer bin.

Uniform dequantisation (`likelihood.py`) trains a continuous density p on y = (x + u)/L with u ~ U[0, 1)^D
and bounds the discrete model P(x) = ∫_{[0,1)^D} p((x + u)/L)·L^{−D} du by Jensen with the uniform q:

    log P(x) ≥ E_{u~q(u|x)}[log p((x + u)/L) − D·ln L − log q(u|x)]                        (ELBO)

holds for any density q on the unit cube, and is tight when q(u|x) = p((x + u)/L)·L^{−D}/P(x). Variational
dequantisation (Ho et al. 2019, Flow++ §3.1) learns q jointly with p. Here q is a conditional flow:

    ε ~ N(0, I),  v = g_x(ε) (affine couplings whose conditioners also see the centred image),
    w = B·tanh(v/B) (keeps u a fixed distance from 0 and 1),  u = sigmoid(w) ∈ (0, 1)^D,
    log q(u|x) = log N(ε; 0, I) − log|det ∂u/∂ε|   (couplings, tanh and sigmoid log-dets all included).

In bits/dim the negative ELBO is (log q − log p + D·ln L)/(D·ln 2) = `bits_per_dim(log p − log q, D, L)`:
the uniform q has log q = 0 and gives `flow_loss` exactly. With K samples u_k ~ q the importance-weighted
bound log P(x) ≥ E[log (1/K) Σ_k p((x+u_k)/L) L^{−D}/q(u_k|x)] is tighter and tends to log P(x) as K → ∞
(Burda et al. 2016); `evaluate` reports both.

Departures from Flow++, each for a reason: the conditioners are this package's zero-initialised
`ConvConditioner`/`MLPConditioner` fed [masked v, centred x] instead of a shared gated-attention
feature network (size: 8×8 digits); the first layer is a purely conditional elementwise affine (a
coupling whose mask is all zeros, i.e. q's base N(μ(x), σ(x)²)); the tanh soft bound (B = `logit_bound`,
default 10, so u ∈ [4.5e-5, 1 − 4.5e-5]) keeps x + u strictly inside its bin even in float32 for up to
256 levels.

References:
    https://kexue.fm/archives/5807 (细水长flow之RealNVP与Glow：流模型的传承与升华; dequantisation of the data)
    Ho, Chen, Srinivas, Duan & Abbeel, "Flow++: Improving Flow-Based Generative Models with Variational
    Dequantization and Architecture Design", arXiv:1902.00275, §3.1.
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", arXiv:1509.00519.
"""
from __future__ import annotations

import copy
import glob
import math
import numbers
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.flows.bijector import (ConvConditioner, MLPConditioner, _check_int, _event_sum, _lead, _log_scale,
                                      checkerboard_mask, interleaved_mask, standard_normal_log_prob)
from kexue_jax.flows.likelihood import bits_per_dim, check_levels

__all__ = ["DEQUANTIZERS", "VariationalDequantizer", "UniformDequantizer", "DequantizedFlow", "dequantized_terms",
           "variational_bits_per_dim", "importance_weighted_bits_per_dim", "variational_flow_loss", "evaluate",
           "run_comparison"]

DEQUANTIZERS = ("uniform", "variational")


def _check_event_shape(event_shape) -> tuple[int, ...]:
    shape = tuple(event_shape) if isinstance(event_shape, (tuple, list)) else None
    if shape is None or len(shape) not in (1, 3) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"`event_shape` must be (features,) or (height, width, channels) of positive integers; "
                         f"got {event_shape!r}")
    return tuple(int(s) for s in shape)


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0; got {value!r}")
    return float(value)


def _check_images(images, event_shape: tuple[int, ...], name: str = "images") -> None:
    if tuple(jnp.shape(images)[1:]) != event_shape or jnp.ndim(images) != len(event_shape) + 1:
        raise ValueError(f"`{name}` must have shape [batch, *{event_shape}]; got shape {tuple(jnp.shape(images))}")


def _centre(images: jax.Array, levels: int, dtype) -> jax.Array:
    """Bin centres (x + ½)/L − ½ ∈ (−½, ½): what the conditioners of q see."""
    return (jnp.asarray(images).astype(dtype) + 0.5) / levels - 0.5


class UniformDequantizer(nnx.Module):
    """q(u|x) = U[0, 1)^D: u = jax.random.uniform(key) in float32 (the draw of `likelihood.dequantize`), log q = 0."""

    def __init__(self, *, event_shape: Sequence[int], levels: int):
        self.event_shape = _check_event_shape(event_shape)
        self.levels = check_levels(levels)

    def sample_and_log_prob(self, images: jax.Array, *, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u [b, *event_shape] float32 in [0, 1), log q(u|x) [b] (zeros)."""
        _check_images(images, self.event_shape)
        u = jax.random.uniform(key, jnp.shape(images), jnp.float32)
        return u, jnp.zeros(u.shape[:1], u.dtype)


class VariationalDequantizer(nnx.Module):
    """q(u|x): ε ~ N(0, I) → conditional affine couplings → B·tanh(·/B) → sigmoid (module docstring).

    Args:
      event_shape: (h, w, c) images (conv conditioners, checkerboard masks) or (d,) vectors (MLP
        conditioners, interleaved masks).
      levels: grey levels L of the data (the conditioners see (x + ½)/L − ½).
      num_couplings: couplings after the first, purely conditional, elementwise affine layer.
      width, num_blocks: `ConvConditioner` sizes (images); hidden: `MLPConditioner` sizes (vectors).
      scale_bound: |log s| ≤ scale_bound in every coupling (`AffineCoupling`'s 'tanh' scale).
      logit_bound: B; u ∈ [sigmoid(−B), sigmoid(B)].
    Every conditioner ends zero-initialised, so at initialisation u = sigmoid(B·tanh(ε/B)) for every x.
    """

    def __init__(self, *, event_shape: Sequence[int], levels: int, num_couplings: int = 2, width: int = 32,
                 num_blocks: int = 0, hidden: Sequence[int] = (64,), scale_bound: float = 2.0,
                 logit_bound: float = 10.0, rngs: nnx.Rngs):
        self.event_shape = _check_event_shape(event_shape)
        self.levels = check_levels(levels)
        num_couplings = _check_int(num_couplings, "num_couplings", 0)
        self.scale_bound = _check_positive(scale_bound, "scale_bound")
        self.logit_bound = _check_positive(logit_bound, "logit_bound")
        if len(self.event_shape) == 3:
            h, w, c = self.event_shape
            masks = [np.zeros(self.event_shape, np.float32)] + [checkerboard_mask(h, w, c, parity=i % 2)
                                                              for i in range(num_couplings)]
            # conditioner input: [masked v, centred x] on the channel axis -> [shift, raw log-scale]
            conds = [ConvConditioner(2 * c, 2 * c, width=width, num_blocks=num_blocks, rngs=rngs) for _ in masks]
        else:
            d = self.event_shape[0]
            masks = [np.zeros(self.event_shape, np.float32)] + [interleaved_mask(d, parity=i % 2)
                                                              for i in range(num_couplings)]
            conds = [MLPConditioner(2 * d, 2 * d, hidden=hidden, rngs=rngs) for _ in masks]
        self.masks = tuple(tuple(m.reshape(-1).tolist()) for m in masks)  # static (part of the graph definition)
        self.conditioners = nnx.List(conds)

    def _shift_log_scale(self, k: int, v: jax.Array, xc: jax.Array, m: jax.Array):
        h = self.conditioners[k](jnp.concatenate([v * m, xc], axis=-1))
        half = h.shape[-1] // 2
        return h[..., :half], _log_scale(h[..., half:], "tanh", self.scale_bound)

    def _mask(self, k: int, like: jax.Array) -> jax.Array:
        return _lead(jnp.asarray(np.asarray(self.masks[k], np.float32).reshape(self.event_shape)), like)

    def forward_and_log_det(self, eps: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ε [b, *event_shape] → (u ∈ (0, 1), log|det ∂u/∂ε| [b]) given integer images [b, *event_shape]."""
        _check_images(eps, self.event_shape, "eps")
        _check_images(images, self.event_shape)
        xc = _centre(images, self.levels, eps.dtype)
        v, total = eps, jnp.zeros(eps.shape[:1], eps.dtype)
        for k in range(len(self.masks)):
            m = self._mask(k, v)
            shift, log_s = self._shift_log_scale(k, v, xc, m)
            v = m * v + (1.0 - m) * (v * jnp.exp(log_s) + shift)
            total = total + _event_sum((1.0 - m) * log_s)
        a = v / self.logit_bound
        w = self.logit_bound * jnp.tanh(a)
        # log(1 − tanh²a) = 2(log 2 − |a| − softplus(−2|a|)), stable for large |a|
        total = total + _event_sum(2.0 * (math.log(2.0) - jnp.abs(a) - jax.nn.softplus(-2.0 * jnp.abs(a))))
        u = jax.nn.sigmoid(w)
        total = total + _event_sum(-jax.nn.softplus(-w) - jax.nn.softplus(w))  # log σ(w) + log σ(−w)
        return u, total

    def inverse_and_log_det(self, u: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u ∈ (σ(−B), σ(B)) → (ε, log|det ∂ε/∂u| [b]); the exact inverse of `forward_and_log_det`."""
        _check_images(u, self.event_shape, "u")
        _check_images(images, self.event_shape)
        xc = _centre(images, self.levels, u.dtype)
        w = jnp.log(u) - jnp.log1p(-u)
        total = _event_sum(jax.nn.softplus(-w) + jax.nn.softplus(w))
        a = w / self.logit_bound
        v = self.logit_bound * jnp.arctanh(a)
        total = total - _event_sum(jnp.log1p(-jnp.square(a)))
        for k in reversed(range(len(self.masks))):
            m = self._mask(k, v)
            shift, log_s = self._shift_log_scale(k, v, xc, m)  # v * m is unchanged by layer k
            v = m * v + (1.0 - m) * (v - shift) * jnp.exp(-log_s)
            total = total - _event_sum((1.0 - m) * log_s)
        return v, total

    def sample_and_log_prob(self, images: jax.Array, *, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """u ~ q(·|x) [b, *event_shape] and log q(u|x) [b] (nats); ε is drawn in JAX's default float dtype."""
        _check_images(images, self.event_shape)
        eps = jax.random.normal(key, jnp.shape(images))
        u, log_det = self.forward_and_log_det(eps, images)
        return u, standard_normal_log_prob(eps) - log_det

    def log_prob(self, u: jax.Array, images: jax.Array) -> jax.Array:
        """log q(u|x) [b] = log N(ε(u)) + log|det ∂ε/∂u|."""
        eps, log_det = self.inverse_and_log_det(u, images)
        return standard_normal_log_prob(eps) + log_det


def _resolve(obj, name: str):
    if isinstance(obj, str):
        from kexue_jax.core.config import import_object

        return import_object(obj, key=name)
    if not callable(obj):
        raise ValueError(f"`{name}` must be an import path or a callable; got {obj!r}")
    return obj


class DequantizedFlow(nnx.Module):
    """A flow p on y − ½ (NICE, RealNVP, Glow) together with its dequantiser q(u|x): the discrete model.

    Args:
      flow: the flow class or its import path (e.g. 'kexue_jax.flows.RealNVP'), built with `flow_kwargs`
        and `rngs`; it must have `event_shape`, `levels` and `log_prob`.
      dequantizer: 'uniform' (`UniformDequantizer`, no parameters) or 'variational'
        (`VariationalDequantizer`, built with `dequantizer_kwargs`, event shape and levels from the flow).
    """

    def __init__(self, *, flow: Any, flow_kwargs: dict | None = None, dequantizer: str = "variational",
                 dequantizer_kwargs: dict | None = None, rngs: nnx.Rngs):
        if dequantizer not in DEQUANTIZERS:
            raise ValueError(f"`dequantizer` must be one of {list(DEQUANTIZERS)}; got {dequantizer!r}")
        dq_kwargs = dict(dequantizer_kwargs or {})
        for key in ("event_shape", "levels"):
            if key in dq_kwargs:
                raise ValueError(f"`dequantizer_kwargs` must not set {key!r} (it comes from the flow); got "
                                 f"{key}={dq_kwargs[key]!r}")
        self.flow = _resolve(flow, "flow")(**dict(flow_kwargs or {}), rngs=rngs)
        self.event_shape = tuple(self.flow.event_shape)
        self.levels = check_levels(self.flow.levels)
        self.kind = dequantizer
        if dequantizer == "uniform":
            if dq_kwargs:
                raise ValueError(f"`dequantizer_kwargs` must be empty for the uniform dequantizer; got {dq_kwargs}")
            self.dequantizer = UniformDequantizer(event_shape=self.event_shape, levels=self.levels)
        else:
            try:
                self.dequantizer = VariationalDequantizer(event_shape=self.event_shape, levels=self.levels,
                                                          **dq_kwargs, rngs=rngs)
            except (TypeError, ValueError) as e:  # name the dict the bad argument came from
                raise ValueError(f"`dequantizer_kwargs` must be valid VariationalDequantizer arguments ({e}); got "
                                 f"{dq_kwargs!r}") from e

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.event_shape))

    def sample(self, n: int, *, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """Samples of the flow, y − ½ [n, *event_shape] (the dequantiser plays no part in sampling)."""
        return self.flow.sample(n, key=key, temperature=temperature)


def dequantized_terms(model: Any, images: jax.Array, *, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(y), log q(u|x)), each [b] nats, for one draw u ~ q(·|x) and y = (x + u)/L ∈ [0, 1)^D.

    The flow is evaluated at y − ½ (as `flow_loss`); the dequantiser receives `key` unchanged, so the
    uniform dequantiser draws exactly the noise of `flow_loss` for the same key.
    """
    u, log_q = model.dequantizer.sample_and_log_prob(images, key=key)
    y = (jnp.asarray(images).astype(u.dtype) + u) / model.levels
    return model.flow.log_prob(y - 0.5), log_q


def variational_bits_per_dim(log_p: jax.Array, log_q: jax.Array, num_dims: int, levels: int) -> jax.Array:
    """Negative ELBO in bits/dim per sample: (log q(u|x) − log p(y) + D·ln L)/(D·ln 2); [...] -> [...]."""
    if jnp.shape(log_p) != jnp.shape(log_q):
        raise ValueError(f"`log_q` must have the shape of `log_p` {tuple(jnp.shape(log_p))}; got "
                         f"{tuple(jnp.shape(log_q))}")
    return bits_per_dim(log_p - log_q, num_dims, levels)


def importance_weighted_bits_per_dim(log_p: jax.Array, log_q: jax.Array, num_dims: int, levels: int) -> jax.Array:
    """−log₂ of the K-sample importance-weighted estimate of P(x), per dimension.

    bpd = −[logsumexp_k(log p_k − log q_k) − ln K − D·ln L]/(D·ln 2), for log p, log q [k, b] -> [b].
    """
    if jnp.ndim(log_p) != 2 or jnp.shape(log_p) != jnp.shape(log_q):
        raise ValueError(f"`log_p` and `log_q` must both be [k, b]; got {tuple(jnp.shape(log_p))} and "
                         f"{tuple(jnp.shape(log_q))}")
    k = jnp.shape(log_p)[0]
    log_w = jax.nn.logsumexp(log_p - log_q, axis=0) - math.log(k)
    return bits_per_dim(log_w, num_dims, levels)


def variational_flow_loss(model: Any, batch: dict, *, key: jax.Array, levels: int) -> tuple[jax.Array, dict]:
    """The shared trainer's loss: mean negative ELBO in bits/dim of integer images under a `DequantizedFlow`.

    loss = mean_b (log q(u_b|x_b) − log p(y_b) + D·ln L)/(D·ln 2),  u_b ~ q(·|x_b),  y_b = (x_b + u_b)/L.
    With the uniform dequantiser this is `flow_loss` for the same key, draw for draw.

    Returns:
      (loss, {'bpd', 'nll_nats' (−E log p(y)), 'log_q_nats' (E log q(u|x))}).
    """
    levels = check_levels(levels)
    if model.levels != levels:
        raise ValueError(f"`levels` must equal the model's levels ({model.levels}); got {levels}")
    images = batch["image"]
    _check_images(images, tuple(model.event_shape), "batch['image']")
    log_p, log_q = dequantized_terms(model, images, key=key)
    bpd = jnp.mean(variational_bits_per_dim(log_p, log_q, model.num_dims, levels))
    return bpd, {"bpd": bpd, "nll_nats": -jnp.mean(log_p), "log_q_nats": jnp.mean(log_q)}


def evaluate(model: Any, dataset: Any, *, key: jax.Array, config: Any, workdir: str | None) -> dict[str, float]:
    """Test ELBO and importance-weighted bits/dim of a `DequantizedFlow`, next to the closed-form baselines.

    K = `config.eval_importance_samples` (default 64) draws u_k ~ q(·|x) per test image, with the keys of
    `kexue_jax.flows.train.evaluate` (fold_in(fold_in(key(EVAL_DEQUANT_SEED), k), chunk)), so a uniform
    dequantiser scores its first draws on exactly the points that evaluate scores. 'test/bpd' is the
    negative ELBO averaged over images and the K draws; 'test/iw_bpd' the K-sample importance-weighted
    bound (≤ test/bpd). Unless `config.eval_flow_uniform` is False, the flow alone is also scored by
    `kexue_jax.flows.train.evaluate` under uniform noise ('test/flow_uniform_bpd'), which adds the
    closed-form baselines (when `config.dataset` is set) and the temperature sample grids (to `workdir`);
    otherwise the baselines are computed here, the same way, and no grids are drawn.
    """
    from kexue_jax.flows import train as flow_train

    images = np.asarray(dataset.arrays["image"])
    levels = check_levels(dataset.levels)
    if levels != model.levels:
        raise ValueError(f"`dataset.levels` must equal the model's levels ({model.levels}); got {levels}")
    if tuple(images.shape[1:]) != tuple(model.event_shape):
        raise ValueError(f"`dataset.arrays['image']` must be [N, *{tuple(model.event_shape)}]; got {images.shape}")
    num_samples = flow_train._check_positive_int(config, "eval_importance_samples", 64)
    batch_size = flow_train._check_positive_int(config, "eval_batch_size", 500)
    n, num_dims = images.shape[0], model.num_dims
    padded, num_chunks = flow_train._pad_to_chunks(images, batch_size)
    graphdef, state = nnx.split(model)

    @jax.jit
    def chunk_terms(state, chunk, k):
        log_p, log_q = dequantized_terms(nnx.merge(graphdef, state), chunk, key=k)
        return log_p.astype(jnp.float32), log_q.astype(jnp.float32)

    base = jax.random.key(flow_train.EVAL_DEQUANT_SEED)
    log_p = np.zeros((num_samples, n))
    log_q = np.zeros((num_samples, n))
    for d in range(num_samples):
        terms = [chunk_terms(state, padded[i * batch_size:(i + 1) * batch_size],
                             jax.random.fold_in(jax.random.fold_in(base, d), i)) for i in range(num_chunks)]
        log_p[d] = np.concatenate([np.asarray(t[0], np.float64) for t in terms])[:n]
        log_q[d] = np.concatenate([np.asarray(t[1], np.float64) for t in terms])[:n]
    results = {
        "test/bpd": float(np.mean(variational_bits_per_dim(log_p, log_q, num_dims, levels))),
        "test/iw_bpd": float(np.mean(importance_weighted_bits_per_dim(log_p, log_q, num_dims, levels))),
        "test/nll_nats": float(-np.mean(log_p)),
        "test/log_q_nats": float(np.mean(log_q)),
    }
    if config is None or config.get("eval_flow_uniform", True):
        flow_results = flow_train.evaluate(model.flow, dataset, key=key, config=config, workdir=workdir)
        results["test/flow_uniform_bpd"] = flow_results.pop("test/bpd")
        flow_results.pop("test/nll_nats", None)
        results.update(flow_results)  # the baselines
    elif config.get("dataset"):
        from kexue_jax.data import baselines, load

        train = load(config.dataset, "train", data_dir=config.get("data_dir"))
        for kind, name in (("uniform", "uniform"), ("diagonal", "diagonal_gaussian"), ("full", "full_gaussian")):
            results[f"test/baseline_{name}_bpd"] = baselines.gaussian_baseline_bpd(train, dataset, kind=kind)
    return {k: (v if np.isfinite(v) else float("nan")) for k, v in results.items()}


def check_config(config: Any) -> None:
    """The keys only `evaluate` reads (same defaults), checked by the shared trainer before training."""
    from kexue_jax.core.config import check_int
    from kexue_jax.flows import train as flow_train

    check_int(config.get("eval_importance_samples", 64), "eval_importance_samples")
    # eval_batch_size, and eval_dequant_samples (read when eval_flow_uniform; checked always: a typo there
    # would otherwise surface only in the full run, after training)
    flow_train.check_config(config)


evaluate.check_config = check_config


def _run_config(config: Any, name: str) -> Any:
    """The shared trainer's config for the run of dequantiser `name` in `run_comparison`."""
    sub = copy.deepcopy(config)
    sub.runner = "kexue_jax.core.train.train_and_evaluate"
    sub.model_kwargs.dequantizer = name
    sub.model_kwargs.dequantizer_kwargs = dict(config.dequantizer_kwargs) if name == "variational" else {}
    return sub


def run_comparison(config: Any, workdir: str) -> dict[str, float]:
    """Trains the config once per dequantiser in `config.compare` (e.g. ('uniform', 'variational')) with the
    shared trainer, same seed, data order and steps, in `workdir/<name>`; returns '<name>/<metric>' for
    each run plus the baselines (from the last run) at the top level, copies each run's figures to
    `workdir/<name>_<figure>.png`, and writes `workdir/results.json`."""
    from kexue_jax.core import config as config_lib
    from kexue_jax.core import metrics as metrics_lib
    from kexue_jax.core import train

    names = tuple(config.get("compare") or ())
    if not names or any(name not in DEQUANTIZERS for name in names) or len(set(names)) != len(names):
        raise ValueError(f"`compare` must be a non-empty sequence of distinct names from {list(DEQUANTIZERS)}; "
                         f"got {names!r}")
    # Every run is checked before the first one trains, so a mistake in a later run's model (e.g. in
    # `dequantizer_kwargs`) cannot surface after the earlier runs have trained.
    resolved = config_lib.validate_train_config(config, num_devices=jax.device_count())
    model_kwargs = config.get("model_kwargs") or {}
    dequantizer = model_kwargs.get("dequantizer", "variational")
    config_lib.require(dequantizer in DEQUANTIZERS, "model_kwargs.dequantizer",
                       f"one of {list(DEQUANTIZERS)} (each run sets it from `compare`)", dequantizer)
    if "variational" in names:
        config_lib.require(hasattr(config.get("dequantizer_kwargs"), "items"), "dequantizer_kwargs",
                           "a dict of VariationalDequantizer arguments", config.get("dequantizer_kwargs"))
    subs = {name: _run_config(config, name) for name in names}
    for sub in subs.values():  # abstract: no parameter is allocated, nothing is compiled
        nnx.eval_shape(lambda s=sub: resolved["model"](**dict(s.model_kwargs), rngs=nnx.Rngs(s.seed)))
    results: dict[str, float] = {}
    for name, sub in subs.items():
        sub_dir = os.path.join(workdir, name)
        out = train.train_and_evaluate(sub, sub_dir)
        if jax.process_index() == 0:  # figures at the top level, where `reproduce` collects them
            for png in sorted(glob.glob(os.path.join(sub_dir, "*.png"))):
                shutil.copyfile(png, os.path.join(workdir, f"{name}_{os.path.basename(png)}"))
        for k, v in out.items():
            if k.startswith("test/baseline_"):
                results[k] = v
            else:
                results[f"{name}/{k}"] = v
    if jax.process_index() == 0:
        metrics_lib.write_results(workdir, results)
    return results

