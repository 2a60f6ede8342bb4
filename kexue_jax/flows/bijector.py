"""The bijector contract and the layers of NICE, RealNVP and Glow.

Every bijector (and every flow model) is an NNX module with

    forward_and_log_det(x) -> (y, log_det)      # data -> latent direction
    inverse_and_log_det(y) -> (x, log_det)      # latent -> data direction

where x and y carry a leading batch axis and `log_det` has shape [batch]: the forward log_det is
log|det ∂y/∂x| at x, the inverse one log|det ∂x/∂y| at y, so at y = f(x) they are exact negatives. The log
density of data under a flow with base density p_z is then (kexue.fm/archives/5776, eq. for log q(x))

    log p(x) = log p_z(f(x)) + log|det ∂f/∂x|.

Bijectors whose log-det needs randomness (i-ResNet's Hutchinson estimator, to come) own an `nnx.Rngs`
stream, so the contract keeps no `key` argument; anything composed with `Chain` works under `jax.jit`,
`jax.grad` and `nnx.split/merge` (the shared trainer).

Layers here (kexue.fm/archives/5776 NICE, 5807 RealNVP & Glow):
- `Chain`, `Inverse`, `Flatten`, `Squeeze`/`Unsqueeze` (2×2×c -> 1×1×4c), `Permute` (reverse / shuffle);
- masks `checkerboard_mask`, `channel_mask`, `interleaved_mask`;
- `AdditiveCoupling` (NICE) and `AffineCoupling` (RealNVP/Glow, bounded scales), each with a binary mask or
  a channel split; conditioners `ConvConditioner`, `MLPConditioner` whose last layer is zero-initialised,
  so every coupling starts as the identity;
- `NICEScaling` (z = exp(k) ⊗ h); `ActNorm` with functional data-dependent initialisation
  (`data_dependent_init`); `InvertibleConv1x1` (plain or LU-parameterised);
- `FactorOut` (multi-scale split with a learned conditional prior, written as a conditional actnorm) and
  `LearnedPrior` (Glow's learned top prior);
- `FlowModel`: the base of NICE/RealNVP/Glow, adding `log_prob` and temperature `sample`.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "Bijector", "Buffer", "Chain", "Inverse", "Flatten", "Squeeze", "Unsqueeze", "squeeze", "unsqueeze",
    "Permute", "checkerboard_mask", "channel_mask", "interleaved_mask", "ConvConditioner", "MLPConditioner",
    "AdditiveCoupling", "AffineCoupling", "SCALE_FNS", "NICEScaling", "ActNorm", "data_dependent_init",
    "InvertibleConv1x1", "LearnedPrior", "FactorOut", "FlowModel", "standard_normal_log_prob",
]

_LOG_2PI = math.log(2.0 * math.pi)
SCALE_FNS = ("tanh", "sigmoid", "exp")


class Buffer(nnx.Variable):
    """A fixed (non-trained) array of a bijector: a mask, a permutation matrix, a sign vector."""


def _event_sum(a: jax.Array) -> jax.Array:
    """Sum over every axis but the leading batch axis: [b, ...] -> [b]."""
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_parity(parity) -> int:
    if parity not in (0, 1) or isinstance(parity, bool):
        raise ValueError(f"`parity` must be 0 or 1; got {parity!r}")
    return int(parity)


def _check_channels(a: jax.Array, channels: int, name: str) -> None:
    if jnp.ndim(a) < 2 or a.shape[-1] != channels:
        raise ValueError(f"`{name}` must have {channels} channels (last axis); got shape {tuple(jnp.shape(a))}")


def _check_event(a: jax.Array, event_shape: tuple[int, ...], name: str) -> None:
    if tuple(jnp.shape(a)[1:]) != tuple(event_shape) or jnp.ndim(a) != len(event_shape) + 1:
        raise ValueError(f"`{name}` must have event shape {tuple(event_shape)}; got shape {tuple(jnp.shape(a))}")


def _lead(p: jax.Array, x: jax.Array) -> jax.Array:
    """p [...] with leading unit axes to x's rank (explicit: the repo raises on implicit rank promotion)."""
    return p.reshape((1,) * (x.ndim - p.ndim) + p.shape).astype(x.dtype)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
    """log N(z; 0, I) summed over the event: [b, ...] -> [b]."""
    return _event_sum(-0.5 * jnp.square(z) - 0.5 * _LOG_2PI)


