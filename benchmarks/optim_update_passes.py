"""Why `eg_step_size_adaptation(adam)` costs more than Adam on XLA:CPU: the update alone, built up piece by piece.

    python -m benchmarks.optim_update_passes [--repeats 5] [--steps 200] [--sizes 65536,1863690,16777216]

Companion to `benchmarks/optim_overhead.py` (issue 3). One float32 parameter vector per size in `--sizes`
(default: one that fits in L2, the 784-1024-1024-10 MLP's 1,863,690, and 2^24 that no cache holds), a fixed
gradient, and jitted, buffer-donating update steps (state) -> state:

  optax adam                      optax.adam(1e-3) + apply_updates (the peer)
  optax eg(adam)                  eg_step_size_adaptation(adam, γ_p = γ_s = 1) + apply_updates
  adam, hand-written              m, v, θ ← Adam (the same maths as optax's, written inline)
  + signal                        … and the stored signal a ← −b (the base direction) as one more output
  + gains                         … and p ← clip(p·exp(clip(a·g))), θ ← θ + p ⊙ b
  + gains + scale                 … and the global scale s ← clip(s·exp(clip(⟨p ⊙ a, g⟩))) — the full rule

For each: the median time per update over `--repeats` repeats of `--steps` steps (scaled by
1,863,690 / size, at least 10), the ratio to optax's
Adam, the minor page faults and kernel (system) time per step (getrusage), and the memory traffic the
compiled step has, counted from its optimized HLO: every parameter-sized
fusion or copy reads its parameter-sized operands and writes its output once ("passes", in units of one
parameter-sized buffer). XLA:CPU has no multi-output loop fusion, so every extra parameter-sized output
(and every intermediate shared by two outputs) is its own pass over memory; GPUs fuse these. Where the time
ratio exceeds the pass ratio, the EG state no longer fits in a cache that still holds Adam's.

Measured (2026-11-22, 2-core AMD EPYC: 2 × 1 MiB L2, 32 MiB L3; jax 0.10.2; the running experiment paused
with SIGSTOP; `python -m benchmarks.optim_update_passes`):

    == 65,536 parameters (0.25 MiB per buffer), 200 steps per repeat
    update                       ms   ratio  passes   ratio  fusions   faults  kernel ms
    optax adam                0.054    1.00      10    1.00        3        0      0.000
    optax eg(adam)            0.148    2.74      31    3.10       11        0      0.077
    adam, hand-written        0.058    1.08      10    1.00        3        0      0.019
    + signal                  0.093    1.72      14    1.40        5        0      0.019
    + gains                   0.147    2.73      28    2.80       10        0      0.041
    + gains + scale           0.170    3.15      31    3.10       11        0      0.043

    == 1,863,690 parameters (7.11 MiB per buffer), 200 steps per repeat
    update                       ms   ratio  passes   ratio  fusions   faults  kernel ms
    optax adam                0.753    1.00      10    1.00        3        0      0.026
    optax eg(adam)            3.479    4.62      31    3.10       11        0      0.115
    adam, hand-written        0.757    1.00      10    1.00        3        0      0.043
    + signal                  1.643    2.18      14    1.40        5        0      0.125
    + gains                   3.107    4.13      28    2.80       10        0      0.103
    + gains + scale           3.757    4.99      31    3.10       11        0      0.161

    == 16,777,216 parameters (64.00 MiB per buffer), 22 steps per repeat
    update                       ms   ratio  passes   ratio  fusions   faults  kernel ms
    optax adam               12.074    1.00      10    1.00        3        0      0.382
    optax eg(adam)           93.190    7.72      31    3.10       11    32769     67.221
    adam, hand-written       10.683    0.88      10    1.00        3        0      0.208
    + signal                 37.061    3.07      14    1.40        5    16385     32.552
    + gains                  79.999    6.63      28    2.80       10    32769     65.068
    + gains + scale         114.960    9.52      31    3.10       11    49153    112.949

Reading: with everything in cache (65,536) the time ratio follows the pass ratio (2.7× for 3.1× the passes).
At the MLP's size Adam's four live buffers (28 MiB) fit in the 32 MiB L3 and EG's six-plus do not: 4.6×
for the same 3.1× passes. At 64 MiB per buffer XLA:CPU allocates the step's temporaries (the materialised
base direction b and exponent, the copies of the donated gains and signal) afresh each step, and the
kernel's zeroing of those pages (32,769 minor faults, 67 ms of kernel time per step) is 72% of EG's step.
None of this is the rule's arithmetic: it is the number of separate loops XLA:CPU makes of it (11 fusions
against Adam's 3, no multi-output fusion). GPUs fuse sibling outputs; the ≤ 1.2× target of issue 3 is
still to be measured there.

XLA:CPU's own switches do not change this (2026-11-22, jax 0.10.2, passes of optax eg(adam) at the MLP size,
counted as above): `--xla_cpu_use_fusion_emitters=false`, `--xla_cpu_enable_concurrency_optimized_scheduler=true`
and `--xla_cpu_use_thunk_runtime=false` all leave it at 31 passes in 11 fusions (Adam: 10 in 3);
`--xla_cpu_use_multi_output_fusion` is a name in the binary but not a registered flag ("Unknown flag in
XLA_FLAGS"). Keeping the EG state and Adam's moments in one stacked [4, n] buffer (so that one fusion writes
all of them) was tried in a scratch copy of this file: 17× Adam's time (the EG rule above: 5.5× in the same
run), the stacking and slicing copies of [4, n] buffers (which this pass count, seeing [n] buffers only, does
not count) costing far more than they save.

Article: https://kexue.fm/archives/8968
"""
from __future__ import annotations

