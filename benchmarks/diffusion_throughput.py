"""Images/s of the diffusion trainer's step and of every sampler at a fixed NFE, each against a peer, in one run.

    python -m benchmarks.diffusion_throughput [--model cifar10|mnist5k|digits] [--batch 128] [--nfe 10]
        [--train-steps 5] [--repeats 3] [--ddpm-steps auto]

Issue 5 asks for images/s of training and of each sampler on an accelerator. This is the one command that
measures them, on whatever `jax.devices()` holds (all of them: the batch is split over a 'data' mesh axis,
as in the trainer). Weights are random: timing does not depend on them.

Models (the configs' own U-Nets and losses):
  cifar10  experiments/diffusion/ddpm_cifar10.py: the author's U-Net at 32×32×3 (E = 128, multipliers
           (1, 1, 2, 2, 4, 4), 2 blocks, learned embedding of t = 1..1000), the article's ε-loss; samplers see
           it through `ddpm_denoiser` (nearest discrete step).
  mnist5k  experiments/diffusion/nfe_table.py:mnist5k: the NFE table's EDM-preconditioned U-Net at 28×28×1.
  digits   experiments/diffusion/ddpm_cifar10.py:smoke (8×8×1, a tiny U-Net): a seconds-long check.

Printed, after the setup:
  train    the trainer's own step (`core.train.make_train_step` + `jit_train_step`: value_and_grad, the
           config's optax chain, donated sharded state) on a synthetic uint8 batch: images/s, and its time in
           units of one jitted denoiser forward pass at the same batch (the peer, timed right after the
           train step in the same run, each the min of its own `--repeats` runs; the two are not alternated).
  samplers each sampler with the number of steps that spends `--nfe` denoiser evaluations (`samplers.nfe`,
           AFS counted as free), or the most below `--nfe` its step structure allows (at `--nfe 5`: 4 for
           Heun, DPM-Solver-2 and the plugin, which spend 2 per step), images/s, and the same against a
           jitted chain of exactly as many denoiser evaluations as the sampler spends (its NFE column; the
           peer, timed in alternation with it): 'vs chain' = sampler images/s ÷ chain images/s (1.00 = the
           sampler costs nothing beyond its denoiser calls). AMED-Solver runs with its predictor on the
           U-Net's pooled bottleneck features, as in the NFE table; the plugin with a fixed r = 0.4.
  ddpm     for ε-models, the article's ancestral sampler (`diffusion.ddpm.ddpm_sample`) over T steps
           (`--ddpm-steps auto`: the config's 1000 on an accelerator, skipped on CPU, where it takes hours).
Each time is the minimum of `--repeats` runs after a warm-up (the least disturbed: machines are shared).

Measured 2026-11-23 on the shared 2-core CPU only (no GPU was lent; these stand in for, and are not, the
accelerator numbers issue 5 asks for):
  `--model cifar10 --batch 8 --nfe 10 --repeats 2 --train-steps 2` (50.51 M params, 5 min): train 7.3 images/s
  (1089 ms/step = 5.41 forward passes of 201 ms); samplers 3.7–4.6 images/s, 'vs chain' 0.961–1.034.
  `--model mnist5k --batch 64 --nfe 10` (0.36 M params, 2.5 min): train 183.6 images/s (4.08 forward passes);
  samplers 78.3–88.6 images/s (AMED 88.6 at NFE 9: 5 steps with AFS), 'vs chain' 0.959–1.023.
"""
from __future__ import annotations

import argparse
import functools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kexue_jax import samplers as S
from kexue_jax.core import config as config_lib
from kexue_jax.core import sharding as sharding_lib
from kexue_jax.core import train
from kexue_jax.diffusion import ddpm as ddpm_lib
from kexue_jax.diffusion import precond, schedules

MODELS = ("cifar10", "mnist5k", "digits")


def _config(model: str):
    if model == "mnist5k":
        from experiments.diffusion import nfe_table
        return nfe_table.get_config("mnist5k")
    from experiments.diffusion import ddpm_cifar10
    return ddpm_cifar10.get_config("smoke" if model == "digits" else None)


def _once(fn) -> float:
    """Wall time of one call of fn() (which must block)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(fn, repeats: int) -> float:
    """Min wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    return min(_once(fn) for _ in range(repeats))


