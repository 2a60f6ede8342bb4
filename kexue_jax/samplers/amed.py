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
is trained by distillation: the teacher is Heun (or iPNDM, the official CIFAR-10 plugin setting) on the student
grid with M points inserted per interval; each student step regresses the next teacher point (Adam, lr 5e-3),
starting from the teacher point for AMED-Solver and from the student's own previous output for a multistep
plugin (as the official training loop).

AMED-Plugin (official `ipndm_sampler` / `dpm_pp_sampler` with a predictor): the learned s is inserted as an
extra time into the base solver's grid, the history runs through both sub-steps, the denoiser of the second
sub-step is evaluated at a·s, and c scales that sub-step's model part. Bases:
  'ipndm'          x_next = x_mid + c·(σ_next − s)·Σ_k w_k d_{j−k} (Adams–Bashforth weights, d history);
  'dpm_solver_pp'  multistep DPM-Solver++ in λ = −log σ with the D history and its λ's per row (s differs per
                   row), x_next = e^{−h}·x_mid + c·Σ_k w_k(h, h₀, h₁) D_{j−k}; the weights are Lu et al.'s 2M/3M
                   rewritten without a division by h (ψ₁ = 1 − e^{−h}, ψ₂ = e^{−h} − 1 + h, ψ₃ = ψ₂ − h²/2):
                     order 2: ψ₁D_j + ½ψ₁(h/h₀)(D_j − D_{j−1}),
                     order 3: ψ₁D_j + ψ₂·[(1 + k)u − kv] − ψ₃·(u − v)/(h₀ + h₁),
                   u = (D_j − D_{j−1})/h₀, v = (D_{j−1} − D_{j−2})/h₁, k = h₀/(h₀ + h₁) (the same numbers as
                   `dpm_solver_pp_coefficients`; tested equal on the refined grid).
The 2N sub-steps use the base sampler's order rule on the refined grid (warm start; for DPM-Solver++,
`dpm_solver_pp_orders` with lower_order_final; the official code lowers the final order for any N, ours, like
`sample_dpm_solver_pp`, only when the refined grid has fewer than 10 steps).

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

from kexue_jax.samplers.common import (afs_direction, bcast, check_afs_mean, check_callable, check_choice,
                                       check_int, counts_nfe, refine_sigmas, run_linear_multistep, scan_steps,
                                       validate_sigmas, validate_x)
from kexue_jax.samplers.dpm_solver import dpm_solver_pp_orders
from kexue_jax.samplers.ipndm import ipndm_coefficients, ipndm_weights

__all__ = ["ORDER", "amed_step", "afs_direction", "AMEDPredictor", "sample_amed", "sample_amed_plugin",
           "amed_teacher_trajectory", "amed_distillation_loss", "train_amed_predictor", "PLUGIN_BASES",
           "STUDENTS", "TEACHERS", "OBJECTIVES"]

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


def _direction_and_features(den, x, sc, first_afs, afs_mean=None):
    """The ODE direction d = (x − D(x, σ))/σ and the denoiser's bottleneck features h at σ = sc.

    With AFS on the first interval no evaluation is spent: d is the analytical first step and the
    predictor sees zero features, as in the official code (afs_mean: see `afs_direction`).
    """
    if first_afs:
        return afs_direction(x, sc, afs_mean), jnp.zeros(jax.eval_shape(den, x, sc)[1].shape, x.dtype)
    d_raw, h = den(x, sc)
    return (x - d_raw) / sc, h


def _amed_interval(den, g, x, sc, sn, i, first_afs, afs_mean=None):
    """One AMED-Solver interval; returns (x_next, (r, c, a))."""
    d, h = _direction_and_features(den, x, sc, first_afs, afs_mean)
    r, c, a = g(h, sc, sn, i)
    plain = lambda y, s: den(y, s)[0]  # noqa: E731
    return amed_step(plain, x, sc, sn, d, r, c, a), (r, c, a)


