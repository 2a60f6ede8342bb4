"""Per-step overhead of every sampler beyond its denoiser evaluations, in one run.

    python -m benchmarks.samplers_overhead [--denoiser unet|conv] [--batch 64] [--repeats 5] [--quick]

`--quick` times 3 repeats at 4 and 10 steps (about a third of the default run) for a fast check.

The denoiser is the article's U-Net (kexue_jax.nn.unet, sinusoidal time labels, EDM preconditioning from
kexue_jax.diffusion.precond) with the model_kwargs of the mnist5k NFE table (`experiments/diffusion/
nfe_table.py:mnist5k`, 28×28×1) and random weights (timing does not depend on them),
or with `--denoiser conv` a small conv net of this file. Each sampler is jitted with the denoiser inside and
run for n2 steps; beside it, a jitted lax.scan that only chains exactly as many denoiser evaluations (the
sampler's NFE) is timed, alternating with the sampler, min of the repeats. Printed: overhead =
(T_sampler − T_chain) / (n2 · t_D), the sampler's own cost per step in units of one denoiser evaluation
(target ≤ 0.05 on CPU); t_D is the per-evaluation time from the difference of the n1- and n2-step chains.
The chain has the sampler's loop shape (n2 scan iterations of NFE/step chained calls): a flat chain of 2·n2
single calls ran 0.07 t_D faster than Heun for no reason of Heun's. This in-situ column still moves by
about ±0.08 between runs (60 ms programs on a shared 2-core CPU), more than the target, so the last column
repeats the difference with a near-free denoiser, where both programs take milliseconds and 10× the repeats
resolve the sampler's own arithmetic; it is printed in units of the U-Net's t_D. It cannot see a sampler
that slows the denoiser itself (e.g. by fusion); the in-situ column bounds that to its noise.
'amed (predictor)' runs AMED with an `AMEDPredictor(0)`: a predictor on 0 features, i.e. only its σ-embedding
heads. The feature encoder of a real AMED run (the MLP on the U-Net's 64 pooled bottleneck features, and
the denoiser returning those features) is not in it, so that row understates AMED-Solver's own cost.
Measured 2026-11-23 (`--quick`, 4.5 min, t_D 75 ms at batch 64): own ops ≤ 0.0064 t_D for every sampler (the
largest: DDPM and churned Heun, whose per-step Gaussian draw is most of it); in-situ −0.054 … +0.080.
(The 2026-11-22 run, own ops ≤ 0.0071 and in-situ −0.07 … +0.08, used a U-Net with multipliers (1, 2), smaller
than the table's (1, 2, 2); a review found it.)
(An earlier version differenced each sampler's own n1- and n2-step times; on this machine its per-program
noise gave overheads from −0.26 to +0.69 in one quiet run, while the iPNDM plugin, timed against plain
iPNDM on the refined grid with the same 20 evaluations, cost the same to 3%.)
"""
from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax import samplers as S