import argparse
import platform
import re
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from kexue_jax.optim import eg_step_size_adaptation

MLP_SIZE = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10  # optim_overhead's MLP, flattened
LR = 1e-3


def hand_written(kind: str, grad: jax.Array):
  """The update of `kind` ('adam', 'signal', 'gains', 'scale'), each adding one piece of the EG rule."""

  def step(state):
    p, m, v, gains, a, s = state
    if kind == "scale":
      y = jnp.vdot(gains * a, grad)
      s = jnp.clip(s * jnp.exp(jnp.clip(y, -1.0, 1.0)), 1e-3, 1e3)
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad * grad
    b = -LR * m / (jnp.sqrt(v) + 1e-8)
    if kind in ("gains", "scale"):
      gains = jnp.clip(gains * jnp.exp(jnp.clip(a * grad, -1.0, 1.0)), 1e-3, 1e3)
      b_out = s * gains * b
    else:
      b_out = b
    if kind != "adam":
      a = -b
    return p + b_out, m, v, gains, a, s

  n = grad.shape[0]
  z = jnp.zeros(n)
  state = (jnp.ones(n), z, z + 1e-4, jnp.ones(n), z + 1e-3, jnp.float32(1.0))
  return step, state


def optax_step(opt, grad):
  def step(state):
    p, s = state
    u, s = opt.update(grad, s, p)
    return optax.apply_updates(p, u), s

  p = jnp.ones(grad.shape[0])
  return step, (p, opt.init(p))


def memory_passes(compiled, n: int) -> tuple[int, int]:
  """(parameter-sized passes, parameter-sized fusions + copies) of a compiled step's entry computation."""
  text = compiled.as_text()
  entry = text[text.index("ENTRY"):]
  vec = re.compile(r"%(\S+) = f32\[" + str(n) + r"\]")
  vectors = set(vec.findall(entry))
  passes = ops = 0
  for line in entry.splitlines()[1:]:
    m = re.match(r"\s*%(\S+) = (\S+) (fusion|copy)\((.*?)\)(, kind=(\w+))?", line)
    if not m:
      continue
    operands = [re.sub(r"/\*index=\d+\*/", "", o).strip().lstrip("%") for o in m.group(4).split(",")]
    reads = sum(o in vectors for o in operands)
    if m.group(1) in vectors:  # a parameter-sized output: its reads and one write
      passes, ops = passes + reads + 1, ops + 1
    elif reads:  # a reduction to a scalar: its reads only
      passes, ops = passes + reads, ops + 1
  return passes, ops


def time_step(step, state, steps: int) -> tuple[float, float, float, object]:
  """(seconds, minor page faults, kernel seconds) per step over `steps` steps after one warm-up step, and the
  last state (the state is donated)."""
  state = step(state)
  jax.block_until_ready(state)
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    state = step(state)
  jax.block_until_ready(state)
  t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  return t / steps, (r1.ru_minflt - r0.ru_minflt) / steps, (r1.ru_stime - r0.ru_stime) / steps, state


def measure(n: int, repeats: int, steps: int) -> None:
  grad = 1e-2 * jax.random.normal(jax.random.key(0), (n,))
  cases = {
      "optax adam": optax_step(optax.adam(LR), grad),
      "optax eg(adam)": optax_step(eg_step_size_adaptation(optax.adam(LR), gamma_gains=1.0, gamma_scale=1.0),
                                   grad),
      "adam, hand-written": hand_written("adam", grad),
      "+ signal": hand_written("signal", grad),
      "+ gains": hand_written("gains", grad),
      "+ gains + scale": hand_written("scale", grad),
  }
  fns, compiled, states = {}, {}, {}
  times, faults, kernel = ({k: [] for k in cases} for _ in range(3))
  for name, (step, state) in cases.items():
    fns[name] = jax.jit(step, donate_argnums=0)
    compiled[name] = fns[name].lower(state).compile()
    states[name] = state
  for _ in range(repeats):
    for name, fn in fns.items():
      t, f, k, states[name] = time_step(fn, states[name], steps)
      times[name].append(t)
      faults[name].append(f)
      kernel[name].append(k)
  base = statistics.median(times["optax adam"])
  base_passes = memory_passes(compiled["optax adam"], n)[0]
  print(f"\n== {n:,} parameters ({4 * n / 2**20:.2f} MiB per buffer), {steps} steps per repeat")
  print(f"{'update':<22}{'ms':>9}{'ratio':>8}{'passes':>8}{'ratio':>8}{'fusions':>9}{'faults':>9}"
        f"{'kernel ms':>11}")
  for name in cases:
    med = statistics.median(times[name])
    passes, ops = memory_passes(compiled[name], n)
    print(f"{name:<22}{1e3 * med:>9.3f}{med / base:>8.2f}{passes:>8d}{passes / base_passes:>8.2f}{ops:>9d}"
          f"{statistics.median(faults[name]):>9.0f}{1e3 * statistics.median(kernel[name]):>11.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--sizes", default=f"65536,{MLP_SIZE},16777216",
                      help="comma-separated parameter counts")
  args = parser.parse_args()
  for name in ("repeats", "steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
  try:
    sizes = [int(x) for x in args.sizes.split(",")]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    parser.error(f"--sizes must be comma-separated positive integers; got {args.sizes!r}")
  print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{platform.processor() or platform.machine()}")
  print(f"median over {args.repeats} interleaved repeats of jitted, donated update steps; passes: "
        "parameter-sized reads + writes in the compiled step (HLO), ratio to optax adam")
  for n in sizes:
    measure(n, args.repeats, max(10, round(args.steps * MLP_SIZE / n)) if n > MLP_SIZE else args.steps)


if __name__ == "__main__":
  main()
