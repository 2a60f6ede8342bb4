"""The shared trainer's step time against a bare jitted loop doing the same maths, in one run.

    python -m benchmarks.core_trainer_overhead [--repeats 3] [--hidden 512,512] [--batch 128]

Both sides train the same NNX MLP classifier on mnist5k with optax.adam, the same batches (the trainer's
`batch_indices`) placed with `jax.device_put`. The bare loop is the fastest honest baseline: one jitted
(params, opt_state, batch) -> (params, opt_state, loss) function with donated buffers, blocking only at
the end. The trainer side is the real `train_and_evaluate` (validation, sharded init, per-step key,
metric fetch every <= 16 steps, JSONL logging, one checkpoint, tqdm off).

Fixed costs (imports, compile, the checkpoint, init) are removed by timing each side at two step counts
and dividing the difference of the wall times by the difference of the step counts. Prints the setup,
per-step times and the ratio trainer / bare (target <= 1.05).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from kexue_jax import data
from kexue_jax.core import train
from kexue_jax.nn import mlp


def _config(hidden, batch, steps, dataset):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = dataset
    c.model = "kexue_jax.nn.mlp.ImageClassifier"
    ds = data.load(dataset, "train")
    c.model_kwargs = dict(image_shape=ds.example_shape["image"], hidden=hidden, num_classes=10, levels=ds.levels)
    c.loss = "kexue_jax.nn.mlp.classifier_loss"
    c.optimizer = "optax.adam"
    c.learning_rate = 1e-3
    c.batch_size = batch
    c.num_steps = steps
    c.log_every = 50
    c.checkpoint_every = steps
    c.keep_checkpoints = 1
    c.mesh = dict(data=-1)
    c.progress = False
    return c


def time_trainer(hidden, batch, steps, dataset) -> float:
    config = _config(hidden, batch, steps, dataset)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        return time.perf_counter() - t0


def time_bare(hidden, batch, steps, dataset) -> float:
    t0 = time.perf_counter()
    ds = data.load(dataset, "train")
    model = mlp.ImageClassifier(image_shape=ds.example_shape["image"], hidden=hidden, num_classes=10,
                                levels=ds.levels, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def step(params, opt_state, batch):
        def loss_fn(p):
            return mlp.classifier_loss(nnx.merge(graphdef, p), batch, key=None)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    device = jax.devices()[0]
    loss = None
    for s in range(steps):
        b = jax.device_put(ds.batch(train.batch_indices(s, len(ds), batch, 0)), device)
        params, opt_state, loss = step(params, opt_state, b)
    jax.block_until_ready(loss)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", default="512,512")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", default="200,1200", help="the two step counts")
    p.add_argument("--dataset", default="mnist5k")
    a = p.parse_args()
    hidden = tuple(int(h) for h in a.hidden.split(","))
    n1, n2 = (int(s) for s in a.steps.split(","))
    print(f"setup: jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()} "
          f"({jax.devices()[0].device_kind}), {platform.processor() or platform.machine()}, "
          f"cores {os.cpu_count()}")
    print(f"model: MLP {hidden} on {a.dataset}, batch {a.batch}, optax.adam; steps {n1} and {n2}; "
          f"repeats {a.repeats}; per-step time = (t({n2}) - t({n1})) / {n2 - n1}")
    results = {"bare": [], "trainer": []}
    for fn in (time_bare, time_trainer):  # warm-up: dataset parse cache, backend start, imports
        fn(hidden, a.batch, 2, a.dataset)
    for r in range(a.repeats):
        for name, fn in (("bare", time_bare), ("trainer", time_trainer)):
            t1 = fn(hidden, a.batch, n1, a.dataset)
            t2 = fn(hidden, a.batch, n2, a.dataset)
            results[name].append((t2 - t1) / (n2 - n1))
        print(f"  repeat {r}: bare {results['bare'][-1] * 1e3:.3f} ms/step, "
              f"trainer {results['trainer'][-1] * 1e3:.3f} ms/step")
    bare = statistics.median(results["bare"])
    trainer = statistics.median(results["trainer"])
    print(f"median: bare {bare * 1e3:.3f} ms/step, trainer {trainer * 1e3:.3f} ms/step")
    print(f"ratio trainer/bare = {trainer / bare:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
