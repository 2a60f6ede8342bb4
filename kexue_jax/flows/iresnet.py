"""Invertible residual networks (i-ResNet) and the Russian-roulette log-det of Residual Flows.

A residual block F(x) = x + g(x) is invertible when Lip(g) < 1 (kexue.fm/archives/6482, Behrmann et al.
2019). With 1-Lipschitz activations it suffices that every linear map has spectral norm < 1, so each
kernel is normalised by power iteration:

    σ̂ = vᵀ W u  (u, v from power iteration, carried in NNX state),   W ← W / max(1, σ̂ / c),   0 < c < 1

(the "soft" normalisation of the official `spectral_norm_fc.py`: a kernel already below c is unchanged).

Inverse: the Banach fixed-point iteration x_{n+1} = y − g(x_n), x_0 = y, whose error after n steps is
≤ Lip(g)ⁿ/(1 − Lip(g))·‖x_1 − x_0‖ (`fixed_point_inverse`, a `lax.while_loop` with a tolerance and a cap).

Log-determinant (det(I + J_g) > 0, so ln|det| = tr ln(I + J_g)):

    ln det(I + J_g) = Σ_{k≥1} (−1)^{k+1} tr(J_gᵏ)/k,

estimated three ways, chosen per block by `logdet`:
- 'series' (i-ResNet, the default): the first `n_terms` terms, each trace by Hutchinson's estimator
  tr(A) = E[vᵀAv] with `n_probes` Rademacher (or Gaussian) probes; vᵀJᵏ comes from k vector-Jacobian
  products, J is never formed. Biased by the truncation: |error| ≤ d·Σ_{k>n} Lᵏ/k ≤ d·L^{n+1}/((n+1)(1−L)).
- 'roulette' (Residual Flows, Chen et al. 2019): a random truncation N = `n_exact_terms` + G,
  G ~ Geometric(`roulette_p`) with P(G ≥ j) = (1 − p)ʲ, each term k divided by P(N ≥ k); unbiased for
  the series capped at `max_terms` terms (the cap keeps the program static; its bias is the tail above,
  with n = max_terms). One N is drawn per call and shared by the batch, as in Residual Flows.
- 'exact': slogdet(I + jacfwd(g)) per example, O(d³): for 2-D toys, evaluation and tests.
Selection: constructor kwargs of the block (and of `IResNet`, which passes them on), e.g.
`IResNet(..., logdet='series', n_terms=5, n_probes=1)`; `with_log_det(model, 'exact')` returns a copy with
another estimator (what `evaluate` does to score a model exactly).
The probes and N come from the block's own `nnx.Rngs` stream (the bijector contract has no key argument);
its counter lives in the model state, so the shared trainer advances it and checkpoints it.

Gradients flow through the estimator (the official i-ResNet backpropagates through the power series);
Residual Flows' Neumann-series gradient (O(1) memory) is not implemented.

Power-iteration state: each forward pass runs `n_power_iterations` iterations from the stored u, v and
writes them back (`PowerIterationState`, a non-Param NNX variable: the shared trainer carries it in
`TrainState.model_state` and checkpoints it, spec §2.6 lesson of invertible-resnet#3). The inverse never
updates them, so inverse(forward(x)) uses exactly the weights of the forward pass. Set
`update_power_iteration=False` on the blocks (`model.set_attributes(update_power_iteration=False)`) to
freeze them, e.g. for evaluation of a trained model.

Blocks: `IResNetBlock` (dense MLP on [b, d]) and `ConvIResNetBlock` (conv3×3 → σ → conv1×1 → σ → conv3×3 on
[b, h, w, c], each conv normalised by power iteration on the convolution operator itself).

```python
model = IResNet(event_shape=(2,), num_blocks=10, hidden=(64, 64), lipschitz=0.9, activation="elu",
                logdet="series", n_terms=5, n_probes=1, rngs=nnx.Rngs(0))
log_p = model.log_prob(x)                       # [b], the (stochastic) estimate
x_new = model.sample(100, key=key)               # fixed-point inverse of N(0, I) draws
loss, aux = nll_loss(model, {"x": x}, key=key)   # continuous data; images: flows.flow_loss (levels=...)
```

Departures from the official code: no squeeze/multi-scale or injective padding;
LipSwish uses a fixed β = 1 (x·sigmoid(x)/1.1) where Residual Flows learn β; kernels start LeCun-normal,
not zero (a zero kernel has no direction for the power iteration), so a block is not the identity at init.

References:
    https://kexue.fm/archives/6482 (细水长flow之可逆ResNet：极致的暴力美学)
    Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
    arXiv:1906.02735.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax.flows.bijector import (ActNorm, Bijector, Chain, Flatten, FlowModel, _check_event, _check_int,
                                      data_dependent_init)

__all__ = ["IResNet", "IResNetBlock", "ConvIResNetBlock", "SpectralLinear", "SpectralConv", "BLOCKS",
           "conv_power_iteration", "PowerIterationState", "ACTIVATIONS", "LOG_DETS", "PROBES",
           "lipswish", "power_iteration", "spectral_normalise", "fixed_point_inverse", "hutchinson_probes",
           "exact_log_det", "series_log_det", "roulette_log_det", "series_truncation_bound", "with_log_det",
           "nll_loss", "data_init", "evaluate", "evaluate_images"]

ACTIVATIONS = ("elu", "lipswish", "tanh")
LOG_DETS = ("series", "exact", "roulette")
BLOCKS = ("dense", "conv")
PROBES = ("rademacher", "normal")


class PowerIterationState(nnx.Variable):
    """The u/v vectors of a spectral-norm power iteration: not trained, carried and checkpointed."""


# ----------------------------------------------------------------------------------------------------
# Pure functions.


def lipswish(x: jax.Array) -> jax.Array:
    """LipSwish x·sigmoid(x)/1.1 (Residual Flows, β = 1): max |d/dx x·sigmoid(x)| ≈ 1.0998, so 1-Lipschitz."""
    return x * jax.nn.sigmoid(x) / 1.1


_ACTIVATION_FNS = {"elu": jax.nn.elu, "lipswish": lipswish, "tanh": jnp.tanh}


def _normalise(a: jax.Array) -> jax.Array:
    return a / (jnp.linalg.norm(a) + 1e-12)


def power_iteration(kernel: jax.Array, u: jax.Array, v: jax.Array, num_iterations: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`num_iterations` power iterations for the top singular pair of a kernel, and σ̂ = vᵀ·kernel·u.

    Args:
      kernel: [m, n] (a layer computes x @ kernel).
      u: [n] right vector, v: [m] left vector (unit norm), from the previous call.
      num_iterations: static count (0: σ̂ from the stored vectors).
    Returns:
      (u [n], v [m], sigma []): u and v without gradient; σ̂ differentiable in the kernel (as the official
      code, which differentiates W / σ̂ through σ̂ only). σ̂ ≤ ‖kernel‖₂, with equality at convergence.
    """
    kernel_sg = jax.lax.stop_gradient(kernel)

    def body(_, uv):
        v = _normalise(kernel_sg @ uv[0])  # [m]
        return _normalise(kernel_sg.T @ v), v  # u [n], v [m]

    if num_iterations:
        u, v = jax.lax.fori_loop(0, num_iterations, body, (u, v))
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return u, v, v @ kernel @ u