class _Conv(nnx.Module):
    def __init__(self, ch: int, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(1, ch, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(ch, ch, (3, 3), rngs=rngs)
        self.c3 = nnx.Conv(ch, 1, (3, 3), rngs=rngs)
        self.t = nnx.Linear(1, ch, rngs=rngs)

    def __call__(self, x, c_noise):
        h = jax.nn.silu(self.c1(x) + self.t(c_noise[:, None])[:, None, None, :])
        return self.c3(jax.nn.silu(self.c2(h)))


def _denoiser(kind: str):
    if kind == "unet":
        from kexue_jax.diffusion.precond import edm_denoiser
        from kexue_jax.nn.unet import UNet
        from experiments.diffusion import nfe_table as table_config
        kwargs = dict(table_config.get_config("mnist5k").model_kwargs)  # the NFE table's mnist5k U-Net
        net = UNet(**kwargs, rngs=nnx.Rngs(0))
        return (edm_denoiser(lambda x, c: net(x, c)),
                f"the mnist5k NFE table's U-Net ({kwargs}), random weights")
    net = _Conv(32, nnx.Rngs(0))
    sd = 0.5

    def den(x, sigma):
        s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        c_in = (1 / jnp.sqrt(s ** 2 + sd ** 2))[:, None, None, None]
        c_skip = (sd ** 2 / (s ** 2 + sd ** 2))[:, None, None, None]
        c_out = (s * sd / jnp.sqrt(s ** 2 + sd ** 2))[:, None, None, None]
        return c_skip * x + c_out * net(c_in * x, jnp.log(s) / 4)
    return den, "3-layer conv 28x28x1, 32 ch"


def _time(fn, x, repeats):
    fn(x).block_until_ready()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return min(ts)  # the least-disturbed run: the machine may be shared


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--denoiser", default="unet", choices=("unet", "conv"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", default="6,18")
    p.add_argument("--quick", action="store_true", help="3 repeats at 4 and 10 steps")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.steps = 3, "4,10"
    try:
        den, desc = _denoiser(args.denoiser)
    except Exception as err:  # the U-Net belongs to another module; fall back rather than fail the run
        print(f"U-Net unavailable ({type(err).__name__}: {err}); using the conv denoiser")
        den, desc = _denoiser("conv")
    n1, n2 = (int(v) for v in args.steps.split(","))
    x = 80.0 * jax.random.normal(jax.random.key(0), (args.batch, 28, 28, 1))
    print(f"setup: {desc}, batch {args.batch}, steps {n1} and {n2}, min of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()[0].platform}")

    def chain(d, k, per=1):
        """k scan iterations of `per` chained calls of denoiser d each: the loop shape of a per-NFE/step sampler."""
        sig = jnp.asarray(S.edm_sigmas(k + 1))

        def body(y, s):
            for _ in range(per):
                y = d(y, s)
            return y, None
        return jax.jit(lambda y: jax.lax.scan(body, y, sig[:-1])[0])

    chains = (chain(den, n1), chain(den, n2))

    def denoiser_time():
        return (_time(chains[1], x, args.repeats) - _time(chains[0], x, args.repeats)) / (n2 - n1)

    t_d_start = denoiser_time()
    key = jax.random.key(1)
    fixed = lambda n: (np.full(n, 0.4), np.ones(n), np.ones(n))  # noqa: E731
    cases = {
        "euler": (S.sample_euler, lambda n: {}, 1),
        "ddpm": (S.sample_ddpm, lambda n: {"key": key}, 1),
        "heun": (S.sample_heun, lambda n: {}, 2),
        "heun_churn": (S.sample_heun, lambda n: {"key": key, "s_churn": 10.0}, 2),
        "dpm_solver_2": (S.sample_dpm_solver_2, lambda n: {}, 2),
        "dpm_solver_pp_3m": (S.sample_dpm_solver_pp, lambda n: {"order": 3}, 1),
        "ipndm": (S.sample_ipndm, lambda n: {}, 1),
        "deis": (S.sample_deis, lambda n: {}, 1),
        "unipc": (S.sample_unipc, lambda n: {}, 1),
        "amed (fixed r)": (S.sample_amed, lambda n: {"predictor": fixed(n), "afs": False}, 2),
        "amed (predictor)": (S.sample_amed, lambda n: {"predictor": S.AMEDPredictor(0, rngs=nnx.Rngs(0)),
                                                       "afs": False}, 2),
        "amed_plugin": (S.sample_amed_plugin, lambda n: {"predictor": fixed(n)}, 2),
        "amed_plugin_dpmpp": (S.sample_amed_plugin, lambda n: {"predictor": fixed(n), "base": "dpm_solver_pp"}, 2),
    }

    def against_chains(d, repeats):
        """{sampler: (min time of the sampler with denoiser d at n2 steps, min time of the chain of d with the
        same loop shape)}, the two timed in alternation so that a neighbour's burst hits both."""
        by_shape, out = {}, {}
        for name, (fn, opts, per) in cases.items():
            if per not in by_shape:
                by_shape[per] = chain(d, n2, per)
            sig, o = S.edm_sigmas(n2 + 1), opts(n2)
            f = jax.jit(lambda y, sig=sig, o=o: fn(d, y, sig, **o))
            f(x).block_until_ready()
            by_shape[per](x).block_until_ready()
            t_s, t_c = [], []
            for _ in range(repeats):
                t_s.append(_time(f, x, 1))
                t_c.append(_time(by_shape[per], x, 1))
            out[name] = (min(t_s), min(t_c))
        return out

    # overhead/t_D = (T_sampler − T_chain) / (n2 · t_D): the sampler's own cost per step in denoiser calls.
    rows = against_chains(den, args.repeats)

    # The same difference with a near-free denoiser (one scalar multiply, the exact D of N(0, σ_d²) data):
    # both programs then take milliseconds, so many repeats pin down the sampler's own arithmetic, which is
    # then expressed in units of the U-Net's t_D. Low-noise, but it cannot see fusion with the real denoiser.
    def free(y, s):  # σ is a scalar or, inside AMED, one per sample [b]
        s = jnp.asarray(s, y.dtype)
        s = s.reshape(s.shape + (1,) * (y.ndim - s.ndim)) if s.ndim else s
        return y * (0.25 / (s ** 2 + 0.25))

    own = against_chains(free, 10 * args.repeats)
    t_d = min(t_d_start, denoiser_time())
    print(f"denoiser: {1e3 * t_d:.3f} ms per evaluation (before {1e3 * t_d_start:.3f}; from the {n1}- and "
          f"{n2}-step chains)")
    print(f"each sampler at {n2} steps vs a chain of the same number of denoiser evaluations, min of "
          f"{args.repeats} alternating repeats")
    print(f"last column: the same difference with a near-free denoiser (x·σ_d²/(σ²+σ_d²)), min of "
          f"{10 * args.repeats}, per step, in units of the U-Net's t_D (target ≤ 0.05)")
    print("amed (predictor): its predictor reads 0 features (σ embeddings only); the cost of a real AMED "
          "predictor's feature MLP (on the U-Net's 64 pooled bottleneck features) is not included")
    print(f"{'sampler':18s} {'ms/run':>9s} {'chain ms':>9s} {'NFE/step':>8s} {'overhead/t_D':>12s} "
          f"{'free ms':>8s} {'own ops/t_D':>11s}")
    worst = 0.0
    for name, (t_s, t_c) in rows.items():
        per = cases[name][2]
        f_s, f_c = own[name]
        own_ratio = (f_s - f_c) / (n2 * t_d)
        worst = max(worst, own_ratio)
        print(f"{name:18s} {1e3 * t_s:9.1f} {1e3 * t_c:9.1f} {per:8d} {(t_s - t_c) / (n2 * t_d):12.3f} "
              f"{1e3 * f_s:8.2f} {own_ratio:11.4f}")
    print(f"largest own-ops overhead per step: {worst:.4f} t_D ({'within' if worst <= 0.05 else 'above'} "
          f"the 0.05 target)")


if __name__ == "__main__":
    main()