class Bijector(nnx.Module):
    """Base class: subclasses implement `forward_and_log_det` and `inverse_and_log_det` (batched)."""

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def forward(self, x: jax.Array) -> jax.Array:
        return self.forward_and_log_det(x)[0]

    def inverse(self, y: jax.Array) -> jax.Array:
        return self.inverse_and_log_det(y)[0]


class Chain(Bijector):
    """layers[0] first in the forward direction; log-dets add up."""

    def __init__(self, layers: Sequence[Bijector]):
        if not isinstance(layers, (list, tuple)) or len(layers) == 0 or not all(
                hasattr(l, "forward_and_log_det") for l in layers):
            raise ValueError(f"`layers` must be a non-empty sequence of bijectors; got {layers!r}")
        self.layers = nnx.List(list(layers))

    def forward_and_log_det(self, x):
        total = jnp.zeros(x.shape[:1], x.dtype)
        for layer in self.layers:
            x, ld = layer.forward_and_log_det(x)
            total = total + ld
        return x, total

    def inverse_and_log_det(self, y):
        total = jnp.zeros(y.shape[:1], y.dtype)
        for layer in reversed(list(self.layers)):
            y, ld = layer.inverse_and_log_det(y)
            total = total + ld
        return y, total


class Inverse(Bijector):
    """The inverse bijector: its forward is `bijector`'s inverse and vice versa."""

    def __init__(self, bijector: Bijector):
        self.bijector = bijector

    def forward_and_log_det(self, x):
        return self.bijector.inverse_and_log_det(x)

    def inverse_and_log_det(self, y):
        return self.bijector.forward_and_log_det(y)


class Flatten(Bijector):
    """[b, *event_shape] -> [b, prod(event_shape)]; log-det 0."""

    def __init__(self, event_shape: Sequence[int]):
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_features = int(np.prod(self.event_shape))

    def forward_and_log_det(self, x):
        _check_event(x, self.event_shape, "x")
        return x.reshape(x.shape[0], self.num_features), jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, y):
        _check_event(y, (self.num_features,), "y")
        return y.reshape((y.shape[0],) + self.event_shape), jnp.zeros(y.shape[:1], y.dtype)


def squeeze(x: jax.Array) -> jax.Array:
    """Moves each 2×2 spatial block into channels: [b, h, w, c] -> [b, h/2, w/2, 4c].

    Channel order of an output pixel: (row offset, column offset, channel), i.e. x[2i, 2j], x[2i, 2j+1],
    x[2i+1, 2j], x[2i+1, 2j+1], each with its c channels (kexue.fm/archives/5807, "squeeze").
    """
    if jnp.ndim(x) != 4 or x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"`x` must have even height and width to squeeze; got shape {tuple(jnp.shape(x))}")
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)  # [b, h/2, di, w/2, dj, c]
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [b, h/2, w/2, di, dj, c]
    return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(y: jax.Array) -> jax.Array:
    """Inverse of `squeeze`: [b, h, w, 4c] -> [b, 2h, 2w, c]."""
    if jnp.ndim(y) != 4 or y.shape[3] % 4:
        raise ValueError(f"`y` must have a channel count divisible by 4 to unsqueeze; got shape "
                         f"{tuple(jnp.shape(y))}")
    b, h, w, c4 = y.shape
    y = y.reshape(b, h, w, 2, 2, c4 // 4)  # [b, h, w, di, dj, c]
    y = y.transpose(0, 1, 3, 2, 4, 5)  # [b, h, di, w, dj, c]
    return y.reshape(b, 2 * h, 2 * w, c4 // 4)


class Squeeze(Bijector):
    """`squeeze` as a bijector (a permutation: log-det 0)."""

    def forward_and_log_det(self, x):
        return squeeze(x), jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, y):
        return unsqueeze(y), jnp.zeros(y.shape[:1], y.dtype)


class Unsqueeze(Inverse):
    """`unsqueeze` as a bijector."""

    def __init__(self):
        super().__init__(Squeeze())


class Permute(Bijector):
    """A fixed permutation of the last axis (NICE's reversal, RealNVP's shuffle; log-det 0).

    y[..., i] = x[..., permutation[i]]. The permutation is static (part of the graph definition).
    """

    def __init__(self, permutation: Sequence[int]):
        perm = [int(p) for p in permutation]
        if sorted(perm) != list(range(len(perm))) or not perm:
            raise ValueError(f"`permutation` must be a permutation of range({len(perm)}); got {perm}")
        self.permutation = tuple(perm)
        self.inverse_permutation = tuple(int(i) for i in np.argsort(perm))

    @classmethod
    def reverse(cls, num_channels: int) -> "Permute":
        return cls(list(range(num_channels))[::-1])

    @classmethod
    def shuffle(cls, num_channels: int, *, seed: int) -> "Permute":
        return cls(np.random.default_rng(seed).permutation(num_channels).tolist())

    def forward_and_log_det(self, x):
        _check_channels(x, len(self.permutation), "x")
        return x[..., np.asarray(self.permutation)], jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, y):
        _check_channels(y, len(self.permutation), "y")
        return y[..., np.asarray(self.inverse_permutation)], jnp.zeros(y.shape[:1], y.dtype)