def spectral_normalise(kernel: jax.Array, sigma: jax.Array, lipschitz: float) -> jax.Array:
    """Soft spectral normalisation W / max(1, σ̂/c) (official `spectral_norm_fc.py`)."""
    return kernel / jnp.maximum(1.0, sigma / lipschitz)


def fixed_point_inverse(g: Callable[[jax.Array], jax.Array], y: jax.Array, *, max_iterations: int | jax.Array,
                        atol: float | jax.Array) -> jax.Array:
    """x with x + g(x) = y by x_{n+1} = y − g(x_n), x_0 = y (Banach; converges when Lip(g) < 1).

    Stops after `max_iterations` steps or once max|x_{n+1} − x_n| ≤ `atol` over the batch; the error is then
    ≤ Lip/(1 − Lip)·atol. Runs in `lax.while_loop` (not reverse-differentiable: the inverse is for sampling).
    `max_iterations` and `atol` may be traced. y [b, d] -> x [b, d].
    """

    def cond(carry):
        i, _, delta = carry
        return (i < max_iterations) & (delta > atol)

    def body(carry):
        i, x, _ = carry
        x_new = y - g(x)
        return i + 1, x_new, jnp.max(jnp.abs(x_new - x))

    init = (jnp.zeros((), jnp.int32), y, jnp.asarray(jnp.inf, y.dtype))
    return jax.lax.while_loop(cond, body, init)[1]


def hutchinson_probes(key: jax.Array, shape: Sequence[int], kind: str, dtype=jnp.float32) -> jax.Array:
    """Probes with zero mean and identity covariance: Rademacher (±1) or standard normal."""
    if kind == "rademacher":
        return jax.random.rademacher(key, tuple(shape), dtype)
    return jax.random.normal(key, tuple(shape), dtype)


def _per_example(g):
    return lambda xi: g(xi[None])[0]


def _event_sum(a: jax.Array, start: int) -> jax.Array:
    return jnp.sum(a, axis=tuple(range(start, a.ndim)))


