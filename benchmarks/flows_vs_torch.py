"""One Glow training step: kexue_jax (jit) vs a PyTorch implementation of the same network, on CPU.

    python -m benchmarks.flows_vs_torch                       # JAX here; torch in .venv-bench (see below)
    python -m benchmarks.flows_vs_torch --threads 2 --steps 20 --image 16 --channels 3

Both sides train the same Glow (squeeze -> K × [ActNorm, LU 1×1 conv, affine coupling with a
conv3×3 -> ReLU -> conv1×1 -> ReLU -> conv3×3 net, sigmoid(h + 2) scale] per level, factor-out with a
conv3×3 conditional prior, learned top prior) on the same uniformly dequantised random batch, with Adam.
A step is forward + backward + optimizer update; each side is warmed up, then timed over `--steps`
steps (median of `--repeats` blocks), with the same intra-op thread count (`--threads`, default: all
cores): torch.set_num_threads(N) and XLA's `intra_op_parallelism_threads=N`.

Torch is a benchmark-only dependency (requirements-bench.txt), installed in a separate venv so the
library's environment never sees it:
    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt
The JAX side runs in this interpreter; the torch side runs in `--torch-python` (default .venv-bench/bin/
python, or this interpreter when it can import torch) as a subprocess of the same run, and the ratio
torch_time / jax_time is printed (> 1 means kexue_jax is faster). normflows is not used: it does not
install alongside torch 2.13 offline here, so the torch Glow is written below, ~100 lines.

Measured 2026-11-21 on the 2-core CPU VM (shared with other jobs; load average ~10), default sizes
(batch 32 of 16×16×3, L=2, K=4, width 64, 165,252 parameters on both sides), jax 0.10.2, torch 2.13.0+cpu:
  --threads 1: kexue_jax 65.6 ms/step, torch 203.3 ms/step -> 3.10x (target >= 1.5x).
  --threads 2: kexue_jax 83.7 ms/step, torch 5292 ms/step -> 63x; not a fair number: on an oversubscribed
  machine torch's OpenMP workers spin-wait for descheduled peers (every aten op, even a 12×12 triu, took
  milliseconds in the profile). Rerun with all cores on an idle machine for the multi-thread ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=int, default=16, help="height = width")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-levels", type=int, default=2)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--torch-python", default=None)
    p.add_argument("--side", choices=("both", "jax", "torch"), default="both")
    return p.parse_args(argv)


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


# ----------------------------------------------------------------------------------------------------
# JAX side.


def run_jax(args) -> dict:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from kexue_jax import flows

    model = flows.Glow(event_shape=(args.image, args.image, args.channels), num_levels=args.num_levels,
                       depth=args.depth, width=args.width, scale_fn="sigmoid", levels=256, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.image, args.image, args.channels),
                                               dtype=np.uint8)
    batch = {"image": jax.numpy.asarray(images)}
    flows.data_init(model, batch, key=jax.random.key(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, key):
        def loss_fn(p):
            return flows.flow_loss(nnx.merge(graphdef, p, rest), batch, key=key, levels=256)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(1)
    for i in range(3):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(args.steps):
            params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, 100 + i))
        jax.block_until_ready(loss)
        times.append((time.perf_counter() - t0) / args.steps)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"s_per_step": _median(times), "loss": float(loss), "params": n_params, "jax": jax.__version__}


# ----------------------------------------------------------------------------------------------------
# Torch side: the same Glow, written plainly.

TORCH_CODE = r'''
import math, time, json, sys
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)


def squeeze(x):  # NCHW: [b, c, h, w] -> [b, 4c, h/2, w/2]
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


class ActNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        return (x + self.bias) * torch.exp(self.logs), x.shape[2] * x.shape[3] * self.logs.sum()


class InvConvLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        q = torch.linalg.qr(torch.randn(c, c))[0]
        p, l, u = torch.linalg.lu(q)
        s = torch.diagonal(u)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(torch.tril(l, -1))
        self.upper = nn.Parameter(torch.triu(u, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def forward(self, x):
        w = self.p @ (torch.tril(self.lower, -1) + self.eye) @ (torch.triu(self.upper, 1) +
                                                                  torch.diag(self.sign_s * torch.exp(self.log_s)))
        return F.conv2d(x, w[:, :, None, None]), x.shape[2] * x.shape[3] * self.log_s.sum()


def zero_conv(cin, cout, k):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    nn.init.zeros_(conv.weight); nn.init.zeros_(conv.bias)
    return conv


class Coupling(nn.Module):
    def __init__(self, c, width):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c // 2, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 1), nn.ReLU(), zero_conv(width, 2 * (c - c // 2), 3))

    def forward(self, x):
        c = x.shape[1] // 2
        a, b = x[:, :c], x[:, c:]
        h = self.net(a)
        shift, raw = h[:, :h.shape[1] // 2], h[:, h.shape[1] // 2:]
        log_s = F.logsigmoid(raw + 2.0)
        return torch.cat([a, b * torch.exp(log_s) + shift], 1), log_s.flatten(1).sum(1)


class Glow(nn.Module):
    def __init__(self, c, levels, depth, width):
        super().__init__()
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        for level in range(levels):
            c = 4 * c
            steps = nn.ModuleList()
            for _ in range(depth):
                steps.append(nn.ModuleList([ActNorm(c), InvConvLU(c), Coupling(c, width)]))
            self.levels.append(steps)
            if level < levels - 1:
                self.priors.append(zero_conv(c // 2, 2 * (c - c // 2), 3))
                c = c // 2
        self.top_mean = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.top_logs = nn.Parameter(torch.zeros(1, c, 1, 1))

    def log_prob(self, x):
        b = x.shape[0]
        log_det = torch.zeros(b)
        log_p = torch.zeros(b)
        for i, steps in enumerate(self.levels):
            x = squeeze(x)
            for layer in steps:
                for sub in layer:
                    x, ld = sub(x)
                    log_det = log_det + ld
            if i < len(self.levels) - 1:
                keep = x.shape[1] // 2
                x, out = x[:, :keep], x[:, keep:]
                h = self.priors[i](x)
                mu, logs = h[:, :h.shape[1] // 2], h[:, h.shape[1] // 2:]
                z = (out - mu) * torch.exp(-logs)
                log_p = log_p + (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - logs).flatten(1).sum(1)
        z = (x - self.top_mean) * torch.exp(-self.top_logs)
        log_p = log_p + (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - self.top_logs).flatten(1).sum(1)
        return log_p + log_det


model = Glow(args["channels"], args["num_levels"], args["depth"], args["width"])
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
rng = np.random.default_rng(0)
images = torch.from_numpy(rng.integers(0, 256, (args["batch"], args["channels"], args["image"], args["image"]))
                          .astype(np.float32))
dims = args["channels"] * args["image"] ** 2


def step():
    x = (images + torch.rand_like(images)) / 256.0 - 0.5
    loss = ((-model.log_prob(x) + dims * math.log(256)) / (dims * math.log(2))).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


for _ in range(3):
    loss = step()
times = []
for _ in range(args["repeats"]):
    t0 = time.perf_counter()
    for _ in range(args["steps"]):
        loss = step()
    times.append((time.perf_counter() - t0) / args["steps"])
times.sort()
print(json.dumps({"s_per_step": times[len(times) // 2], "loss": float(loss),
                  "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}))
'''


def run_torch(args) -> dict:
    python = args.torch_python
    if python is None:
        try:
            import torch  # noqa: F401
            python = sys.executable
        except ImportError:
            python = os.path.join(REPO, ".venv-bench", "bin", "python")
    if not os.path.exists(python):
        raise SystemExit(f"torch side needs a Python with torch: `--torch-python` {python!r} does not exist "
                         f"(python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt)")
    payload = json.dumps({k: getattr(args, k) for k in ("image", "channels", "num_levels", "depth", "width",
                                                         "batch", "steps", "repeats", "threads")})
    proc = subprocess.run([python, "-c", TORCH_CODE, payload], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if proc.returncode != 0:
        raise SystemExit(f"torch side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = _parse(argv)
    shape = f"{args.batch}×{args.image}×{args.image}×{args.channels}, L={args.num_levels}, K={args.depth}, " \
            f"width={args.width}, threads={args.threads}"
    out = {}
    if args.side in ("both", "jax"):
        out["jax"] = run_jax(args)
        print(f"kexue_jax: {1e3 * out['jax']['s_per_step']:.1f} ms/step ({out['jax']['params']} params)", flush=True)
    if args.side in ("both", "torch"):
        out["torch"] = run_torch(args)
        print(f"torch {out['torch']['torch']}: {1e3 * out['torch']['s_per_step']:.1f} ms/step "
              f"({out['torch']['params']} params)", flush=True)
    if len(out) == 2:
        ratio = out["torch"]["s_per_step"] / out["jax"]["s_per_step"]
        print(f"Glow train step ({shape}): torch / kexue_jax = {ratio:.2f}x "
              f"({'kexue_jax faster' if ratio > 1 else 'torch faster'}; target >= 1.5x)")
        out["ratio_torch_over_jax"] = ratio
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