# ----------------------------------------------------------------------------------------------------
# Masks: 1 marks the entries that pass through unchanged and condition the others.


def checkerboard_mask(height: int, width: int, channels: int, *, parity: int) -> np.ndarray:
    """float32 [height, width, channels]: 1 where (row + column) % 2 == parity (RealNVP's spatial mask)."""
    parity = _check_parity(parity)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    board = ((rows + cols) % 2 == parity).astype(np.float32)  # [h, w]
    return np.repeat(board[:, :, None], channels, axis=2)


def channel_mask(height: int, width: int, channels: int, *, parity: int) -> np.ndarray:
    """float32 [height, width, channels]: 1 on the first half of the channels (parity 0) or the second."""
    parity = _check_parity(parity)
    first = (np.arange(channels) < channels // 2).astype(np.float32)
    return np.broadcast_to(first if parity == 0 else 1 - first, (height, width, channels)).copy()


def interleaved_mask(num_features: int, *, parity: int) -> np.ndarray:
    """float32 [num_features]: 1 on even indices (parity 0) or odd ones (NICE's interleaved split)."""
    parity = _check_parity(parity)
    return (np.arange(num_features) % 2 == parity).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Conditioners: arbitrary networks; the last layer is zero-initialised so the coupling starts as the
# identity (STYLE.md §3; Glow's Conv2dZeros, kexue.fm/archives/5807).


class ConvConditioner(nnx.Module):
    """conv3×3 (width) → ReLU → [residual blocks] → conv1×1 (width) → ReLU → conv3×3 (zero-init).

    The Glow coupling network of kexue.fm/archives/5807 and openai/glow; `num_blocks` > 0 inserts
    residual blocks (conv3×3 → ReLU → conv3×3, added), a small version of RealNVP's ResNet conditioner.
    """

    def __init__(self, in_channels: int, out_channels: int, *, width: int, num_blocks: int = 0, rngs: nnx.Rngs):
        _check_int(in_channels, "in_channels", 1)
        _check_int(out_channels, "out_channels", 1)
        _check_int(width, "width", 1)
        _check_int(num_blocks, "num_blocks", 0)
        self.conv_in = nnx.Conv(in_channels, width, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.blocks = nnx.List([
            nnx.List([nnx.Conv(width, width, kernel_size=(3, 3), padding="SAME", rngs=rngs),
                      nnx.Conv(width, width, kernel_size=(3, 3), padding="SAME", rngs=rngs)])
            for _ in range(num_blocks)])
        self.conv_mid = nnx.Conv(width, width, kernel_size=(1, 1), padding="SAME", rngs=rngs)
        # zero-initialised output: shift 0 and log-scale 0, so the coupling starts as the identity
        self.conv_out = nnx.Conv(width, out_channels, kernel_size=(3, 3), padding="SAME",
                                 kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.conv_in(x))
        for first, second in self.blocks:
            h = jax.nn.relu(h + second(jax.nn.relu(first(h))))
        h = jax.nn.relu(self.conv_mid(h))
        return self.conv_out(h)


class MLPConditioner(nnx.Module):
    """Linear → ReLU → ... → Linear (zero-init), on [b, in_features] (NICE's m, kexue.fm/archives/5776)."""

    def __init__(self, in_features: int, out_features: int, *, hidden: Sequence[int], rngs: nnx.Rngs):
        sizes = [_check_int(in_features, "in_features", 1)] + [_check_int(h, "hidden", 1) for h in hidden]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        # zero-initialised output: the coupling starts as the identity
        self.out = nnx.Linear(sizes[-1], _check_int(out_features, "out_features", 1),
                              kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.out(x)


# ----------------------------------------------------------------------------------------------------
# Couplings.


def _log_scale(raw: jax.Array, scale_fn: str, bound: float) -> jax.Array:
    if scale_fn == "tanh":
        # |log s| <= bound, slope 1 at 0: bounded like RealNVP's tanh scale, and exactly the identity at init
        return bound * jnp.tanh(raw / bound)
    if scale_fn == "sigmoid":
        # openai/glow: s = sigmoid(h + 2) in (0, 1) -- stable, but s = 0.88 (not 1) at a zero-init conditioner
        return jax.nn.log_sigmoid(raw + 2.0)
    return raw  # 'exp': s = exp(h), unbounded (the blog's form)


class _Coupling(Bijector):
    """y_1 = x_1, y_2 = s(x_1) ⊗ x_2 + t(x_1) with log|det| = Σ log s (additive: s ≡ 1).

    Partition by a binary `mask` (1 = x_1, passes through and conditions) of the event shape, or by a
    channel split of `num_channels` (`parity` 0: the first half conditions the second; 1: the reverse).
    The conditioner sees x_1 (masked input of the full event, or the conditioning half) and returns the
    shift t (additive) or [t, raw log-scale] concatenated on the last axis (affine), for the full event
    (mask) or the transformed half (split).
    """

    affine = False

    def __init__(self, conditioner: nnx.Module, *, mask=None, num_channels: int | None = None, parity: int = 0,
                 scale_fn: str = "tanh", scale_bound: float = 2.0):
        if (mask is None) == (num_channels is None):
            raise ValueError(f"exactly one of `mask` and `num_channels` must be given; got mask="
                             f"{None if mask is None else '<array>'}, num_channels={num_channels!r}")
        if scale_fn not in SCALE_FNS:
            raise ValueError(f"`scale_fn` must be one of {list(SCALE_FNS)}; got {scale_fn!r}")
        if not (isinstance(scale_bound, numbers.Real) and math.isfinite(scale_bound) and scale_bound > 0):
            raise ValueError(f"`scale_bound` must be a finite number > 0; got {scale_bound!r}")
        self.conditioner = conditioner
        self.scale_fn = scale_fn
        self.scale_bound = float(scale_bound)
        self.parity = _check_parity(parity)
        if mask is not None:
            m = np.asarray(mask, np.float32)
            if not (np.all((m == 0) | (m == 1)) and m.min() == 0 and m.max() == 1):
                raise ValueError(f"`mask` must contain only 0 and 1 with at least one of each; got {np.asarray(mask)}")
            self._mask = Buffer(jnp.asarray(m))
            self.num_channels = None
        else:
            if isinstance(num_channels, bool) or not isinstance(num_channels, numbers.Integral) or \
                    num_channels < 2 or num_channels % 2:
                raise ValueError(f"`num_channels` must be an even integer >= 2 for a channel split; got "
                                 f"{num_channels!r}")
            self._mask = None
            self.num_channels = int(num_channels)

    @property
    def mask(self):
        return None if self._mask is None else self._mask[...]

    def _shift_log_scale(self, cond: jax.Array):
        h = self.conditioner(cond)
        if not self.affine:
            return h, None
        k = h.shape[-1] // 2
        return h[..., :k], _log_scale(h[..., k:], self.scale_fn, self.scale_bound)

    def _split(self, x):
        half = self.num_channels // 2
        a, b = x[..., :half], x[..., half:]
        return (a, b) if self.parity == 0 else (b, a)  # (conditioning, transformed)

    def _join(self, cond, out):
        return jnp.concatenate([cond, out] if self.parity == 0 else [out, cond], axis=-1)

    def _transform(self, x, sign: float):
        """sign +1: forward; -1: inverse. Returns (output, log_det of this direction)."""
        name = "x" if sign > 0 else "y"
        if self._mask is None:
            _check_channels(x, self.num_channels, name)
            cond, act = self._split(x)
            shift, log_s = self._shift_log_scale(cond)
            if sign > 0:
                out = act + shift if log_s is None else act * jnp.exp(log_s) + shift
            else:
                out = act - shift if log_s is None else (act - shift) * jnp.exp(-log_s)
            ld = jnp.zeros(x.shape[:1], x.dtype) if log_s is None else sign * _event_sum(log_s)
            return self._join(cond, out), ld
        _check_event(x, self.mask.shape, name)
        m = _lead(self.mask, x)
        inv = 1.0 - m
        x_cond = x * m
        shift, log_s = self._shift_log_scale(x_cond)
        if sign > 0:
            out = x + shift if log_s is None else x * jnp.exp(log_s) + shift
        else:
            out = x - shift if log_s is None else (x - shift) * jnp.exp(-log_s)
        ld = jnp.zeros(x.shape[:1], x.dtype) if log_s is None else sign * _event_sum(inv * log_s)
        return x_cond + inv * out, ld

    def forward_and_log_det(self, x):
        return self._transform(x, 1.0)

    def inverse_and_log_det(self, y):
        return self._transform(y, -1.0)


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling h_2 = x_2 + m(x_1): volume-preserving (kexue.fm/archives/5776).

    Args:
      conditioner: m, mapping the conditioning part to the shift (full event for a mask, the other half
        for a channel split).
      mask: binary array of the event shape (`checkerboard_mask`, `channel_mask`, `interleaved_mask`), or
      num_channels: even channel count for a channel split (the cheaper form of a channel mask).
      parity: for a split, which half conditions (0: the first).
    """

    affine = False

    def __init__(self, conditioner, *, mask=None, num_channels=None, parity=0):
        super().__init__(conditioner, mask=mask, num_channels=num_channels, parity=parity)


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling h_2 = s(x_1) ⊗ x_2 + t(x_1), log|det| = Σ log s (kexue.fm/archives/5807).

    The conditioner returns [t, raw] on its last axis; log s = scale_fn(raw) is bounded:
    'tanh' (default): log s = bound·tanh(raw/bound), the identity at a zero raw output;
    'sigmoid': s = sigmoid(raw + 2) as in openai/glow (a scale of 0.88 at init, not the identity);
    'exp': log s = raw, the blog's unbounded form.
    Other args as `AdditiveCoupling`.
    """

    affine = True


class NICEScaling(Bijector):
    """NICE's final scale layer z = exp(k) ⊗ h, log|det| = Σ k (kexue.fm/archives/5776).

    Equivalent to a learned prior N(0, diag e^{−2k}) on h; a large k_i marks a near-deterministic
    direction (e.g. always-blank pixels). Su initialises k Glorot-normal; here k = 0 (the identity).
    """

    def __init__(self, event_shape: Sequence[int]):
        self.event_shape = tuple(int(s) for s in event_shape)
        self.log_scale = nnx.Param(jnp.zeros(self.event_shape))

    def forward_and_log_det(self, x):
        _check_event(x, self.event_shape, "x")
        k = _lead(self.log_scale[...], x)
        return x * jnp.exp(k), jnp.broadcast_to(jnp.sum(k), x.shape[:1])

    def inverse_and_log_det(self, y):
        _check_event(y, self.event_shape, "y")
        k = _lead(self.log_scale[...], y)
        return y * jnp.exp(-k), jnp.broadcast_to(-jnp.sum(k), y.shape[:1])


# ----------------------------------------------------------------------------------------------------
# ActNorm and its data-dependent initialisation.

_DATA_INIT_DEPTH = [0]


@contextlib.contextmanager
def data_dependent_init():
    """Inside this context, each `ActNorm.forward_and_log_det` first sets its parameters from its input.

    Functional and jit-safe: it is a trace-time switch, so `with data_dependent_init(): model.forward(x)`
    inside `jax.jit`/`nnx.jit` writes the new parameters into the module's state like any other update
    (the shared trainer's `data_init` hook runs exactly this, see `kexue_jax.flows.train.data_init`).
    """
    _DATA_INIT_DEPTH[0] += 1
    try:
        yield
    finally:
        _DATA_INIT_DEPTH[0] -= 1


class ActNorm(Bijector):
    """Per-channel affine y = (x + bias) ⊗ exp(log_scale), log|det| = (#positions)·Σ log_scale (Glow).

    Starts as the identity (bias = log_scale = 0). Under `data_dependent_init()` the forward pass first sets
    bias = −mean and log_scale = −log(std + 1e-6) over every axis but the channel axis of its input, so its
    output on that batch has zero mean and unit variance per channel. This is what openai/glow does (its
    "ddi" init pass over n_batch_init = 256 examples; it also multiplies the log-scale parameter by
    logscale_factor = 3, omitted here). The blog says the released code zero-initialises actnorm: that
    is true of Su's Keras port (bojone/flow), not of openai/glow (spec generative.md §4.2).
    """

    def __init__(self, num_channels: int):
        self.num_channels = _check_int(num_channels, "num_channels", 1)
        self.bias = nnx.Param(jnp.zeros((self.num_channels,)))
        self.log_scale = nnx.Param(jnp.zeros((self.num_channels,)))

    def _initialize(self, x: jax.Array) -> None:
        flat = x.reshape(-1, self.num_channels)  # [b·positions, c]
        mean = jnp.mean(flat, axis=0)
        std = jnp.std(flat, axis=0)
        self.bias[...] = (-mean).astype(self.bias[...].dtype)
        self.log_scale[...] = (-jnp.log(std + 1e-6)).astype(self.log_scale[...].dtype)

    def _positions(self, x) -> int:
        return int(np.prod(x.shape[1:-1]))

    def forward_and_log_det(self, x):
        _check_channels(x, self.num_channels, "x")
        if _DATA_INIT_DEPTH[0]:
            self._initialize(jax.lax.stop_gradient(x))
        b, s = _lead(self.bias[...], x), _lead(self.log_scale[...], x)
        return (x + b) * jnp.exp(s), jnp.broadcast_to(self._positions(x) * jnp.sum(s), x.shape[:1])

    def inverse_and_log_det(self, y):
        _check_channels(y, self.num_channels, "y")
        b, s = _lead(self.bias[...], y), _lead(self.log_scale[...], y)
        return y * jnp.exp(-s) - b, jnp.broadcast_to(-self._positions(y) * jnp.sum(s), y.shape[:1])


class LearnedPrior(Bijector):
    """Glow's learned top prior N(μ, σ²) per channel, as a bijector ẑ = (z − μ) ⊗ exp(−log σ) onto N(0, I).

    log|det| = −(#positions)·Σ log σ. μ = log σ = 0 at init (openai/glow `--learntop`, whose prior comes
    from a zero-initialised conv of zeros, i.e. one learned mean and log-scale per channel).
    """

    def __init__(self, num_channels: int):
        self.num_channels = _check_int(num_channels, "num_channels", 1)
        self.mean = nnx.Param(jnp.zeros((self.num_channels,)))
        self.log_sigma = nnx.Param(jnp.zeros((self.num_channels,)))

    def forward_and_log_det(self, x):
        _check_channels(x, self.num_channels, "x")
        mu, ls = _lead(self.mean[...], x), _lead(self.log_sigma[...], x)
        positions = int(np.prod(x.shape[1:-1]))
        return (x - mu) * jnp.exp(-ls), jnp.broadcast_to(-positions * jnp.sum(ls), x.shape[:1])

    def inverse_and_log_det(self, y):
        _check_channels(y, self.num_channels, "y")
        mu, ls = _lead(self.mean[...], y), _lead(self.log_sigma[...], y)
        positions = int(np.prod(y.shape[1:-1]))
        return y * jnp.exp(ls) + mu, jnp.broadcast_to(positions * jnp.sum(ls), y.shape[:1])


class InvertibleConv1x1(Bijector):
    """Glow's invertible 1×1 convolution y = W x at every pixel, log|det| = h·w·log|det W|.

    `lu=True` (default; the stable choice recommended in openai/glow#40): W = P·L·(U + diag(sign(s)·exp(log|s|)))
    with P and sign(s) fixed, L unit-lower-triangular and U strictly upper-triangular trained, so
    log|det W| = Σ log|s| and W stays invertible for any parameter values. `lu=False`: W is trained
    directly and log|det W| comes from slogdet. Both start from the same random rotation (log-det 0).
    """

    def __init__(self, num_channels: int, *, lu: bool = True, rngs: nnx.Rngs):
        c = self.num_channels = _check_int(num_channels, "num_channels", 1)
        self.lu = bool(lu)
        q, _ = jnp.linalg.qr(jax.random.normal(rngs.params(), (c, c)))
        if not self.lu:
            self.w = nnx.Param(q)
            return
        p, lower, upper = jax.scipy.linalg.lu(q)  # q = p @ lower @ upper
        s = jnp.diag(upper)
        self.p = Buffer(p)
        self.sign_s = Buffer(jnp.sign(s))
        self.lower = nnx.Param(jnp.tril(lower, -1))
        self.upper = nnx.Param(jnp.triu(upper, 1))
        self.log_s = nnx.Param(jnp.log(jnp.abs(s)))

    def _lu_factors(self):
        c = self.num_channels
        eye = jnp.eye(c, dtype=self.lower[...].dtype)
        lower = jnp.tril(self.lower[...], -1) + eye
        upper = jnp.triu(self.upper[...], 1) + jnp.diag(self.sign_s[...] * jnp.exp(self.log_s[...]))
        return self.p[...], lower, upper

    def weight(self) -> jax.Array:
        """W [c_out, c_in]."""
        if not self.lu:
            return self.w[...]
        p, lower, upper = self._lu_factors()
        return p @ lower @ upper

    def _log_abs_det(self):
        if not self.lu:
            return jnp.linalg.slogdet(self.w[...])[1]
        return jnp.sum(self.log_s[...])

    def _inverse_weight(self):
        if not self.lu:
            return jnp.linalg.inv(self.w[...])
        p, lower, upper = self._lu_factors()
        # W⁻¹ = U⁻¹ L⁻¹ Pᵀ by two triangular solves
        l_inv_pt = jax.scipy.linalg.solve_triangular(lower, p.T, lower=True, unit_diagonal=True)
        return jax.scipy.linalg.solve_triangular(upper, l_inv_pt, lower=False)

    def forward_and_log_det(self, x):
        _check_channels(x, self.num_channels, "x")
        w = self.weight().astype(x.dtype)
        positions = int(np.prod(x.shape[1:-1]))
        y = jnp.einsum("...c,dc->...d", x, w)  # [b, h, w, c] -> [b, h, w, c]
        return y, jnp.broadcast_to(positions * self._log_abs_det().astype(x.dtype), x.shape[:1])

    def inverse_and_log_det(self, y):
        _check_channels(y, self.num_channels, "y")
        w_inv = self._inverse_weight().astype(y.dtype)
        positions = int(np.prod(y.shape[1:-1]))
        x = jnp.einsum("...c,dc->...d", y, w_inv)
        return x, jnp.broadcast_to(-positions * self._log_abs_det().astype(y.dtype), y.shape[:1])


class FactorOut(Bijector):
    """Multi-scale split: keep half the channels for `inner`, factor the other half out to the latent.

    x [b, h, w, c] -> (x_keep [.., c//2], x_out [.., c − c//2]). The factored-out half has the learned
    conditional prior N(μ(x_keep), σ(x_keep)²) of the Glow/RealNVP code (kexue.fm/archives/5807:
    p(z₁|z₂); Su's `CondActnorm`), written as the conditional actnorm ẑ = (x_out − μ)/σ onto N(0, I) with
    log|det| = −Σ log σ; μ and log σ come from a zero-initialised conv3×3 of x_keep, so the prior starts
    standard normal. `conditional=False` uses N(0, I) directly (the RealNVP paper).

    `inner` must map x_keep to a flat [b, h·w·(c//2)] latent (end it with `Flatten`); the output is
    concat(inner latent, flattened ẑ) [b, h·w·c].
    """

    def __init__(self, event_shape: Sequence[int], inner: Bijector, *, conditional: bool = True, rngs: nnx.Rngs):
        shape = tuple(event_shape)
        if len(shape) != 3 or shape[2] < 2:
            raise ValueError(f"`event_shape` must be (height, width, channels) with channels >= 2 to factor out "
                             f"half; got {shape}")
        self.event_shape = tuple(int(s) for s in shape)
        h, w, c = self.event_shape
        self.keep = c // 2
        self.num_keep = h * w * self.keep
        self.inner = inner
        self.conditional = bool(conditional)
        # zero-initialised: μ = 0, log σ = 0 -- the split prior starts as N(0, I)
        self.prior_net = nnx.Conv(self.keep, 2 * (c - self.keep), kernel_size=(3, 3), padding="SAME",
                                  kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros,
                                  rngs=rngs) if self.conditional else None

    def _prior(self, x_keep):
        if self.prior_net is None:
            return None, None
        h = self.prior_net(x_keep)
        k = h.shape[-1] // 2
        return h[..., :k], h[..., k:]

    def forward_and_log_det(self, x):
        _check_event(x, self.event_shape, "x")
        x_keep, x_out = x[..., :self.keep], x[..., self.keep:]
        mu, log_sigma = self._prior(x_keep)
        if mu is None:
            z_out, ld = x_out, jnp.zeros(x.shape[:1], x.dtype)
        else:
            z_out, ld = (x_out - mu) * jnp.exp(-log_sigma), -_event_sum(log_sigma)
        z_keep, ld_inner = self.inner.forward_and_log_det(x_keep)
        if z_keep.shape != (x.shape[0], self.num_keep):
            raise ValueError(f"`inner` must map the kept half to a flat latent [b, {self.num_keep}]; got shape "
                             f"{z_keep.shape}")
        return jnp.concatenate([z_keep, z_out.reshape(x.shape[0], -1)], axis=1), ld + ld_inner

    def inverse_and_log_det(self, y):
        h, w, c = self.event_shape
        _check_event(y, (h * w * c,), "y")
        x_keep, ld_inner = self.inner.inverse_and_log_det(y[:, :self.num_keep])
        z_out = y[:, self.num_keep:].reshape(y.shape[0], h, w, c - self.keep)
        mu, log_sigma = self._prior(x_keep)
        if mu is None:
            x_out, ld = z_out, jnp.zeros(y.shape[:1], y.dtype)
        else:
            x_out, ld = z_out * jnp.exp(log_sigma) + mu, _event_sum(log_sigma)
        return jnp.concatenate([x_keep, x_out], axis=-1), ld + ld_inner


# ----------------------------------------------------------------------------------------------------
# Models.


class FlowModel(Bijector):
    """A flow from data x [b, *event_shape] to a flat latent z [b, D] with base density N(0, I).

    Subclasses set `event_shape`, `levels` (grey levels of the data it models, used by the data-dependent
    init) and `flow` (or override `_forward`/`_inverse`).
    """

    event_shape: tuple[int, ...]
    levels: int

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.event_shape))

    def _forward(self, x):
        return self.flow.forward_and_log_det(x)

    def _inverse(self, z):
        return self.flow.inverse_and_log_det(z)

    def forward_and_log_det(self, x):
        _check_event(x, self.event_shape, "x")
        return self._forward(x)

    def inverse_and_log_det(self, z):
        _check_event(z, (self.num_dims,), "z")
        return self._inverse(z)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|, [b] in nats."""
        z, log_det = self.forward_and_log_det(x)
        return standard_normal_log_prob(z) + log_det

    def sample(self, n: int, *, key: jax.Array, temperature: float = 1.0) -> jax.Array:
        """n samples x = f⁻¹(T·ε), ε ~ N(0, I): temperature T < 1 shrinks every (conditional) prior's
        standard deviation, trading diversity for cleaner samples (Glow; Su uses T = 0.75-0.9)."""
        _check_int(n, "n", 1)
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"`temperature` must be a number > 0; got {temperature!r}")
        eps = jax.random.normal(key, (n, self.num_dims))
        return self.inverse_and_log_det(temperature * eps)[0]