def exact_log_det(g: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """ln|det(I + ∂g/∂x)| per example from the full Jacobian (jacfwd): x [b, ...] -> [b]. O(D³), D = event size."""
    event = x.shape[1:]
    d = int(np.prod(event))

    def flat(v):  # [D] -> [D]
        return g(v.reshape((1,) + event)).reshape(d)

    jac = jax.vmap(jax.jacfwd(flat))(x.reshape(x.shape[0], d))  # [b, D, D]
    eye = jnp.eye(d, dtype=x.dtype)[None]  # [1, D, D]
    return jnp.linalg.slogdet(eye + jac)[1]


def series_log_det(g: Callable[[jax.Array], jax.Array], x: jax.Array, probes: jax.Array, *, n_terms: int
                   ) -> jax.Array:
    """Σ_{k=1}^{n} (−1)^{k+1}/k · mean_p[v_pᵀ J^k v_p], J = ∂g/∂x per example (truncated i-ResNet series).

    vᵀJᵏ is k vector-Jacobian products; with probes √d·e_i for every basis vector e_i the mean is the exact
    trace, so this is also the exact truncated series.
    Args:
      g: batched residual [b, ...] -> [b, ...], each example independent of the others.
      x: [b, ...]; probes: [p, b, ...]; n_terms: static n >= 1.
    Returns: [b].
    """
    _, vjp = jax.vjp(g, x)
    vjp_probes = jax.vmap(lambda w: vjp(w)[0])  # [p, b, d] -> [p, b, d]
    w, total = probes, jnp.zeros(probes.shape[:2], x.dtype)
    for k in range(1, n_terms + 1):
        w = vjp_probes(w)  # v^T J^k
        total = total + ((-1) ** (k + 1) / k) * _event_sum(w * probes, 2)
    return jnp.mean(total, axis=0)


def _roulette_weights(n_exact_terms: int, p: float, max_terms: int) -> np.ndarray:
    """1 / P(N ≥ k) for k = 1..max_terms, N = n_exact_terms + G, P(G ≥ j) = (1 − p)^j."""
    k = np.arange(1, max_terms + 1)
    return np.where(k <= n_exact_terms, 1.0, (1.0 - p) ** -(k - n_exact_terms).astype(np.float64))


def roulette_log_det(g: Callable[[jax.Array], jax.Array], x: jax.Array, probes: jax.Array, *, key: jax.Array,
                     n_exact_terms: int, p: float, max_terms: int) -> jax.Array:
    """Unbiased Russian-roulette estimate of ln det(I + J) (Residual Flows):

        Σ_{k=1}^{N} (−1)^{k+1}/k · vᵀJᵏv / P(N ≥ k),   N = n_exact_terms + G,  P(G ≥ j) = (1 − p)ʲ,

    with N capped at `max_terms`; E over N (and the probes) is the series of `max_terms` terms. Terms past N
    are skipped with `lax.cond` (one N per call, shared by the batch). x [b, ...], probes [p, b, ...] -> [b].
    """
    u = jax.random.uniform(key, (), jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    extra = jnp.floor(jnp.log(u) / math.log1p(-p))  # G: P(G >= j) = (1 - p)^j
    n = jnp.minimum(n_exact_terms + extra, max_terms).astype(jnp.int32)
    weights = jnp.asarray(_roulette_weights(n_exact_terms, p, max_terms), x.dtype)  # [max_terms]
    _, vjp = jax.vjp(g, x)
    vjp_probes = jax.vmap(lambda w: vjp(w)[0])

    def body(carry, inputs):
        w, total = carry
        k, weight = inputs

        def term(w):
            w = vjp_probes(w)
            sign = jnp.where(k % 2 == 1, 1.0, -1.0).astype(x.dtype)
            return w, sign * weight / k.astype(x.dtype) * _event_sum(w * probes, 2)

        w, t = jax.lax.cond(k <= n, term, lambda w: (w, jnp.zeros(probes.shape[:2], x.dtype)), w)
        return (w, total + t), None

    ks = jnp.arange(1, max_terms + 1, dtype=jnp.int32)
    (_, total), _ = jax.lax.scan(body, (probes, jnp.zeros(probes.shape[:2], x.dtype)), (ks, weights))
    return jnp.mean(total, axis=0)


def series_truncation_bound(lipschitz: float, n_terms: int, dim: int) -> float:
    """|ln det(I + J) − n-term series| ≤ d·Σ_{k>n} Lᵏ/k = d·(−ln(1 − L) − Σ_{k≤n} Lᵏ/k) (official `weak_bound`)."""
    return dim * (-math.log1p(-lipschitz) - sum(lipschitz ** k / k for k in range(1, n_terms + 1)))


# ----------------------------------------------------------------------------------------------------
# Modules.


def _check_lipschitz(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise ValueError(f"`lipschitz` must be a number in (0, 1) (Lip(g) < 1 makes the block invertible); "
                         f"got {value!r}")
    return float(value)


def _check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}")
    return value


def _check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be a number in (0, 1); got {value!r}")
    return float(value)


def _check_atol(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"`atol` must be a number >= 0; got {value!r}")
    return float(value)


class SpectralLinear(nnx.Module):
    """y = x @ (W / max(1, σ̂/c)) + b, σ̂ by power iteration from the stored u, v (kernel W [in, out])."""

    def __init__(self, in_features: int, out_features: int, *, lipschitz: float, init_power_iterations: int = 20,
                 rngs: nnx.Rngs):
        self.lipschitz = _check_lipschitz(lipschitz)
        kernel = nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features))
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        u0 = _normalise(jax.random.normal(rngs.params(), (out_features,)))
        v0 = _normalise(jax.random.normal(rngs.params(), (in_features,)))
        # a few iterations at construction so the first forward pass already has a good σ̂
        u0, v0, _ = power_iteration(kernel, u0, v0, init_power_iterations)
        self.u = PowerIterationState(u0)
        self.v = PowerIterationState(v0)

    def normalised_kernel(self, num_iterations: int = 0, *, update: bool = False) -> jax.Array:
        """W / max(1, σ̂/c) after `num_iterations` power iterations (stored back when `update`)."""
        kernel = self.kernel[...]
        u, v, sigma = power_iteration(kernel, self.u[...].astype(kernel.dtype), self.v[...].astype(kernel.dtype),
                                      num_iterations)
        if update and num_iterations:
            self.u[...] = u
            self.v[...] = v
        return spectral_normalise(kernel, sigma, self.lipschitz)


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution, x [b, h, w, c_in], kernel [k, k, c_in, c_out] -> [b, h, w, c_out]."""
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_power_iteration(kernel: jax.Array, u: jax.Array, v: jax.Array, num_iterations: int
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Power iteration on the convolution operator A: u [h, w, c_in] -> A u [h, w, c_out] ('SAME', stride 1),
    with Aᵀ from its vector-Jacobian product (official `spectral_norm_conv_inplace.py`).

    Returns (u [h, w, c_in], v [h, w, c_out], σ̂ = ⟨v, A u⟩), σ̂ ≤ ‖A‖₂ with equality at convergence; u and v
    carry no gradient, σ̂ is differentiable in the kernel.
    """
    kernel_sg = jax.lax.stop_gradient(kernel)

    def op(a):
        return _conv(a[None], kernel_sg)[0]

    def body(_, uv):
        v = _normalise(op(uv[0]))  # [h, w, c_out]
        _, op_t = jax.vjp(op, uv[0])
        return _normalise(op_t(v)[0]), v

    if num_iterations:
        u, v = jax.lax.fori_loop(0, num_iterations, body, (u, v))
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    return u, v, jnp.sum(v * _conv(u[None], kernel)[0])