@counts_nfe(_nfe_amed)
def sample_amed(denoise_fn, x_T: jax.Array, sigmas, *, key=None, predictor, afs: bool = True,
                has_aux: bool = False, denoise_to_zero: bool = False, afs_mean=None) -> jax.Array:
    """AMED-Solver sampling.

    Args:
        denoise_fn: D(x [b, ...], σ scalar or [b]) -> x0 [b, ...], or (x0, features [b, f]) with has_aux=True
            (the pooled bottleneck activations the predictor reads).
        x_T: [b, ...] at sigmas[0]. sigmas: [N+1] decreasing and positive (the geometric intermediate time of
            an interval ending at 0 would be 0; use denoise_to_zero for a final D(x, σ_N)).
        key: unused. predictor: an `AMEDPredictor` (or any g(h, σ_cur, σ_next) -> (r, c, a)), or a tuple
            (r, c, a) of per-step arrays [N] (an oracle or a fixed setting).
        afs: analytical first step. has_aux: see denoise_fn. denoise_to_zero: finish with x = D(x, σ_N).
        afs_mean: data mean for the analytical first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = 2N − [afs] + [denoise_to_zero].
    """
    del key
    s = validate_sigmas(sigmas, allow_zero_end=False)
    x = validate_x(x_T)
    _check_predictor(predictor)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    dt = x.dtype
    sig = jnp.asarray(s, dt)
    den, plain, _ = _split_denoiser(denoise_fn, has_aux, x, sig[0], _feature_dim(predictor))
    g = _as_callable(predictor)

    def step(x, i, first_afs, last):
        del last
        return _amed_interval(den, g, x, sig[i], sig[i + 1], i, first_afs, mean)[0]

    x = scan_steps(step, x, len(s) - 1, peel_first=bool(afs))
    return plain(x, sig[-1]) if denoise_to_zero else x


def _feature_dim(predictor):
    return int(getattr(predictor, "feature_dim", 0))


def _nfe_plugin(sigmas, *, afs=False, denoise_to_zero=False, **_):
    return _nfe_amed(sigmas, afs=afs, denoise_to_zero=denoise_to_zero)


PLUGIN_BASES = ("ipndm", "dpm_solver_pp")
_MAX_ORDER = {"ipndm": 4, "dpm_solver_pp": 3}  # default and largest max_order of each base


def _check_max_order(base: str, max_order) -> int:
    top = _MAX_ORDER[base]
    return top if max_order is None else check_int("max_order", max_order, 1, top)


def _plugin_coefficients(base: str, n: int, max_order: int, lower_order_final: bool):
    """Static per-interval coefficients for N intervals (2N sub-steps), float64/int NumPy, indexed [i].

    ipndm: (w1 [N, 4], w2 [N, 4]) Adams–Bashforth weights of sub-steps 2i and 2i+1.
    dpm_solver_pp: (p1 [N], p2 [N]) the orders of sub-steps 2i and 2i+1 (`dpm_solver_pp_orders` on 2N steps).
    """
    if base == "ipndm":
        return (np.stack([ipndm_weights(2 * i, max_order) for i in range(n)]),
                np.stack([ipndm_weights(2 * i + 1, max_order) for i in range(n)]))
    p = dpm_solver_pp_orders(np.arange(2 * n + 1, 0, -1.0), max_order, lower_order_final)  # only 2N matters
    return p[0::2].astype(np.int32), p[1::2].astype(np.int32)


def _plugin_history(base: str, x: jax.Array):
    """The empty history: iPNDM d_{j−1..j−3} [3, b, ...]; DPM-Solver++ (D_{j−1}, D_{j−2}) [2, b, ...] and
    their λ = −log σ [2, b] (per row: the inserted times differ between rows)."""
    if base == "ipndm":
        return jnp.zeros((3,) + x.shape, x.dtype)
    return jnp.zeros((2,) + x.shape, x.dtype), jnp.zeros((2, x.shape[0]), x.dtype)


