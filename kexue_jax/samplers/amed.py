"""AMED: the approximate-mean-direction solver (AMED-Solver), AFS, its predictor, distillation, and the plugin.

Article (t ≡ σ, v = (x − D)/σ, sampling from t_{n+1} down to t_n): the integral mean value theorem suggests
x_{t_n} ≈ x_{t_{n+1}} − v(x_{s_n}, s_n)(t_{n+1} − t_n) with s_n ∈ (t_n, t_{n+1}) predicted by a tiny network
g_φ(h_{t_{n+1}}, t_{n+1}) from the U-Net's intermediate features, x_{s_n} from an Euler step. As in the
official code (zju-pi/diff-sampler, `amed_sampler`), one step from σ_cur to σ_next is

    s = σ_next^r · σ_cur^{1−r}                    (geometric interpolation, r ∈ (0, 1) from a sigmoid)
    x̃ = x + (s − σ_cur)·d_cur,  d_cur = (x − D(x, σ_cur))/σ_cur  (or x/√(1 + σ_cur²) with AFS)
    x' = x + c·(σ_next − σ_cur)·(x̃ − D(x̃, a·s))/s,

with the direction scale c ∈ [1 − δ, 1 + δ] (δ = scale_dir) and time scale a ∈ [1 − δ', 1 + δ'] (δ' =
scale_time). r = 0 is an Euler step; r = ½, c = a = 1 the geometric midpoint (DPM-Solver-2). 2 NFE per step,
AFS saves one: N steps cost 2N − [afs] (+1 for `denoise_to_zero`).

The predictor (official `AMED_predictor`): pooled bottleneck features h [b, f] → Linear(f, 128) → SiLU →
Linear(128, 4); σ_cur and σ_next → 8-channel positional embedding (sin/cos swapped) → shared Linear(8, 8)
(Xavier-uniform) → SiLU; concat (4 + 16) → sigmoid heads for r, c, a. Features are zeros on an AFS step. It
is trained by distillation: the teacher is Heun on the student grid with M points inserted per interval; each
student step starts from the teacher point and regresses the next teacher point (Adam, lr 5e-3).

AMED-Plugin (iPNDM): the learned s is inserted as an extra time into iPNDM's grid, the d history runs through
both sub-steps, and the second sub-step is scaled by c.

References:
    https://kexue.fm/archives/9881 (生成扩散模型漫谈（二十一）：中值定理加速ODE采样)
    Zhou, Chen, Wang & Chen 2023, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps" (AMED,
    arXiv 2312.00094, CVPR 2024); Dockhorn et al. 2022 (GENIE) for AFS; Karras et al. 2022 (EDM).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kexue_jax.samplers.common import (afs_direction, bcast, check_callable, check_choice, check_int,
                                       counts_nfe, refine_sigmas, scan_steps, validate_sigmas, validate_x)
from kexue_jax.samplers.ipndm import ipndm_weights

__all__ = ["ORDER", "amed_step", "afs_direction", "AMEDPredictor", "sample_amed", "sample_amed_plugin",
           "amed_teacher_trajectory", "amed_distillation_loss", "train_amed_predictor"]

# With r = ½, c = a = 1 the step is the geometric-midpoint rule, second order; a learned r trades the
# asymptotic order for accuracy at a fixed small NFE.
ORDER = 2


def amed_step(denoise_fn, x: jax.Array, sigma_cur, sigma_next, d_cur: jax.Array, r, scale_dir=1.0,
              scale_time=1.0) -> jax.Array:
    """One AMED step (formula in the module docstring).

    Args:
        denoise_fn: D(x, σ) with σ scalar or [b]. x, d_cur: [b, ...]. sigma_cur > sigma_next > 0 scalars.
        r, scale_dir, scale_time: scalars or [b] (one per row).
    Returns:
        [b, ...] the state at sigma_next.
    """
    dt = x.dtype
    r, c, a = (jnp.asarray(v, dt) for v in (r, scale_dir, scale_time))
    s_mid = jnp.asarray(sigma_next, dt) ** r * jnp.asarray(sigma_cur, dt) ** (1 - r)  # scalar or [b]
    sm = bcast(s_mid, x) if s_mid.ndim else s_mid
    x_mid = x + (sm - sigma_cur) * d_cur
    d_mid = (x_mid - denoise_fn(x_mid, a * s_mid)) / sm
    cc = bcast(c, x) if c.ndim else c
    return x + cc * (sigma_next - sigma_cur) * d_mid


# ---------------------------------------------------------------------------------------------- predictor
def _positional_embedding(sigma: jax.Array, channels: int) -> jax.Array:
    """[channels]: (sin, cos) of σ·(1/10000)^{i/(channels/2 − 1)} (official PositionalEmbedding with endpoint,
    then sin/cos swapped)."""
    half = channels // 2
    freqs = (1.0 / 10000) ** (jnp.arange(half, dtype=jnp.float32) / (half - 1))
    arg = jnp.asarray(sigma, jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


class AMEDPredictor(nnx.Module):
    """g_φ(h, σ_cur, σ_next) -> (r, c, a), each [b]; owns the parameters, the maths is in `amed_step`.

    Args:
        feature_dim: f, the width of the pooled bottleneck features (0: time embeddings only).
        hidden: 128 (official). bottleneck_out: 4. noise_channels: 8 (even, >= 4).
        scale_dir: δ >= 0 (0 disables the c head; official 0.01 for AMED-Solver). scale_time: δ' >= 0.
    """

    def __init__(self, feature_dim: int, *, hidden: int = 128, bottleneck_out: int = 4,
                 noise_channels: int = 8, scale_dir: float = 0.01, scale_time: float = 0.0, rngs: nnx.Rngs):
        check_int("feature_dim", feature_dim, 0, 1 << 20)
        check_int("hidden", hidden, 1, 1 << 20)
        check_int("bottleneck_out", bottleneck_out, 1, 1 << 20)
        if isinstance(noise_channels, bool) or not isinstance(noise_channels, int) or noise_channels < 4 \
                or noise_channels % 2:
            raise ValueError(f"`noise_channels` must be an even integer >= 4; got {noise_channels!r}")
        for name, v in (("scale_dir", scale_dir), ("scale_time", scale_time)):
            if not (np.isfinite(v) and 0 <= v < 1):
                raise ValueError(f"`{name}` must be in [0, 1); got {v!r}")
        self.feature_dim, self.noise_channels = feature_dim, noise_channels
        self.scale_dir, self.scale_time = float(scale_dir), float(scale_time)
        self.map_layer0 = nnx.Linear(noise_channels, noise_channels,
                                     kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)
        width = 2 * noise_channels
        if feature_dim:
            self.enc_layer0 = nnx.Linear(feature_dim, hidden, rngs=rngs)
            self.enc_layer1 = nnx.Linear(hidden, bottleneck_out, rngs=rngs)
            width += bottleneck_out
        self.fc_r = nnx.Linear(width, 1, rngs=rngs)
        self.fc_scale_dir = nnx.Linear(width, 1, rngs=rngs) if scale_dir else None
        self.fc_scale_time = nnx.Linear(width, 1, rngs=rngs) if scale_time else None

    def __call__(self, features: jax.Array, sigma_cur, sigma_next):
        b = features.shape[0]
        emb = jnp.concatenate([
            jax.nn.silu(self.map_layer0(_positional_embedding(sigma_cur, self.noise_channels))),
            jax.nn.silu(self.map_layer0(_positional_embedding(sigma_next, self.noise_channels)))])  # [2·nc]
        out = jnp.broadcast_to(emb, (b, emb.shape[0]))
        if self.feature_dim:
            h = self.enc_layer1(jax.nn.silu(self.enc_layer0(features.reshape(b, -1).astype(jnp.float32))))
            out = jnp.concatenate([h, out], axis=-1)  # [b, 4 + 2·nc]
        r = jax.nn.sigmoid(self.fc_r(out))[:, 0]
        one = jnp.ones_like(r)
        c = (jax.nn.sigmoid(self.fc_scale_dir(out))[:, 0] * 2 * self.scale_dir + 1 - self.scale_dir
             if self.fc_scale_dir is not None else one)
        a = (jax.nn.sigmoid(self.fc_scale_time(out))[:, 0] * 2 * self.scale_time + 1 - self.scale_time
             if self.fc_scale_time is not None else one)
        return r, c, a


# ------------------------------------------------------------------------------------------------ samplers
def _split_denoiser(denoise_fn, has_aux, x, sigma0, feature_dim):
    """Returns (den(x, σ) -> (D, h [b, f]), plain(x, σ) -> D, f)."""
    if has_aux:
        shapes = jax.eval_shape(denoise_fn, x, sigma0)
        if not (isinstance(shapes, tuple) and len(shapes) == 2 and len(shapes[1].shape) == 2):
            raise ValueError("`denoise_fn` must return (x0 [b, ...], features [b, f]) when has_aux=True; got "
                             f"{jax.tree_util.tree_map(lambda s: s.shape, shapes)}")
        return denoise_fn, (lambda y, s: denoise_fn(y, s)[0]), shapes[1].shape[1]
    f = feature_dim

    def den(y, s):
        return denoise_fn(y, s), jnp.zeros((y.shape[0], f), y.dtype)
    return den, denoise_fn, f


def _check_predictor(predictor):
    if isinstance(predictor, (tuple, list)):
        return
    check_callable("predictor", predictor)


def _as_callable(predictor):
    """A predictor is g(h, σ_cur, σ_next) -> (r, c, a) or a fixed (r, c, a) tuple of per-step arrays [N]."""
    if isinstance(predictor, (tuple, list)):
        r, c, a = (jnp.asarray(v) for v in predictor)
        return lambda h, sc, sn, i: tuple(jnp.broadcast_to(v[i], h.shape[:1]) for v in (r, c, a))
    return lambda h, sc, sn, i: predictor(h, sc, sn)


def _nfe_amed(sigmas, *, afs=True, denoise_to_zero=False, **_):
    return 2 * (len(sigmas) - 1) - int(bool(afs)) + int(bool(denoise_to_zero))


def _direction_and_features(den, x, sc, first_afs):
    """The ODE direction d = (x − D(x, σ))/σ and the denoiser's bottleneck features h at σ = sc.

    With AFS on the first interval no evaluation is spent: d is the analytical first step and the
    predictor sees zero features, as in the official code.
    """
    if first_afs:
        return afs_direction(x, sc), jnp.zeros(jax.eval_shape(den, x, sc)[1].shape, x.dtype)
    d_raw, h = den(x, sc)
    return (x - d_raw) / sc, h


def _amed_interval(den, g, x, sc, sn, i, first_afs):
    """One AMED-Solver interval; returns (x_next, (r, c, a))."""
    d, h = _direction_and_features(den, x, sc, first_afs)
    r, c, a = g(h, sc, sn, i)
    plain = lambda y, s: den(y, s)[0]  # noqa: E731
    return amed_step(plain, x, sc, sn, d, r, c, a), (r, c, a)


@counts_nfe(_nfe_amed)
def sample_amed(denoise_fn, x_T: jax.Array, sigmas, *, key=None, predictor, afs: bool = True,
                has_aux: bool = False, denoise_to_zero: bool = False) -> jax.Array:
    """AMED-Solver sampling.

    Args:
        denoise_fn: D(x [b, ...], σ scalar or [b]) -> x0 [b, ...], or (x0, features [b, f]) with has_aux=True
            (the pooled bottleneck activations the predictor reads).
        x_T: [b, ...] at sigmas[0]. sigmas: [N+1] decreasing and positive (the geometric intermediate time of
            an interval ending at 0 would be 0; use denoise_to_zero for a final D(x, σ_N)).
        key: unused. predictor: an `AMEDPredictor` (or any g(h, σ_cur, σ_next) -> (r, c, a)), or a tuple
            (r, c, a) of per-step arrays [N] (an oracle or a fixed setting).
        afs: analytical first step. has_aux: see denoise_fn. denoise_to_zero: finish with x = D(x, σ_N).
    Returns:
        [b, ...]. NFE = 2N − [afs] + [denoise_to_zero].
    """
    del key
    s = validate_sigmas(sigmas, allow_zero_end=False)
    x = validate_x(x_T)
    _check_predictor(predictor)
    dt = x.dtype
    sig = jnp.asarray(s, dt)
    den, plain, _ = _split_denoiser(denoise_fn, has_aux, x, sig[0], _feature_dim(predictor))
    g = _as_callable(predictor)

    def step(x, i, first_afs, last):
        del last
        return _amed_interval(den, g, x, sig[i], sig[i + 1], i, first_afs)[0]

    x = scan_steps(step, x, len(s) - 1, peel_first=bool(afs))
    return plain(x, sig[-1]) if denoise_to_zero else x


def _feature_dim(predictor):
    return int(getattr(predictor, "feature_dim", 0))


def _nfe_plugin(sigmas, *, afs=False, denoise_to_zero=False, **_):
    return _nfe_amed(sigmas, afs=afs, denoise_to_zero=denoise_to_zero)


def _plugin_interval(den, g, x, buf, sc, sn, i, w1, w2, first_afs):
    """One AMED-Plugin interval on iPNDM; buf [3, ...] holds d_{k−1}, d_{k−2}, d_{k−3}."""
    d, h = _direction_and_features(den, x, sc, first_afs)
    r, c, a = g(h, sc, sn, i)
    s_mid = sn ** r * sc ** (1 - r)  # [b]
    sm = bcast(s_mid, x)
    hist = jnp.concatenate([d[None], buf], axis=0)  # [4, ...]
    x_mid = x + (sm - sc) * jnp.tensordot(w1, hist, axes=1)
    buf = hist[:3]
    d_mid = (x_mid - den(x_mid, a * s_mid)[0]) / sm
    hist = jnp.concatenate([d_mid[None], buf], axis=0)
    x_next = x_mid + bcast(c, x) * (sn - sm) * jnp.tensordot(w2, hist, axes=1)
    return x_next, hist[:3], (r, c, a)


@counts_nfe(_nfe_plugin)
def sample_amed_plugin(denoise_fn, x_T: jax.Array, sigmas, *, key=None, predictor, base: str = "ipndm",
                       max_order: int = 4, afs: bool = False, has_aux: bool = False,
                       denoise_to_zero: bool = False) -> jax.Array:
    """AMED-Plugin: the learned intermediate time of each interval inserted into iPNDM.

    Interval i runs iPNDM sub-steps σ_i → s_i → σ_{i+1} (sub-step k = 2i, 2i+1 uses order min(max_order,
    k + 1)), the second scaled by c and its denoiser evaluated at a·s_i. With r = ½, c = a = 1 this equals
    `sample_ipndm` on the grid with geometric midpoints inserted (tested).

    Args: as `sample_amed`; base: 'ipndm' (the CIFAR-10 AMED-Plugin of the paper); max_order: 1..4.
    Returns:
        [b, ...]. NFE = 2N − [afs] + [denoise_to_zero].
    """
    del key
    check_choice("base", base, ("ipndm",))
    max_order = check_int("max_order", max_order, 1, 4)
    s = validate_sigmas(sigmas, allow_zero_end=False)
    x = validate_x(x_T)
    _check_predictor(predictor)
    dt = x.dtype
    n = len(s) - 1
    sig = jnp.asarray(s, dt)
    w1 = jnp.asarray(np.stack([ipndm_weights(2 * i, max_order) for i in range(n)]), dt)
    w2 = jnp.asarray(np.stack([ipndm_weights(2 * i + 1, max_order) for i in range(n)]), dt)
    den, plain, _ = _split_denoiser(denoise_fn, has_aux, x, sig[0], _feature_dim(predictor))
    g = _as_callable(predictor)

    def step(carry, i, first_afs, last):
        del last
        x, buf = carry
        x, buf, _ = _plugin_interval(den, g, x, buf, sig[i], sig[i + 1], i, w1[i], w2[i], first_afs)
        return x, buf

    x, _ = scan_steps(step, (x, jnp.zeros((3,) + x.shape, dt)), n, peel_first=bool(afs))
    return plain(x, sig[-1]) if denoise_to_zero else x


# ------------------------------------------------------------------------------------------- distillation
def amed_teacher_trajectory(denoise_fn, x_T: jax.Array, sigmas, *, inserted: int = 1, rho: float | None = 7.0,
                            has_aux: bool = False) -> jax.Array:
    """Heun (no AFS) on `sigmas` refined with M = `inserted` points per interval; states at the student σ's.

    Returns: [N+1, b, ...], element i the teacher state at sigmas[i] (element 0 is x_T).
    """
    s = validate_sigmas(sigmas, allow_zero_end=False)
    x = validate_x(x_T)
    fine = refine_sigmas(s, inserted, rho)
    dt = x.dtype
    plain = (lambda y, t: denoise_fn(y, t)[0]) if has_aux else denoise_fn
    pairs = jnp.asarray(np.stack([fine[:-1], fine[1:]], axis=1), dt)  # [N_fine, 2]

    def body(x, p):
        sc, sn = p[0], p[1]
        d = (x - plain(x, sc)) / sc
        xp = x + (sn - sc) * d
        x = x + (sn - sc) * 0.5 * (d + (xp - plain(xp, sn)) / sn)
        return x, x

    _, traj = jax.lax.scan(body, x, pairs)
    return jnp.concatenate([x[None], traj[inserted::inserted + 1]], axis=0)


def amed_distillation_loss(predictor, denoise_fn, x_cur: jax.Array, x_target: jax.Array, sigma_cur, sigma_next,
                           *, first_afs: bool = False, has_aux: bool = False, step: int = 0):
    """Squared error of one AMED-Solver step from the teacher point x_cur to the next teacher point.

    Returns: (scalar mean over rows of Σ_dims (x' − x_target)², (r, c, a) each [b]).
    """
    den, _, _ = _split_denoiser(denoise_fn, has_aux, x_cur, sigma_cur, _feature_dim(predictor))
    out, rca = _amed_interval(den, _as_callable(predictor), x_cur, sigma_cur, sigma_next, step, first_afs)
    err = (out - x_target).reshape(x_cur.shape[0], -1)
    return jnp.mean(jnp.sum(err ** 2, axis=-1)), rca


def train_amed_predictor(predictor: AMEDPredictor, denoise_fn, sigmas, sample_x_T: Callable, *, key,
                         num_batches: int, inserted: int = 1, rho: float | None = 7.0,
                         learning_rate: float = 5e-3, afs: bool = True, has_aux: bool = False,
                         student: str = "amed", max_order: int = 4):
    """Distils `predictor` as the official `AMED_loss` / training loop does.

    For each batch x_T = sample_x_T(key_b): the Heun teacher trajectory on the refined grid; then for each
    student interval i: one student step from the teacher point at σ_i (AMED-Solver) — or, for the iPNDM
    plugin, from the teacher point with the student's own d history — its squared error to the teacher point
    at σ_{i+1}, and one Adam(lr, β = (0.9, 0.999)) step.

    Returns:
        (trained predictor, losses float [num_batches, N]).
    """
    s = validate_sigmas(sigmas, allow_zero_end=False)
    check_callable("sample_x_T", sample_x_T)
    check_choice("student", student, ("amed", "ipndm"))
    num_batches = check_int("num_batches", num_batches, 1, 1 << 30)
    max_order = check_int("max_order", max_order, 1, 4)
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"`learning_rate` must be a positive number; got {learning_rate!r}")
    n = len(s) - 1
    graphdef, params = nnx.split(predictor, nnx.Param)
    opt = optax.adam(learning_rate, b1=0.9, b2=0.999)
    opt_state = opt.init(params)
    w1 = np.stack([ipndm_weights(2 * i, max_order) for i in range(n)])
    w2 = np.stack([ipndm_weights(2 * i + 1, max_order) for i in range(n)])

    def interval_loss(params, x, buf, target, i):
        model = nnx.merge(graphdef, params)
        den, _, _ = _split_denoiser(denoise_fn, has_aux, x, s[i], model.feature_dim)
        g = _as_callable(model)
        first = bool(afs) and i == 0
        if student == "amed":
            out, _ = _amed_interval(den, g, x, s[i], s[i + 1], i, first)
            new_buf = buf
        else:
            out, new_buf, _ = _plugin_interval(den, g, x, buf, jnp.asarray(s[i], x.dtype),
                                               jnp.asarray(s[i + 1], x.dtype), i,
                                               jnp.asarray(w1[i], x.dtype), jnp.asarray(w2[i], x.dtype), first)
        err = (out - target).reshape(x.shape[0], -1)
        return jnp.mean(jnp.sum(err ** 2, axis=-1)), jax.lax.stop_gradient(new_buf)

    def batch_update(params, opt_state, k):
        x_T = sample_x_T(k)
        teacher = jax.lax.stop_gradient(amed_teacher_trajectory(
            denoise_fn, x_T, s, inserted=inserted, rho=rho, has_aux=has_aux))
        buf = jnp.zeros((3,) + x_T.shape, x_T.dtype)
        losses = []
        for i in range(n):  # N is small (3-5); each interval has its own static AFS flag and weights
            (loss, buf), grads = jax.value_and_grad(interval_loss, has_aux=True)(params, teacher[i], buf,
                                                                                 teacher[i + 1], i)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            losses.append(loss)
        return params, opt_state, jnp.stack(losses)

    @jax.jit
    def run(params, opt_state):
        # One compiled scan over all batches: no per-batch dispatch.
        def body(carry, b):
            params, opt_state, losses = batch_update(*carry, jax.random.fold_in(key, b))
            return (params, opt_state), losses
        return jax.lax.scan(body, (params, opt_state), jnp.arange(num_batches))

    (params, _), history = run(params, opt_state)
    return nnx.merge(graphdef, params), history
