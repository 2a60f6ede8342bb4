"""Time and peak memory of one forward+backward of softmax, linear and FAVOR+ attention vs length n, in one run.

    python -m benchmarks.attention_scaling [--lengths 256,512,...,16384] [--softmax-max 8192] [--repeats 3]

Setup: batch 1, 4 heads of size 64 (d_model 256), float32, on the default device. Each kernel is the loss
sum(o · w) of its output o for a fixed random w, differentiated with respect to q, k and v (one forward +
backward), jitted; the time is the median of `repeats` calls after a warm-up call (compile excluded). Peak
memory is XLA's compiled `memory_analysis()`: temp + argument + output bytes of the whole jitted step (no
runtime sampling). Kernels:
  softmax          jax.nn.dot_product_attention (implementation='xla'), O(n²) scores
  linear           kexue_jax.attention.linear_attention, 1 + elu features, bidirectional, O(n)
  linear_causal    the same with causal=True (chunked prefix sums, chunk 64)
  favor            kexue_jax.attention.performer_attention, 256 orthogonal features (Google's default), bidirectional
Printed: the table, the crossover length (the smallest measured n from which each linear kernel is faster
than softmax at every larger measured n), and the log-log slopes of time and memory vs n fitted over the
lengths ≥ 1024 (the asymptotic regime; target: softmax ≈ 2, linear ≈ 1).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kexue_jax.attention import linear_attention, performer_attention, performer_projection

HEADS, HEAD_DIM = 4, 64


def kernels(projection):
    return {
        "softmax": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
        "linear": lambda q, k, v: linear_attention(q, k, v),
        "linear_causal": lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=64),
        "favor": lambda q, k, v: performer_attention(q, k, v, projection=projection),
    }


def measure(fn, n, repeats):
    rng = np.random.default_rng(n)
    q, k, v, w = (jnp.asarray(rng.normal(size=(1, n, HEADS, HEAD_DIM)), jnp.float32) for _ in range(4))
    step = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))
    compiled = step.lower(q, k, v).compile()
    mem = compiled.memory_analysis()
    peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) if mem else float("nan")
    jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def slope(ns, ys, min_n=1024):
    pts = [(n, y) for n, y in zip(ns, ys) if n >= min_n and np.isfinite(y) and y > 0]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384")
    parser.add_argument("--softmax-max", type=int, default=16384, help="skip softmax above this length")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    projection = performer_projection(jax.random.key(0), 256, HEAD_DIM)
    print(f"attention_scaling: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} cpus, "
          f"{platform.processor() or platform.machine()}, jax {jax.__version__}")
    print(f"one forward+backward, batch 1, {HEADS} heads x {HEAD_DIM}, float32, median of {args.repeats}; "
          f"memory = compiled temp + arguments + outputs")
    table = {name: {} for name in kernels(projection)}
    print(f"{'n':>6} " + " ".join(f"{name + ' ms':>17} {'MiB':>8}" for name in table))
    for n in lengths:
        row = []
        for name, fn in kernels(projection).items():
            if name == "softmax" and n > args.softmax_max:
                table[name][n] = (float("nan"), float("nan"))
            else:
                table[name][n] = measure(fn, n, args.repeats)
            t, m = table[name][n]
            row.append(f"{1e3 * t:17.2f} {m / 2 ** 20:8.1f}")
        print(f"{n:6d} " + " ".join(row), flush=True)
    soft = table["softmax"]
    for name in ("linear", "linear_causal", "favor"):
        faster = [n for n in lengths if np.isfinite(soft[n][0]) and table[name][n][0] < soft[n][0]]
        measured = [n for n in lengths if np.isfinite(soft[n][0])]
        cross = next((n for i, n in enumerate(measured) if all(m in faster for m in measured[i:])), None)
        print(f"crossover {name} vs softmax: {'n >= %d' % cross if cross else 'not within the measured lengths'}"
              f" (time ratio softmax/{name} at the largest common n = {measured[-1]}: "
              f"{soft[measured[-1]][0] / table[name][measured[-1]][0]:.2f}x)")
    for name, col in table.items():
        ns = sorted(col)
        print(f"scaling {name:14s} time ~ n^{slope(ns, [col[n][0] for n in ns]):.2f}, "
              f"memory ~ n^{slope(ns, [col[n][1] for n in ns]):.2f}  (fitted over n >= 1024)")


if __name__ == "__main__":
    main()