def _dpmpp_weights(lam: jax.Array, lam_next: jax.Array, p):
    """DPM-Solver++ (data form) step from λ_j = lam[0] to lam_next with history λ_{j−1}, λ_{j−2} = lam[1:].

    Returns (e^{−h} [b], w [3, b]) with x' = e^{−h}·x + Σ_k w_k D_{j−k}; p (1, 2 or 3, may be traced) picks
    the order. No division by h, so an inserted time that coincides with a grid point stays finite; the
    unused history of a warm-start step is replaced by 1 in the denominators (finite values and gradients).
    """
    h = lam_next - lam[0]
    h0 = jnp.where(p >= 2, lam[0] - lam[1], 1.0)
    h1 = jnp.where(p >= 3, lam[1] - lam[2], 1.0)
    em1 = jnp.expm1(-h)
    psi1 = -em1  # 1 − e^{−h} = −φ₁
    psi2 = em1 + h  # h·φ₂
    psi3 = psi2 - 0.5 * h * h  # h²·φ₃
    zero = jnp.zeros_like(h)
    w_1 = (psi1, zero, zero)
    q = 0.5 * psi1 * h / h0
    w_2 = (psi1 + q, -q, zero)
    k, tot = h0 / (h0 + h1), h0 + h1
    alpha = psi2 * (1 + k) - psi3 / tot  # multiplies u = (D_j − D_{j−1})/h₀
    beta = -psi2 * k + psi3 / tot  # multiplies v = (D_{j−1} − D_{j−2})/h₁
    w_3 = (psi1 + alpha / h0, -alpha / h0 + beta / h1, -beta / h1)
    w = [jnp.where(p == 1, a, jnp.where(p == 2, b, c)) for a, b, c in zip(w_1, w_2, w_3)]
    return jnp.exp(-h), jnp.stack(w)


def _dpmpp_update(x, lead, hist_d, w, e, scale=None):
    """e·x + scale·(w₀·lead + w₁·hist_d[0] + w₂·hist_d[1]), every coefficient [b] (row-wise)."""
    mix = bcast(w[0], x) * lead + bcast(w[1], x) * hist_d[0] + bcast(w[2], x) * hist_d[1]
    return bcast(e, x) * x + (mix if scale is None else bcast(scale, x) * mix)


def _plugin_interval(base, den, g, x, hist, sc, sn, i, coef, first_afs, afs_mean=None):
    """One AMED-Plugin interval σ_i → s_i → σ_{i+1}; returns (x_next, history, (r, c, a)).

    coef: this interval's slice of `_plugin_coefficients`; hist: see `_plugin_history`; afs_mean: see
    `afs_direction`.
    """
    if base == "ipndm":
        w1, w2 = coef
        d, h = _direction_and_features(den, x, sc, first_afs, afs_mean)
        r, c, a = g(h, sc, sn, i)
        s_mid = sn ** r * sc ** (1 - r)  # [b]
        sm = bcast(s_mid, x)
        buf = jnp.concatenate([d[None], hist], axis=0)  # [4, ...]
        x_mid = x + (sm - sc) * jnp.tensordot(w1, buf, axes=1)
        d_mid = (x_mid - den(x_mid, a * s_mid)[0]) / sm
        buf = jnp.concatenate([d_mid[None], buf[:3]], axis=0)
        x_next = x_mid + bcast(c, x) * (sn - sm) * jnp.tensordot(w2, buf, axes=1)
        return x_next, buf[:3], (r, c, a)
    p1, p2 = coef
    hist_d, hist_lam = hist
    if first_afs:  # D = x − σ·(x − μ)/√(1 + σ²), μ = 0 officially; no evaluation, zero features (dpm_pp_sampler)
        d0 = x - sc * afs_direction(x, sc, afs_mean)
        h = jnp.zeros(jax.eval_shape(den, x, sc)[1].shape, x.dtype)
    else:
        d0, h = den(x, sc)
    r, c, a = g(h, sc, sn, i)
    lam_c = jnp.broadcast_to(-jnp.log(sc), r.shape)  # [b]
    lam_m = -(r * jnp.log(sn) + (1 - r) * jnp.log(sc))  # λ of s = σ_next^r σ_cur^{1−r}, [b]
    e, w = _dpmpp_weights(jnp.stack([lam_c, hist_lam[0], hist_lam[1]]), lam_m, p1)
    x_mid = _dpmpp_update(x, d0, hist_d, w, e)
    s_mid = sn ** r * sc ** (1 - r)
    d_mid = den(x_mid, a * s_mid)[0]
    e, w = _dpmpp_weights(jnp.stack([lam_m, lam_c, hist_lam[0]]), jnp.broadcast_to(-jnp.log(sn), r.shape), p2)
    x_next = _dpmpp_update(x_mid, d_mid, jnp.stack([d0, hist_d[0]]), w, e, scale=c)
    return x_next, (jnp.stack([d_mid, d0]), jnp.stack([lam_m, lam_c])), (r, c, a)