def _denoisers(config, graphdef, params, model_state):
    """(D(x, σ), D with pooled bottleneck features, σ_min, σ_max, DDPM schedule or None) of the config."""
    kind = config.loss.rsplit(".", 1)[-1]
    if kind == "edm_loss":
        sd = float(config.loss_kwargs.get("sigma_data", 0.5))
        wrap, sigma_min, sigma_max, sched = (lambda f: precond.edm_denoiser(f, sd)), 0.002, 80.0, None
    elif kind == "ddpm_loss":
        sched = schedules.make_schedule(config.loss_kwargs.get("schedule", "article"),
                                        int(config.loss_kwargs.get("num_timesteps", 1000)))
        vp = schedules.vp_sigmas(sched)
        wrap, sigma_min, sigma_max = (lambda f: precond.ddpm_denoiser(f, sched)), float(vp[1]), float(vp[-1])
    else:
        raise ValueError(f"config.loss must be ddpm_loss or edm_loss; got {config.loss!r}")

    def make(feat):
        def d(x, sigma):
            box = {}

            def net(x_in, c):  # the network (F for EDM, ε for DDPM); keeps the features when asked
                out = train.merge_model(graphdef, params, model_state)(x_in, c, return_features=feat)
                if feat:
                    out, box["f"] = out
                return out
            y = wrap(net)(x, sigma)
            return (y, box["f"]) if feat else y
        return d
    return make(False), make(True), sigma_min, sigma_max, sched


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar10", choices=MODELS)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--train-steps", type=int, default=5, help="train steps per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ddpm-steps", default="auto", help="'auto', 0 (skip) or a number of ancestral steps")
    args = p.parse_args(argv)
    for name in ("batch", "nfe", "train_steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    platform_name = jax.devices()[0].platform
    if args.ddpm_steps == "auto":
        ddpm_steps = 0 if platform_name == "cpu" else None  # None: the config's T
    else:
        try:
            ddpm_steps = int(args.ddpm_steps)
        except ValueError:
            p.error(f"--ddpm-steps must be 'auto' or a non-negative integer; got {args.ddpm_steps!r}")
        if ddpm_steps < 0:
            p.error(f"--ddpm-steps must be 'auto' or a non-negative integer; got {ddpm_steps}")

    config = _config(args.model)
    num_timesteps = int(config.loss_kwargs.get("num_timesteps", 1000))
    if ddpm_steps is not None and ddpm_steps > num_timesteps:  # a learned embedding has T + 1 rows
        p.error(f"--ddpm-steps must be at most the config's num_timesteps ({num_timesteps}); got {ddpm_steps}")
    config.batch_size = args.batch
    config.mesh = dict(data=-1)
    # the trainer's own resolution and checks (batch vs devices included), then its optimizer and loss binding
    resolved = config_lib.validate_train_config(config, num_devices=jax.device_count())
    mesh = sharding_lib.make_mesh(config.mesh)
    tx = train.make_optimizer(config, resolved["optimizer"])
    loss_fn = functools.partial(resolved["loss"], **dict(config.loss_kwargs))
    graphdef, state, shardings = train.init_state(resolved["model"], dict(config.model_kwargs), tx, seed=0,
                                                  mesh=mesh, ema=config.get("ema_decay") is not None)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    kw = dict(config.model_kwargs)
    shape = (kw["image_size"], kw["image_size"], kw["in_channels"])
    levels = int(config.loss_kwargs.get("levels", 256))
    print(f"setup: model {args.model} ({config.model.rsplit('.', 1)[-1]} {shape}, {n_params / 1e6:.2f} M params, "
          f"{config.loss.rsplit('.', 1)[-1]}), batch {args.batch}, {len(jax.devices())} x "
          f"{jax.devices()[0].device_kind} ({platform_name}), jax {jax.__version__}, "
          f"{platform.processor() or platform.machine()}; min of {args.repeats} after a warm-up")

    # --- training: the trainer's step against one denoiser forward pass at the same batch
    step = train.jit_train_step(train.make_train_step(loss_fn, tx, graphdef, ema_decay=config.get("ema_decay")),
                                mesh, shardings)
    rng = np.random.default_rng(0)
    batch = sharding_lib.put_batch({"image": rng.integers(0, levels, (args.batch, *shape)).astype(np.uint8)},
                                   sharding_lib.batch_sharding(mesh))
    base_key = jax.random.key(0)
    # the train step donates its state, so the samplers get their own copy of the weights
    params, model_state = jax.tree.map(jnp.copy, (state.params, state.model_state))
    box = {"state": state}

    def run_train():
        s = box["state"]
        for _ in range(args.train_steps):
            s, metrics = step(s, batch, base_key)
        jax.block_until_ready(metrics["loss"])
        box["state"] = s

    den, den_feat, sigma_min, sigma_max, sched = _denoisers(config, graphdef, params, model_state)
    x_put = sharding_lib.batch_sharding(mesh)
    x = jax.device_put(sigma_max * jax.random.normal(jax.random.key(1), (args.batch, *shape)), x_put)
    forward = jax.jit(lambda y: den(y, jnp.float32(1.0)))
    t_train = _best(run_train, args.repeats) / args.train_steps
    t_fwd = _best(lambda: forward(x).block_until_ready(), args.repeats)
    print(f"train: {args.batch / t_train:10.1f} images/s ({1e3 * t_train:.1f} ms/step; "
          f"{t_train / t_fwd:.2f} x one forward pass of {1e3 * t_fwd:.1f} ms)")

    # --- samplers at a fixed NFE, each against a chain of the same number of denoiser evaluations
    feature_dim = int(jax.eval_shape(lambda y: den_feat(y, jnp.ones((y.shape[0],)))[1], x[:1]).shape[-1])
    predictor = S.AMEDPredictor(feature_dim, rngs=nnx.Rngs(0))
    fixed = lambda n: (np.full(n, 0.4), np.ones(n), np.ones(n))  # noqa: E731
    cases = {
        "ddim": (S.sample_euler, lambda n: {}, False),
        "ddpm (ancestral)": (S.sample_ddpm, lambda n: {"key": jax.random.key(2)}, False),
        "heun": (S.sample_heun, lambda n: {}, False),
        "dpm_solver_2": (S.sample_dpm_solver_2, lambda n: {}, False),
        "dpm_solver_pp_2m": (S.sample_dpm_solver_pp, lambda n: {"order": 2}, False),
        "dpm_solver_pp_3m": (S.sample_dpm_solver_pp, lambda n: {"order": 3}, False),
        "ipndm": (S.sample_ipndm, lambda n: {}, False),
        "deis": (S.sample_deis, lambda n: {}, False),
        "unipc": (S.sample_unipc, lambda n: {}, False),
        "amed (predictor, AFS)": (S.sample_amed, lambda n: {"predictor": predictor, "has_aux": True}, True),
        "amed_plugin (iPNDM)": (S.sample_amed_plugin, lambda n: {"predictor": fixed(n)}, False),
    }
    grid = lambda n: schedules.edm_sigmas(n + 1, sigma_min, sigma_max, 7.0)  # noqa: E731

    def chain(k):
        sig = jnp.asarray(grid(k)[:k])  # k noise levels: one per denoiser call
        return jax.jit(lambda y: jax.lax.scan(lambda c, s: (den(c, s), None), y, sig)[0])

    print(f"samplers at NFE {args.nfe} (steps chosen so that samplers.nfe = {args.nfe}, or the largest below); "
          f"'vs chain' = images/s / images/s of a chain of as many denoiser calls as the row's NFE column")
    print(f"{'sampler':24s} {'steps':>5s} {'NFE':>4s} {'images/s':>10s} {'vs chain':>9s}")
    chains = {}
    for name, (fn, opts, feat) in cases.items():
        counts = {n: S.nfe(fn, grid(n), **opts(n)) for n in range(1, args.nfe + 1)}
        fits = [n for n, c in counts.items() if c <= args.nfe]
        if not fits:
            print(f"{name:24s} {'-':>5s} {'-':>4s}  (needs more than {args.nfe} evaluations)")
            continue
        n = max(fits, key=lambda m: (counts[m], m))
        k = counts[n]
        sig, o = grid(n), opts(n)
        f = jax.jit(lambda y, fn=fn, sig=sig, o=o, feat=feat: fn(den_feat if feat else den, y, sig, **o))
        if k not in chains:
            chains[k] = chain(k)
        t_s, t_c = [], []
        f(x).block_until_ready()
        chains[k](x).block_until_ready()
        for _ in range(args.repeats):  # alternating, so that a neighbour's burst hits both
            t_s.append(_once(lambda: f(x).block_until_ready()))
            t_c.append(_once(lambda: chains[k](x).block_until_ready()))
        print(f"{name:24s} {n:5d} {k:4d} {args.batch / min(t_s):10.1f} {min(t_c) / min(t_s):9.3f}")

    if sched is not None and ddpm_steps != 0:
        m = train.merge_model(graphdef, params, model_state)
        t_steps = sched.num_steps if ddpm_steps is None else ddpm_steps
        if t_steps != sched.num_steps:
            sched = schedules.make_schedule(config.loss_kwargs.get("schedule", "article"), t_steps)
        anc = jax.jit(lambda y: ddpm_lib.ddpm_sample(m, y, key=jax.random.key(3), schedule=sched))
        x_unit = x / sigma_max  # the article's x_T ~ N(0, I)
        t_a = _best(lambda: anc(x_unit).block_until_ready(), max(1, args.repeats // 3))
        print(f"ddpm ancestral (article, T = {t_steps}): {args.batch / t_a:.2f} images/s "
              f"({1e3 * t_a / t_steps:.1f} ms per step; {t_a / t_steps / t_fwd:.2f} x one forward pass)")
    elif sched is not None:
        print(f"ddpm ancestral (article, T = {num_timesteps}): skipped on CPU (hours); pass --ddpm-steps N to time "
              f"N steps")


if __name__ == "__main__":
    main()