class SpectralConv(nnx.Module):
    """'SAME' conv with kernel K / max(1, σ̂/c), σ̂ the power-iteration norm of the conv operator on an
    h×w image (so the bound is on the actual map, padding included, not on the reshaped kernel)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, spatial: tuple[int, int],
                 lipschitz: float, init_power_iterations: int = 20, rngs: nnx.Rngs):
        self.lipschitz = _check_lipschitz(lipschitz)
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        kernel = nnx.initializers.lecun_normal()(rngs.params(), shape)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((out_channels,)))
        u0 = _normalise(jax.random.normal(rngs.params(), tuple(spatial) + (in_channels,)))
        v0 = _normalise(jax.random.normal(rngs.params(), tuple(spatial) + (out_channels,)))
        u0, v0, _ = conv_power_iteration(kernel, u0, v0, init_power_iterations)
        self.u = PowerIterationState(u0)
        self.v = PowerIterationState(v0)

    def normalised_kernel(self, num_iterations: int = 0, *, update: bool = False) -> jax.Array:
        """K / max(1, σ̂/c) after `num_iterations` power iterations (stored back when `update`)."""
        kernel = self.kernel[...]
        u, v, sigma = conv_power_iteration(kernel, self.u[...].astype(kernel.dtype),
                                           self.v[...].astype(kernel.dtype), num_iterations)
        if update and num_iterations:
            self.u[...] = u
            self.v[...] = v
        return spectral_normalise(kernel, sigma, self.lipschitz)


def _conv_net(weights, activation):
    """g(x) = K_L ⋆ σ(… σ(K_1 ⋆ x + b_1) …) + b_L: [b, h, w, c] -> [b, h, w, c]."""
    act = _ACTIVATION_FNS[activation]

    def g(x):
        h = x
        for i, (k, b) in enumerate(weights):
            h = _conv(h, k) + b.astype(x.dtype)[None, None, None]
            if i < len(weights) - 1:
                h = act(h)
        return h

    return g


def _mlp(weights, activation):
    """g(x) = W_L σ(… σ(W_1 x + b_1) …) + b_L for weights [(W_i, b_i)]: [b, d] -> [b, d]."""
    act = _ACTIVATION_FNS[activation]

    def g(x):
        h = x
        for i, (w, b) in enumerate(weights):
            h = h @ w.astype(x.dtype) + b.astype(x.dtype)[None]  # [b, in] -> [b, out]
            if i < len(weights) - 1:
                h = act(h)
        return h

    return g


class _ResidualBlock(Bijector):
    """F(x) = x + g(x) on [b, *event_shape]: the estimator and inverse options shared by the dense and
    conv blocks (documented on `IResNetBlock`). Subclasses build `self.layers` and `residual_fn`."""

    def _setup(self, event_shape, *, lipschitz, activation, n_power_iterations, logdet, n_terms, n_probes, probe,
               n_exact_terms, roulette_p, max_terms, max_iterations, atol, update_power_iteration, rngs):
        self.event_shape = tuple(event_shape)
        self.lipschitz = _check_lipschitz(lipschitz)
        self.activation = _check_choice(activation, "activation", ACTIVATIONS)
        # >= 1: with 0 the stored u, v never follow the trained kernel, σ̂ = vᵀWu falls below ‖W‖₂ and Lip(g) < 1
        # is no longer enforced (freeze a trained model with update_power_iteration=False instead)
        self.n_power_iterations = _check_int(n_power_iterations, "n_power_iterations", 1)
        self.logdet = _check_choice(logdet, "logdet", LOG_DETS)
        self.n_terms = _check_int(n_terms, "n_terms", 1)
        self.n_probes = _check_int(n_probes, "n_probes", 1)
        self.probe = _check_choice(probe, "probe", PROBES)
        self.n_exact_terms = _check_int(n_exact_terms, "n_exact_terms", 0)
        self.roulette_p = _check_probability(roulette_p, "roulette_p")
        self.max_terms = _check_int(max_terms, "max_terms", max(1, self.n_exact_terms))
        self.max_iterations = _check_int(max_iterations, "max_iterations", 1)
        self.atol = _check_atol(atol)
        self.update_power_iteration = bool(update_power_iteration)
        self.rngs = nnx.Rngs(probe=rngs.params())

    def weights(self, *, update: bool = False) -> list[tuple[jax.Array, jax.Array]]:
        """[(normalised kernel, bias)] per layer; `update` runs and stores n_power_iterations iterations."""
        n = self.n_power_iterations if update else 0
        return [(layer.normalised_kernel(n, update=update), layer.bias[...]) for layer in self.layers]

    def residual_fn(self, *, update: bool = False) -> Callable[[jax.Array], jax.Array]:
        raise NotImplementedError

    def log_det_fn(self, g: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
        """ln det(I + ∂g/∂x) at x [b, ...] by this block's estimator: [b]."""
        if self.logdet == "exact":
            return exact_log_det(g, x)
        key = self.rngs.probe()
        probe_key, n_key = jax.random.split(key)
        probes = hutchinson_probes(probe_key, (self.n_probes,) + x.shape, self.probe, x.dtype)  # [p, b, ...]
        if self.logdet == "series":
            return series_log_det(g, x, probes, n_terms=self.n_terms)
        return roulette_log_det(g, x, probes, key=n_key, n_exact_terms=self.n_exact_terms, p=self.roulette_p,
                                max_terms=self.max_terms)

    def forward(self, x):
        """y = x + g(x) without the log-det."""
        _check_event(x, self.event_shape, "x")
        return x + self.residual_fn(update=self.update_power_iteration)(x)

    def inverse(self, y):
        """The fixed-point inverse without the log-det."""
        _check_event(y, self.event_shape, "y")
        return fixed_point_inverse(self.residual_fn(update=False), y, max_iterations=self.max_iterations,
                                   atol=self.atol)

    def forward_and_log_det(self, x):
        _check_event(x, self.event_shape, "x")
        g = self.residual_fn(update=self.update_power_iteration)
        return x + g(x), self.log_det_fn(g, x)

    def inverse_and_log_det(self, y):
        _check_event(y, self.event_shape, "y")
        g = self.residual_fn(update=False)
        x = fixed_point_inverse(g, y, max_iterations=self.max_iterations, atol=self.atol)
        return x, -self.log_det_fn(g, x)