def _check_fixed_r(base, predictor):
    """For DPM-Solver++ an r of exactly 0 or 1 makes a zero-length λ step next to a history point (0/0)."""
    if base != "dpm_solver_pp" or not isinstance(predictor, (tuple, list)) or not predictor \
            or isinstance(predictor[0], jax.core.Tracer):
        return
    r = np.asarray(predictor[0], np.float64)
    if not np.all((r > 0) & (r < 1)):
        raise ValueError(f"`predictor` r must lie in the open interval (0, 1) for base='dpm_solver_pp'; got {r}")


@counts_nfe(_nfe_plugin)
def sample_amed_plugin(denoise_fn, x_T: jax.Array, sigmas, *, key=None, predictor, base: str = "ipndm",
                       max_order: int | None = None, afs: bool = False, has_aux: bool = False,
                       denoise_to_zero: bool = False, lower_order_final: bool = True,
                       afs_mean=None) -> jax.Array:
    """AMED-Plugin: the learned intermediate time of each interval inserted into iPNDM or DPM-Solver++.

    Interval i runs the base solver's sub-steps σ_i → s_i → σ_{i+1} with s_i = σ_{i+1}^r σ_i^{1−r}: sub-step
    2i with the base's order rule, then sub-step 2i+1 with its denoiser at a·s_i and its model part scaled
    by c (formulas in the module docstring). With c = a = 1 this equals `sample_ipndm` /
    `sample_dpm_solver_pp` on the grid with the s_i inserted (tested; r = ½ inserts geometric midpoints).

    Args: as `sample_amed`; base: 'ipndm' (the CIFAR-10 AMED-Plugin of the paper) or 'dpm_solver_pp' (2M/3M,
        the official latent-diffusion plugin); max_order: 1..4 for iPNDM (default 4), 1..3 for DPM-Solver++
        (default 3 = 3M); lower_order_final: DPM-Solver++ only, see `sample_dpm_solver_pp`. With base
        'dpm_solver_pp' a fixed r must lie in the open interval (0, 1). afs_mean: data mean for the analytical
        first step (None: the paper's zero mean; see `afs_direction`).
    Returns:
        [b, ...]. NFE = 2N − [afs] + [denoise_to_zero].
    """
    del key
    check_choice("base", base, PLUGIN_BASES)
    max_order = _check_max_order(base, max_order)
    s = validate_sigmas(sigmas, allow_zero_end=False)
    x = validate_x(x_T)
    _check_predictor(predictor)
    _check_fixed_r(base, predictor)
    mean = check_afs_mean(afs_mean, bool(afs), x)
    dt = x.dtype
    n = len(s) - 1
    sig = jnp.asarray(s, dt)
    coefs = _plugin_coefficients(base, n, max_order, bool(lower_order_final))
    coefs = tuple(jnp.asarray(v, dt if v.dtype.kind == "f" else v.dtype) for v in coefs)
    den, plain, _ = _split_denoiser(denoise_fn, has_aux, x, sig[0], _feature_dim(predictor))
    g = _as_callable(predictor)

    def step(carry, i, first_afs, last):
        del last
        x, hist = carry
        x, hist, _ = _plugin_interval(base, den, g, x, hist, sig[i], sig[i + 1], i,
                                      tuple(v[i] for v in coefs), first_afs, mean)
        return x, hist

    x, _ = scan_steps(step, (x, _plugin_history(base, x)), n, peel_first=bool(afs))
    return plain(x, sig[-1]) if denoise_to_zero else x


# ------------------------------------------------------------------------------------------- distillation
TEACHERS = ("heun", "ipndm")


def teacher_grid(sigmas, inserted: int, rho: float | None = 7.0, teacher_sigmas=None) -> np.ndarray:
    """The teacher's σ grid: `teacher_sigmas` checked to nest `sigmas`, or `refine_sigmas(sigmas, inserted, rho)`.

    The official code builds the teacher grid as the student's schedule type with (M+1)·N + 1 points for N
    student intervals; for an EDM (polynomial ρ) grid that is `refine_sigmas` with the same ρ, for a log-SNR
    grid `refine_sigmas` with ρ = None, for others (time-uniform) pass it as `teacher_sigmas` (e.g.
    `diffusion.sigma_grid(kind, (M+1)·N + 1, ...)`).
    """
    s = validate_sigmas(sigmas, allow_zero_end=False)
    if teacher_sigmas is None:
        return refine_sigmas(s, inserted, rho)
    fine = validate_sigmas(teacher_sigmas, allow_zero_end=False)
    m = check_int("inserted", inserted, 0, 1 << 20)
    if len(fine) != (m + 1) * (len(s) - 1) + 1 or not np.allclose(fine[::m + 1], s, rtol=1e-6, atol=0.0):
        raise ValueError(f"`teacher_sigmas` must hold the {len(s)} student sigmas at every {m + 1}-th of its "
                         f"{(m + 1) * (len(s) - 1) + 1} points (inserted={m}); got {len(fine)} points "
                         f"{np.array2string(fine, precision=4, threshold=12)}")
    fine = fine.copy()
    fine[::m + 1] = s  # exact nesting at the student points
    return fine


def amed_teacher_trajectory(denoise_fn, x_T: jax.Array, sigmas, *, inserted: int = 1, rho: float | None = 7.0,
                            has_aux: bool = False, teacher: str = "heun", max_order: int = 4,
                            teacher_sigmas=None) -> jax.Array:
    """The teacher on `sigmas` refined with M = `inserted` points per interval; its states at the student σ's.

    teacher: 'heun' (no AFS; the official teacher of AMED-Solver) or 'ipndm' (iPNDM with `max_order`, no AFS;
    the official launch.sh teacher of the CIFAR-10 AMED-Plugin on iPNDM, `--sampler_tea=ipndm`).
    teacher_sigmas: the refined grid itself (see `teacher_grid`); None: σ^{1/ρ}-linear (log σ for ρ = None).

    Returns: [N+1, b, ...], element i the teacher state at sigmas[i] (element 0 is x_T).
    """
    check_choice("teacher", teacher, TEACHERS)
    s = validate_sigmas(sigmas, allow_zero_end=False)
    x = validate_x(x_T)
    fine = teacher_grid(s, inserted, rho, teacher_sigmas)
    dt = x.dtype
    plain = (lambda y, t: denoise_fn(y, t)[0]) if has_aux else denoise_fn
    if teacher == "ipndm":
        a, b = ipndm_coefficients(fine, check_int("max_order", max_order, 1, 4))
        traj = run_linear_multistep(plain, x, fine, a, b, model="d", afs=False, return_trajectory=True)
        return jnp.concatenate([x[None], traj[inserted::inserted + 1]], axis=0)
    pairs = jnp.asarray(np.stack([fine[:-1], fine[1:]], axis=1), dt)  # [N_fine, 2]

    def body(x, p):
        sc, sn = p[0], p[1]
        d = (x - plain(x, sc)) / sc
        xp = x + (sn - sc) * d
        x = x + (sn - sc) * 0.5 * (d + (xp - plain(xp, sn)) / sn)
        return x, x

    _, traj = jax.lax.scan(body, x, pairs)
    return jnp.concatenate([x[None], traj[inserted::inserted + 1]], axis=0)


STUDENTS = ("amed",) + PLUGIN_BASES
# 'interval': the official per-interval regression; 'final': the error of the whole student run (ours)
OBJECTIVES = ("interval", "final")