_BLOCK_DEFAULTS = dict(lipschitz=0.9, activation="elu", n_power_iterations=5, logdet="series", n_terms=5, n_probes=1,
                       probe="rademacher", n_exact_terms=2, roulette_p=0.5, max_terms=64, max_iterations=100,
                       atol=1e-6, update_power_iteration=True)


class IResNetBlock(_ResidualBlock):
    """F(x) = x + g(x), g an MLP with spectrally normalised kernels, on [b, d].

    Every kernel has spectral norm ≤ c, so Lip(g) ≤ c^(#layers) ≤ c (as the official code, which applies the
    coefficient per layer).

    Args:
      num_features: d.
      hidden: widths of g's hidden layers (the spec's 2-D toy: (64, 64)).
      lipschitz: c in (0, 1), the bound on every kernel's spectral norm (default 0.9).
      activation: one of ACTIVATIONS ('elu' (official default), 'lipswish', 'tanh'), all 1-Lipschitz.
      n_power_iterations: power iterations per forward pass, >= 1 (official: 5 for density, 1 classifier).
      logdet: the estimator, one of LOG_DETS ('series' (default) | 'exact' | 'roulette'); module docstring.
      n_terms: terms of the truncated series (official density setting: 5).
      n_probes: Hutchinson probes per call (official: 1), probe: one of PROBES ('rademacher' default).
      n_exact_terms, roulette_p, max_terms: the Russian-roulette truncation N = n_exact_terms + Geometric(p),
        capped at max_terms (Residual Flows: 2 and 0.5; default cap 64).
      max_iterations, atol: the fixed-point inverse's cap (official 100) and tolerance on max|x_{n+1} − x_n|
        (default 1e-6).
      update_power_iteration: whether forward passes store the updated u, v (default True).
      rngs: parameters, initial u/v, and the block's own probe stream.
    """

    def __init__(self, num_features: int, *, hidden: Sequence[int] = (64, 64), rngs: nnx.Rngs, **options: Any):
        d = self.num_features = _check_int(num_features, "num_features", 1)
        if not isinstance(hidden, (list, tuple)) or not hidden:
            raise ValueError(f"`hidden` must be a non-empty sequence of widths; got {hidden!r}")
        hidden = tuple(_check_int(h, "hidden", 1) for h in hidden)
        self._setup((d,), rngs=rngs, **_options(options))
        sizes = (d,) + hidden + (d,)
        self.layers = nnx.List([SpectralLinear(a, b, lipschitz=self.lipschitz, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def residual_fn(self, *, update: bool = False) -> Callable[[jax.Array], jax.Array]:
        """g as a pure function [b, d] -> [b, d] with the current (normalised) weights."""
        return _mlp(self.weights(update=update), self.activation)


class ConvIResNetBlock(_ResidualBlock):
    """F(x) = x + g(x) on images [b, h, w, c], g = conv3×3 (c → hidden) → σ → conv1×1 → σ → conv3×3 (→ c),
    the official `conv_iResNet` block; each conv operator normalised to norm ≤ c by power iteration on
    the operator itself (u, v are images). Other args as `IResNetBlock`."""

    def __init__(self, event_shape: Sequence[int], *, hidden: int = 64, rngs: nnx.Rngs, **options: Any):
        if not isinstance(event_shape, (list, tuple)) or len(event_shape) != 3:
            raise ValueError(f"`event_shape` must be (height, width, channels) for a conv block; got {event_shape!r}")
        h, w, c = (_check_int(s, "event_shape", 1) for s in event_shape)
        hidden = _check_int(hidden, "hidden", 1)
        self._setup((h, w, c), rngs=rngs, **_options(options))
        spec = [(c, hidden, 3), (hidden, hidden, 1), (hidden, c, 3)]
        self.layers = nnx.List([SpectralConv(a, b, k, spatial=(h, w), lipschitz=self.lipschitz, rngs=rngs)
                                for a, b, k in spec])

    def residual_fn(self, *, update: bool = False) -> Callable[[jax.Array], jax.Array]:
        """g as a pure function [b, h, w, c] -> [b, h, w, c] with the current (normalised) kernels."""
        return _conv_net(self.weights(update=update), self.activation)


def _options(options: dict) -> dict:
    unknown = sorted(set(options) - set(_BLOCK_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown i-ResNet block options {unknown}; allowed: {sorted(_BLOCK_DEFAULTS)}")
    return {**_BLOCK_DEFAULTS, **options}


class IResNet(FlowModel):
    """A stack of i-ResNet blocks on flattened data, standard-normal prior: x [b, *event_shape] -> z [b, D].

    Args (keyword-only):
      event_shape: the shape of one example ((2,) for the 2-D toys, (8, 8, 1) for digits).
      num_blocks: number of residual blocks.
      block: 'dense' (MLP blocks on the flattened example; `hidden` a tuple of widths) or 'conv'
        (`ConvIResNetBlock` on (h, w, c) images, flattened at the end; `hidden` an int of channels).
      actnorm: an ActNorm before every block (official "ActNorm before the residual branch"); pair it with
        a data-dependent init (`data_init` here, or `flows.data_init` for images).
      levels: grey levels of integer image data (for `flows.flow_loss`); None for continuous data.
      rngs: parameters and the blocks' probe streams.
      **block_kwargs: every other `IResNetBlock` argument (hidden, lipschitz, activation, logdet, n_terms,
        n_probes, probe, n_power_iterations, n_exact_terms, roulette_p, max_terms, max_iterations, atol).
    The inverse (and so `sample`) is the blocks' fixed-point inverse in reverse order.
    """

    def __init__(self, *, event_shape: Sequence[int], num_blocks: int, block: str = "dense", actnorm: bool = False,
                 levels: int | None = None, rngs: nnx.Rngs, **block_kwargs: Any):
        if not isinstance(event_shape, (list, tuple)) or not event_shape or not all(
                isinstance(s, numbers.Integral) and s >= 1 for s in event_shape):
            raise ValueError(f"`event_shape` must be a non-empty sequence of positive integers; got {event_shape!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_blocks = _check_int(num_blocks, "num_blocks", 1)
        if levels is not None:
            self.levels = _check_int(levels, "levels", 2)
        self.block = _check_choice(block, "block", BLOCKS)
        d = self.num_dims
        conv = self.block == "conv"
        if conv and len(self.event_shape) != 3:
            raise ValueError(f"`event_shape` must be (height, width, channels) for block='conv'; got {event_shape!r}")
        layers: list[Bijector] = [] if conv else [Flatten(self.event_shape)]
        for _ in range(self.num_blocks):
            if actnorm:
                layers.append(ActNorm(self.event_shape[-1] if conv else d))
            layers.append(ConvIResNetBlock(self.event_shape, rngs=rngs, **block_kwargs) if conv
                          else IResNetBlock(d, rngs=rngs, **block_kwargs))
        if conv:
            layers.append(Flatten(self.event_shape))
        self.flow = Chain(layers)


def with_log_det(model: nnx.Module, logdet: str, **options: Any) -> nnx.Module:
    """A copy of `model` whose every IResNetBlock uses estimator `logdet` (and e.g. n_terms=, n_probes=)."""
    _check_choice(logdet, "logdet", LOG_DETS)
    model = nnx.clone(model)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, _ResidualBlock):
            module.logdet = logdet
            for name, value in options.items():
                setattr(module, name, value)
    return model


# ----------------------------------------------------------------------------------------------------
# Training and evaluation on continuous data (the 2-D toys); integer images use flows.flow_loss.


def _data(batch: dict) -> jax.Array:
    if "x" not in batch:
        raise ValueError(f"`batch` must hold continuous data under 'x'; got keys {sorted(batch)}")
    return batch["x"]


def nll_loss(model: Any, batch: dict, *, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean negative log-likelihood in nats of continuous data batch['x'] [b, *event_shape].

    The key is unused: the log-det estimator draws from each block's own stream (model state).
    Returns (loss, {'nll_nats'}).
    """
    del key
    x = _data(batch)
    nll = -jnp.mean(model.log_prob(x))
    return nll, {"nll_nats": nll}


def data_init(model: Any, batch: dict, *, key: jax.Array) -> None:
    """The shared trainer's `data_init` hook for continuous data: every ActNorm standardises its input on
    the first batch (one forward pass under `data_dependent_init()`)."""
    del key
    with data_dependent_init():
        model.forward_and_log_det(_data(batch))


def evaluate(model: Any, dataset: Any, *, key: jax.Array, config: Any, workdir: str | None) -> dict[str, float]:
    """Test NLL of continuous data with the exact log-det and with the training estimator, samples, inverse.

    Returns:
      'test/nll_nats': −mean log p(x) with every block's log-det exact (`config.eval_logdet`, default
        'exact'; meant for small d);
      'test/nll_nats_estimator': the same with the blocks' own (training) estimator;
      'test/inverse_max_abs_error': max |f⁻¹(f(x)) − x| over the test split (fixed-point inverse);
      for '8gaussians' also 'test/true_nll_nats' (the data's exact entropy estimate on this split, the best
      any model can reach), 'test/mode_coverage' (modes of 8 holding > 1% of 2000 samples within 3σ of
      their centre) and 'test/high_quality_fraction'; a scatter plot `samples.png` goes to `workdir`.
    """
    x = np.asarray(dataset.arrays["x"], np.float32)
    eval_logdet = (config.get("eval_logdet") if config is not None else None) or "exact"
    exact = with_log_det(model, eval_logdet)
    results = {}
    for name, m in (("test/nll_nats", exact), ("test/nll_nats_estimator", model)):
        graphdef, state = nnx.split(m)
        log_p = jax.jit(lambda s, v: nnx.merge(graphdef, s).log_prob(v))(state, x)
        results[name] = float(-np.mean(np.asarray(log_p, np.float64)))
    graphdef, state = nnx.split(model)

    @jax.jit
    def round_trip(state, v):
        m = nnx.merge(graphdef, state)
        return m.inverse(m.forward(v))

    results["test/inverse_max_abs_error"] = float(np.max(np.abs(np.asarray(round_trip(state, x)) - x)))
    samples = np.asarray(jax.jit(lambda s, k: nnx.merge(graphdef, s).sample(2000, key=k))(state, key))
    if getattr(dataset, "name", None) == "8gaussians":
        from kexue_jax.data import toy

        results["test/true_nll_nats"] = float(-np.mean(toy.eight_gaussians_log_prob(x)))
        std = toy.EIGHT_GAUSSIANS_STD / toy.EIGHT_GAUSSIANS_DIVISOR
        centres = toy.eight_gaussian_centres()
        dist = np.sqrt(np.sum((samples[:, None, :] - centres[None]) ** 2, axis=-1))  # [n, 8]
        nearest = np.argmin(dist, axis=1)
        good = dist[np.arange(len(samples)), nearest] <= 3.0 * std
        share = np.bincount(nearest[good], minlength=len(centres)) / len(samples)
        results["test/mode_coverage"] = float(np.sum(share > 0.01))
        results["test/high_quality_fraction"] = float(good.mean())
    if workdir is not None and samples.shape[1] == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(workdir, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
        for ax, pts, title in ((axes[0], x, "test data"), (axes[1], samples, "i-ResNet samples (fixed-point inverse)")):
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=8)
        fig.savefig(os.path.join(workdir, "samples.png"))
        plt.close(fig)
    return results


def evaluate_images(model: Any, dataset: Any, *, key: jax.Array, config: Any, workdir: str | None
                    ) -> dict[str, float]:
    """Integer images (trained with `flows.flow_loss`): `flows.evaluate` scored with every block's log-det
    replaced by `config.eval_logdet` (default 'exact'; `config.eval_logdet_options`, e.g.
    {'n_terms': 20, 'n_probes': 8}, for a 'series' estimate where D is too large for slogdet), plus the
    training estimator's score and the fixed-point inverse error. The power iteration is frozen (the stored
    u, v of the last training step, `update_power_iteration=False`), so every score and sample uses one
    set of normalised weights, as spectral_norm does in eval mode.

    Returns flows.evaluate's keys ('test/bpd' with the evaluation log-det, the baselines; sample grids to
    `workdir`) and 'test/bpd_estimator' (the blocks' own training estimator on the same dequantised test
    split), 'test/inverse_max_abs_error' (max |f⁻¹(f(y)) − y| over up to 500 dequantised test images).
    """
    from kexue_jax.flows import train as flows_train

    config = config if config is not None else {}
    eval_logdet = config.get("eval_logdet") or "exact"
    options = dict(config.get("eval_logdet_options") or {})
    model = nnx.clone(model)
    model.set_attributes(update_power_iteration=False)  # the trained weights, no further power iteration
    results = flows_train.evaluate(with_log_det(model, eval_logdet, **options), dataset, key=key, config=config,
                                   workdir=workdir)
    same_draws = {k: config.get(k) for k in ("eval_dequant_samples", "eval_batch_size")
                  if config.get(k) is not None}  # no dataset key: no second baselines
    estimator = flows_train.evaluate(model, dataset, key=key, config=same_draws, workdir=None)
    results["test/bpd_estimator"] = estimator["test/bpd"]
    images = np.asarray(dataset.arrays["image"])[:500]
    y = flows_train._centred(jnp.asarray(images), key=jax.random.key(flows_train.EVAL_DEQUANT_SEED),
                             levels=model.levels)
    graphdef, state = nnx.split(model)
    back = jax.jit(lambda s, v: (lambda m: m.inverse(m.forward(v)))(nnx.merge(graphdef, s)))(state, y)
    results["test/inverse_max_abs_error"] = float(jnp.max(jnp.abs(back - y)))
    return results


_EVAL_LOGDET_OPTIONS = ("n_terms", "n_probes", "probe", "n_exact_terms", "roulette_p", "max_terms")


def _check_eval_logdet(config: Any) -> None:
    from kexue_jax.core.config import require

    eval_logdet = config.get("eval_logdet") or "exact"
    require(eval_logdet in LOG_DETS, "eval_logdet", f"one of {list(LOG_DETS)}", eval_logdet)


def check_config(config: Any) -> None:
    """The key only `evaluate` reads (`eval_logdet`), checked by the shared trainer before training."""
    _check_eval_logdet(config)


def check_image_config(config: Any) -> None:
    """The keys only `evaluate_images` reads (same defaults), checked by the shared trainer before training."""
    from kexue_jax.core.config import check_int, require
    from kexue_jax.flows import train as flows_train

    _check_eval_logdet(config)
    options = config.get("eval_logdet_options") or {}
    require(hasattr(options, "items"), "eval_logdet_options", "a dict", options)
    options = dict(options)
    require(set(options) <= set(_EVAL_LOGDET_OPTIONS), "eval_logdet_options",
            f"a dict with keys from {list(_EVAL_LOGDET_OPTIONS)}", options)
    for name, value in options.items():
        if name == "probe":
            require(value in PROBES, "eval_logdet_options.probe", f"one of {list(PROBES)}", value)
        elif name == "roulette_p":
            require(isinstance(value, numbers.Real) and 0 < value < 1, "eval_logdet_options.roulette_p",
                    "a number in (0, 1)", value)
        else:
            check_int(value, f"eval_logdet_options.{name}", minimum=0 if name == "n_exact_terms" else 1)
    flows_train.check_config(config)  # eval_dequant_samples, eval_batch_size


evaluate.check_config = check_config
evaluate_images.check_config = check_image_config