def _student_interval(student, den, g, x, hist, sc, sn, i, coef, first_afs, afs_mean=None):
    """One student interval: AMED-Solver (history unused) or the AMED-Plugin on `student`."""
    if student == "amed":
        out, rca = _amed_interval(den, g, x, sc, sn, i, first_afs, afs_mean)
        return out, hist, rca
    return _plugin_interval(student, den, g, x, hist, sc, sn, i, coef, first_afs, afs_mean)


def amed_distillation_loss(predictor, denoise_fn, x_cur: jax.Array, x_target: jax.Array, sigma_cur, sigma_next,
                           *, first_afs: bool = False, has_aux: bool = False, step: int = 0,
                           student: str = "amed", history=None, num_steps: int | None = None,
                           max_order: int | None = None, lower_order_final: bool = True, afs_mean=None):
    """Squared error of one student interval from the teacher point x_cur to the next teacher point.

    student: 'amed' (AMED-Solver) or a plugin base, 'ipndm' | 'dpm_solver_pp'. A plugin step carries the
    student's own history: pass history=None on interval 0 (`step` = 0) and the returned history after,
    num_steps = N (the plugin's order rule depends on the interval index and on N) and max_order /
    lower_order_final as for `sample_amed_plugin`. afs_mean: the data mean of the analytical first step when
    first_afs (see `afs_direction`).

    Returns: (scalar mean over rows of Σ_dims (x' − x_target)², aux) with aux = (r, c, a), each [b], for
    'amed' and (r, c, a, history) for a plugin.
    """
    check_choice("student", student, STUDENTS)
    mean = check_afs_mean(afs_mean, bool(first_afs), x_cur)
    den, _, _ = _split_denoiser(denoise_fn, has_aux, x_cur, sigma_cur, _feature_dim(predictor))
    coef = None
    if student != "amed":
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"`num_steps` must be a positive int (N, the student intervals) for student="
                             f"{student!r}; got {num_steps!r}")
        coef = tuple(jnp.asarray(v)[step] for v in _plugin_coefficients(
            student, int(num_steps), _check_max_order(student, max_order), bool(lower_order_final)))
        coef = tuple(v.astype(x_cur.dtype) if student == "ipndm" else v for v in coef)
        history = _plugin_history(student, x_cur) if history is None else history
    dt = x_cur.dtype
    out, history, rca = _student_interval(student, den, _as_callable(predictor), x_cur, history,
                                          jnp.asarray(sigma_cur, dt), jnp.asarray(sigma_next, dt), step, coef,
                                          first_afs, mean)
    err = (out - x_target).reshape(x_cur.shape[0], -1)
    loss = jnp.mean(jnp.sum(err ** 2, axis=-1))
    return (loss, rca) if student == "amed" else (loss, rca + (history,))


def train_amed_predictor(predictor: AMEDPredictor, denoise_fn, sigmas, sample_x_T: Callable, *, key,
                         num_batches: int, inserted: int = 1, rho: float | None = 7.0,
                         learning_rate: float = 5e-3, afs: bool = True, has_aux: bool = False,
                         student: str = "amed", max_order: int | None = None, lower_order_final: bool = True,
                         afs_mean=None, teacher: str = "heun", objective: str = "interval", teacher_sigmas=None):
    """Distils `predictor` as the official `AMED_loss` / training loop does (objective='interval', the default).

    For each batch x_T = sample_x_T(key_b): the teacher trajectory on the refined grid; then for each
    student interval i: one student step from the teacher point at σ_i (AMED-Solver) — or, for the plugin on
    student = 'ipndm' | 'dpm_solver_pp', from the student's own (detached) previous output with its own
    history (d's, or D's and their λ's), as the official loop does for multistep students — its squared
    error to the teacher point at σ_{i+1}, and one Adam(lr, β = (0.9, 0.999)) step.
    max_order / lower_order_final: as `sample_amed_plugin` (plugins only). afs_mean: the data mean of the
    analytical first step (needs afs=True; see `afs_direction`); use the same value when sampling.
    teacher: 'heun' (default) or 'ipndm' (the official CIFAR-10 plugin setting), see `amed_teacher_trajectory`;
    an iPNDM teacher uses the student's max_order (4 when the student is AMED-Solver).
    teacher_sigmas: the teacher's grid (see `teacher_grid`; checked before anything compiles); None refines
    `sigmas` σ^{1/ρ}-linearly with `rho`, which is the official grid only for EDM grids of that ρ.
    objective: 'interval' (the official loop above: N Adam steps per batch, one per interval) or 'final'
    (ours, not the paper's): ONE Adam step per batch on the squared error of the student's whole N-interval
    run from x_T — exactly the sampler (`sample_amed` / `sample_amed_plugin` with the same afs, afs_mean,
    max_order, lower_order_final) — to the teacher's final point, with the gradient through every interval.
    The official objective is greedy: it fits each interval from where the student is, which need not
    minimise the error at the end.

    Returns:
        (trained predictor, losses float [num_batches, N]; [num_batches, 1], the final error, for 'final').
    """
    s = validate_sigmas(sigmas, allow_zero_end=False)
    check_callable("sample_x_T", sample_x_T)
    check_choice("student", student, STUDENTS)
    check_choice("teacher", teacher, TEACHERS)
    check_choice("objective", objective, OBJECTIVES)
    num_batches = check_int("num_batches", num_batches, 1, 1 << 30)
    fine = teacher_grid(s, inserted, rho, teacher_sigmas)
    mean = check_afs_mean(afs_mean, bool(afs), jax.eval_shape(sample_x_T, key)) if afs_mean is not None else None
    max_order = _check_max_order(student, max_order) if student != "amed" else max_order
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"`learning_rate` must be a positive number; got {learning_rate!r}")
    n = len(s) - 1
    graphdef, params = nnx.split(predictor, nnx.Param)
    opt = optax.adam(learning_rate, b1=0.9, b2=0.999)
    opt_state = opt.init(params)
    coefs = _plugin_coefficients(student, n, max_order, bool(lower_order_final)) if student != "amed" else None

    def student_interval(model, x, hist, i):
        den, _, _ = _split_denoiser(denoise_fn, has_aux, x, s[i], model.feature_dim)
        coef = None if coefs is None else tuple(
            jnp.asarray(v[i], x.dtype if v.dtype.kind == "f" else v.dtype) for v in coefs)
        out, new_hist, _ = _student_interval(student, den, _as_callable(model), x, hist,
                                             jnp.asarray(s[i], x.dtype), jnp.asarray(s[i + 1], x.dtype), i,
                                             coef, bool(afs) and i == 0, mean)
        return out, new_hist

    def squared_error(out, target):
        return jnp.mean(jnp.sum((out - target).reshape(out.shape[0], -1) ** 2, axis=-1))

    def interval_loss(params, x, hist, target, i):
        out, new_hist = student_interval(nnx.merge(graphdef, params), x, hist, i)
        return squared_error(out, target), jax.lax.stop_gradient((out, new_hist))

    def final_loss(params, x_T, target):
        model = nnx.merge(graphdef, params)
        x, hist = x_T, (_plugin_history(student, x_T) if student != "amed" else ())
        for i in range(n):  # the student's whole run, as the sampler: each interval from its own output
            x, hist = student_interval(model, x, hist, i)
        return squared_error(x, target)

    def batch_update(params, opt_state, k):
        x_T = sample_x_T(k)
        traj = jax.lax.stop_gradient(amed_teacher_trajectory(
            denoise_fn, x_T, s, inserted=inserted, rho=rho, has_aux=has_aux, teacher=teacher,
            max_order=4 if max_order is None else max_order, teacher_sigmas=fine))
        if objective == "final":
            loss, grads = jax.value_and_grad(final_loss)(params, x_T, traj[-1])
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss[None]
        hist = _plugin_history(student, x_T) if student != "amed" else ()
        x, losses = traj[0], []
        for i in range(n):  # N is small (3-5); each interval has its own static AFS flag and weights
            (loss, (out, hist)), grads = jax.value_and_grad(interval_loss, has_aux=True)(params, x, hist,
                                                                                         traj[i + 1], i)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            losses.append(loss)
            # As the official training loop: a single-step student restarts from the teacher point, a multistep
            # plugin continues from its own output so that x and its history belong to one trajectory.
            x = traj[i + 1] if student == "amed" else out
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
