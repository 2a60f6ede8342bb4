"""The one shared training loop, made of pure functions.

A technique supplies `loss_fn(model, batch, *, key) -> (loss, aux)` (see CONTRIBUTING.md); this module
turns it into `train_step(state, batch, *, key) -> (state, metrics)`, jits it over a Mesh with
in/out shardings and donated state, and runs it in `train_and_evaluate(config, workdir)`:

    validate config (plain Python, before anything compiles)
    build the mesh, load the data, init params + optimizer state directly into their shardings
    restore the latest checkpoint if `workdir` has one (resume)
    loop: step -> every <= 16 steps fetch metrics, stop on a non-finite value -> log -> checkpoint
    evaluate on the test split -> results.json

Determinism: the batch for step s is a pure function of (seed, s) and the step key is
`fold_in(base_key, s)`, so a run resumed from step s replays steps s+1.. bit for bit. metrics.jsonl is
resumed too: rows after s are dropped and redone, the metrics of the steps since the last logged row are
saved beside each checkpoint (`workdir/train_window/`), and an evaluation due at s is redone, so the file
reads as one uninterrupted run. Running a finished workdir again only re-evaluates (results.json keeps the
training run's `train/` numbers); a `num_steps` below the latest checkpoint is a ConfigError.

Config keys read here (all set explicitly in each experiment config):
  seed, dataset, data_dir (optional), model (import path), model_kwargs, loss (import path),
  loss_kwargs (optional), optimizer (import path of an optax factory, e.g. 'optax.adam'),
  learning_rate, optimizer_kwargs (optional), lr_schedule ('constant'|'cosine'|'warmup_cosine'),
  warmup_steps, grad_clip_norm (optional), batch_size (global), num_steps, mesh ({'data': -1}),
  log_every (50), checkpoint_every (num_steps), keep_checkpoints (2), eval_every (0: only at the end),
  ema_decay (optional), evaluate (optional import path of evaluate(model, dataset, *, key, config,
  workdir) -> dict; its optional attribute `check_config(config)` validates the keys only it reads, with
  the rest of the config, before training), data_init (optional import path of data_init(model, batch, *, key) -> None that
  sets parameters from the first batch, e.g. ActNorm; run once on a fresh start, never on resume),
  distributed (False).
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kexue_jax.core import checkpoint as ckpt_lib
from kexue_jax.core import config as config_lib
from kexue_jax.core import metrics as metrics_lib
from kexue_jax.core import sharding as sharding_lib

__all__ = ["TrainState", "NonFiniteError", "make_train_step", "make_optimizer", "batch_indices",
           "init_state", "jit_train_step", "train_and_evaluate", "merge_model"]

# Fetch metrics at least this often: dispatching more than ~32 steps with collectives on simulated
# XLA:CPU devices deadlocks (spec/environment.md §2.4); 16 always worked.
MAX_STEPS_WITHOUT_SYNC = 16
# Key streams outside the per-step range fold_in(base_key, step), step < 2**31 - 2.
DATA_INIT_STREAM = 2 ** 31 - 2
EVAL_STREAM = 2 ** 31 - 1


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree, so it jits, shards and checkpoints."""

    step: jax.Array  # int32 scalar: number of updates applied so far
    params: Any  # nnx.State of nnx.Param leaves (or any pytree when the technique has no NNX module)
    opt_state: Any  # optax state for `params`
    model_state: Any  # nnx.State of every non-Param variable (batch stats, power-iteration vectors)
    ema_params: Any  # EMA of params, or None


class NonFiniteError(RuntimeError):
    """A training metric, or the parameters about to be checkpointed, became NaN or infinite."""


def make_optimizer(config: Any, optimizer_factory: Callable[..., optax.GradientTransformation]
                   ) -> optax.GradientTransformation:
    """The optax optimizer of a config: schedule -> factory(learning_rate=..., **kwargs) -> clipping."""
    lr = float(config.learning_rate)
    schedule = config.get("lr_schedule", "constant")
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, config.num_steps)
    elif schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, config.num_steps)
    tx = optimizer_factory(learning_rate=lr, **dict(config.get("optimizer_kwargs") or {}))
    if config.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    return tx


def merge_model(graphdef: Any, params: Any, model_state: Any) -> Any:
    """The NNX module for `params` (or the params themselves when there is no graphdef)."""
    # copy=True: fresh Variables owned by the current trace, so a loss may update non-Param state
    # (counters, power-iteration vectors) inside jax.grad without a TraceContextError.
    return params if graphdef is None else nnx.merge(graphdef, params, model_state, copy=True)


def make_train_step(loss_fn: Callable[..., tuple[jax.Array, dict]], tx: optax.GradientTransformation,
                    graphdef: Any = None, *, ema_decay: float | None = None) -> Callable[..., Any]:
    """Builds the pure `train_step(state, batch, *, key) -> (state, metrics)`.

    Args:
      loss_fn: `loss_fn(model, batch, *, key) -> (scalar loss, dict of scalar aux metrics)`.
      tx: the optax optimizer.
      graphdef: NNX graph definition of the model; None when the loss takes a raw params pytree.
      ema_decay: if set, `ema_params <- decay * ema_params + (1 - decay) * params` after each update.
    """

    def train_step(state: TrainState, batch: Any, *, key: jax.Array) -> tuple[TrainState, dict]:
        def objective(params):
            model = merge_model(graphdef, params, state.model_state)
            loss, aux = loss_fn(model, batch, key=key)
            new_model_state = state.model_state if graphdef is None else nnx.state(model, nnx.Not(nnx.Param))
            return loss, (aux, new_model_state)

        (loss, (aux, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema_decay is not None:
            ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state, model_state, ema), metrics

    return train_step


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of the examples in the batch of `step` (0-based): epoch-wise permutations, no state.

    Epoch e uses `default_rng([seed, e]).permutation(num_examples)`; the last partial batch of an epoch
    is dropped, so every batch has `batch_size` examples.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"`batch_size` must be <= the number of training examples ({num_examples}); "
                         f"got {batch_size}")
    epoch, offset = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[offset * batch_size:(offset + 1) * batch_size]


def init_state(model_factory: Callable[..., Any], model_kwargs: dict, tx: optax.GradientTransformation,
               *, seed: int, mesh: jax.sharding.Mesh, ema: bool = False,
               before_compile: Callable[[Any, TrainState], None] | None = None) -> tuple[Any, TrainState, Any]:
    """Initialises the train state directly into its shardings.

    `before_compile(graphdef, abstract_state)`, if given, runs after the abstract shapes are known and before
    the init is compiled (the trainer traces its train step there, so loss mistakes surface first).

    Returns:
      (graphdef, state, state_shardings). Shapes come from `jax.eval_shape`, shardings from the mesh
      rules in `sharding.param_shardings`, and the jitted init writes each leaf where it belongs.
    """

    def build():
        model = model_factory(**model_kwargs, rngs=nnx.Rngs(seed))
        graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
        return graphdef, params, model_state

    # The static graph definition, from an abstract model: no parameter is allocated here.
    graphdef = nnx.split(nnx.eval_shape(lambda: model_factory(**model_kwargs, rngs=nnx.Rngs(seed))))[0]

    def init():
        _, params, model_state = build()
        ema_params = jax.tree.map(jnp.copy, params) if ema else None
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state, ema_params)

    abstract = jax.eval_shape(init)
    if before_compile is not None:
        before_compile(graphdef, abstract)
    shardings = state_shardings(abstract, mesh)
    state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state, shardings


def apply_data_init(data_init: Callable[..., None], graphdef: Any, state: TrainState, batch: Any,
                    tx: optax.GradientTransformation, shardings: TrainState, *, key: jax.Array) -> TrainState:
    """Runs `data_init(model, batch, *, key)` once (jitted, sharded) and rebuilds the optimizer state.

    Data-dependent initialisation (ActNorm in Glow) sets parameters from statistics of a real batch; the
    optimizer state is re-initialised from the new parameters so no optimizer sees the random init.
    """

    def init(state, batch):
        model = merge_model(graphdef, state.params, state.model_state)
        data_init(model, batch, key=key)
        _, params, model_state = nnx.split(model, nnx.Param, ...)
        ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
        return TrainState(state.step, params, tx.init(params), model_state, ema)

    return jax.jit(init, out_shardings=shardings)(state, batch)


def state_shardings(abstract_state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Params, optimizer state and EMA follow the parameter rules; step and model state replicate."""
    rep = sharding_lib.replicated(mesh)
    return TrainState(
        step=rep,
        params=sharding_lib.param_shardings(abstract_state.params, mesh),
        opt_state=sharding_lib.param_shardings(abstract_state.opt_state, mesh),
        model_state=jax.tree.map(lambda _: rep, abstract_state.model_state),
        ema_params=None if abstract_state.ema_params is None else
        sharding_lib.param_shardings(abstract_state.ema_params, mesh),
    )


def jit_train_step(train_step: Callable[..., Any], mesh: jax.sharding.Mesh, shardings: TrainState
                   ) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]:
    """`step(state, batch, base_key)`: jitted with shardings and donated state; folds the step into the key."""

    def step(state, batch, base_key):
        return train_step(state, batch, key=jax.random.fold_in(base_key, state.step))

    rep = sharding_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, sharding_lib.batch_sharding(mesh), rep),
                   out_shardings=(shardings, rep), donate_argnums=0)


def _restore_matching(checkpointer: ckpt_lib.Checkpointer, abstract_state: Any, step: int, workdir: str) -> Any:
    """Restores `step`; a checkpoint of another config's state (other tree structure or shapes) is a named
    error about `workdir` instead of orbax's internals (or, for shapes, a silent mis-restore)."""
    target = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), abstract_state)
    want = sorted((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(abstract_state))
    try:  # from the metadata first: a failed restore leaves orbax's reads pending
        if checkpointer.leaf_signature(step) != want:
            raise ValueError("the saved arrays have other shapes or dtypes")
        restored = checkpointer.restore(abstract_state, step)
        problem = None
        got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), restored)
        if got != target:
            problem = "shapes or dtypes differ"
    except (ValueError, TypeError, KeyError) as e:
        problem = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if problem is not None:
        raise config_lib.ConfigError(
            f"`workdir` {workdir} holds a checkpoint (step {step}) whose state does not match this config's "
            f"({problem}); use the config that wrote it or a fresh workdir")
    return restored


def _latest_checkpoint_step(ckpt_dir: str) -> int | None:
    """The latest complete checkpoint step in `ckpt_dir` (None if none), read without creating anything."""
    if not os.path.isdir(ckpt_dir):
        return None
    probe = ckpt_lib.Checkpointer(ckpt_dir, async_save=False)
    try:
        return probe.latest_step()
    finally:
        probe.close()


def _window_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, "train_window", f"{int(step)}.json")


def _save_window(workdir: str, step: int, window: list[tuple[int, dict]], *, keep) -> None:
    """Writes the not-yet-logged steps' metrics for the checkpoint of `step` (atomically; before the checkpoint,
    so a checkpoint never lacks its window) and removes the files of checkpoints no longer kept. Only JAX
    process 0 writes (every process computes the same window)."""
    if jax.process_index() != 0:
        return
    directory = os.path.dirname(_window_path(workdir, step))
    if window:
        os.makedirs(directory, exist_ok=True)
        rows = [[int(s), {k: [float(np.asarray(v)), str(np.asarray(v).dtype)] for k, v in m.items()}]
                for s, m in window]
        tmp = _window_path(workdir, step) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f)
        os.replace(tmp, _window_path(workdir, step))
    if os.path.isdir(directory):
        keep = {int(k) for k in keep} | {int(step)}
        for name in os.listdir(directory):
            stem = name.split(".")[0]
            if stem.isdigit() and int(stem) not in keep:
                os.remove(os.path.join(directory, name))


def _load_window(workdir: str, step: int) -> list[tuple[int, dict]]:
    path = _window_path(workdir, step)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = json.load(f)
    return [(s, {k: np.asarray(v, dtype) for k, (v, dtype) in m.items()}) for s, m in rows]


def _previous_train_results(workdir: str, metrics_path: str, num_steps: int) -> dict[str, float]:
    """The 'train/' results of the run that trained this workdir: its results.json, else its last logged row."""
    path = os.path.join(workdir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            prev = json.load(f)
        out = {k: v for k, v in prev.items() if k.startswith("train/")}
        if out:
            return out
    if not os.path.exists(metrics_path):  # e.g. a checkpoint copied into a fresh workdir to re-evaluate it
        return {}
    rows = [r for r in metrics_lib.read_jsonl(metrics_path) if r.get("step") == num_steps
            and any(k.startswith("train/") for k in r)]
    return {k: v for k, v in rows[-1].items() if k.startswith("train/")} if rows else {}


def _check_finite(history: list[tuple[int, dict]]) -> None:
    for step, metrics in history:
        for name, value in metrics.items():
            if not np.all(np.isfinite(value)):
                raise NonFiniteError(
                    f"metric '{name}' became {float(value)} at step {step}; training stopped and the last "
                    f"good checkpoint was kept (lower `learning_rate`, set `grad_clip_norm`, or check the data)")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])) if leaves else jnp.asarray(True)


def _check_params_finite(params: Any, step: int) -> None:
    """Before a checkpoint: the update of `step` can make the parameters (any pytree) NaN/inf while every logged
    loss (computed before it) was finite; saving them would replace a good checkpoint with a bad one."""
    if not bool(_all_finite(params)):
        raise NonFiniteError(
            f"the parameters became non-finite in the update of step {step} (its loss was finite); training "
            f"stopped before checkpointing them and the last good checkpoint was kept (lower `learning_rate`, "
            f"set `grad_clip_norm`, or check the loss's gradient)")


def _mean_metrics(history: list[tuple[int, dict]]) -> dict[str, float]:
    keys = history[-1][1].keys()
    return {k: float(np.mean([m[k] for _, m in history])) for k in keys}


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
    """Trains the config's technique in `workdir` (resuming if it holds a checkpoint), then evaluates.

    Returns:
      The flat dict written to `workdir/results.json`: final train metrics ('train/<name>'), the evaluate
      function's metrics, 'train/steps_per_s' and 'train/wall_s'.
    Raises:
      ConfigError before anything compiles if the config is wrong; NonFiniteError if a metric becomes
      NaN/inf (the last good checkpoint is kept).
    """
    sharding_lib.maybe_initialize_distributed(config)
    resolved = config_lib.validate_train_config(config, num_devices=jax.device_count())
    from kexue_jax import data as data_lib

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding_lib.make_mesh(config.get("mesh"))
    train_ds = data_lib.load(config.dataset, "train", data_dir=config.get("data_dir"))
    if config.batch_size > len(train_ds):
        raise config_lib.ConfigError(f"`batch_size` must be <= the number of training examples "
                                     f"({len(train_ds)}); got {config.batch_size}")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    latest = _latest_checkpoint_step(ckpt_dir)
    if latest is not None and latest > int(config.num_steps):
        raise config_lib.ConfigError(
            f"`num_steps` must be >= the step of the latest checkpoint in `workdir` {workdir} ({latest}): "
            f"training cannot go back; got {config.num_steps} (use the config that wrote it or a fresh workdir)")
    tx = make_optimizer(config, resolved["optimizer"])
    loss_fn = functools.partial(resolved["loss"], **dict(config.get("loss_kwargs") or {}))
    ema_decay = config.get("ema_decay")
    first_batch = train_ds.batch(batch_indices(0, len(train_ds), config.batch_size, config.seed))

    def trace_step(graphdef, abstract_state):
        # An abstract trace of one train step (no compilation): a bad `loss_kwargs` value, or a loss that
        # does not fit the model or data, raises here, before anything is compiled.
        step = make_train_step(loss_fn, tx, graphdef, ema_decay=ema_decay)
        jax.eval_shape(lambda s, b, k: step(s, b, key=k), abstract_state,
                       jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), first_batch),
                       jax.eval_shape(lambda: jax.random.key(0)))

    graphdef, state, shardings = init_state(resolved["model"], dict(config.get("model_kwargs") or {}), tx,
                                            seed=config.seed, mesh=mesh, ema=ema_decay is not None,
                                            before_compile=trace_step)
    step_fn = jit_train_step(make_train_step(loss_fn, tx, graphdef, ema_decay=ema_decay), mesh, shardings)

    checkpointer = ckpt_lib.Checkpointer(ckpt_dir, max_to_keep=config.get("keep_checkpoints", 2))
    start = latest  # read before anything compiled, above
    base_key = jax.random.key(config.seed)
    batch_put = sharding_lib.batch_sharding(mesh)
    if start is not None:
        state = _restore_matching(checkpointer, ckpt_lib.abstract_like(state, shardings), start, workdir)
        print(f"[kexue_jax] resumed from step {start} in {workdir}", flush=True)
    elif config.get("data_init"):
        data_init = config_lib.import_object(config.data_init, key="data_init")
        first = sharding_lib.put_batch(train_ds.batch(batch_indices(0, len(train_ds), config.batch_size,
                                                                    config.seed)), batch_put)
        state = apply_data_init(data_init, graphdef, state, first, tx, shardings,
                                key=jax.random.fold_in(base_key, DATA_INIT_STREAM))
    start = int(start or 0)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    num_steps = int(config.num_steps)
    log_every = int(config.get("log_every") or 50)
    ckpt_every = int(config.get("checkpoint_every") or num_steps)
    sync_every = min(log_every, MAX_STEPS_WITHOUT_SYNC)
    progress = metrics_lib.Progress(num_steps, start, enabled=config.get("progress", True))
    pending: list[tuple[int, dict]] = []
    # The steps since the last logged row, saved beside each checkpoint: a resumed run logs the same
    # averages as an uninterrupted one even when checkpoint_every is not a multiple of log_every.
    window: list[tuple[int, dict]] = _load_window(workdir, start) if start else []
    last_metrics: dict[str, float] = {}
    t0, steps_done = time.perf_counter(), 0
    try:
        if start and start != num_steps and config.get("eval_every") and start % config.eval_every == 0:
            # the resumed step's periodic evaluation (MetricWriter dropped any row of it: it may be unwritten)
            writer.write(start, _evaluate(config, resolved, graphdef, state, None))
        for step in range(start, num_steps):
            idx = batch_indices(step, len(train_ds), config.batch_size, config.seed)
            batch = sharding_lib.put_batch(train_ds.batch(idx), batch_put)
            state, metrics = step_fn(state, batch, base_key)
            done = step + 1
            pending.append((done, metrics))
            steps_done += 1
            if done % sync_every == 0 or done % ckpt_every == 0 or done == num_steps:
                fetched = jax.device_get(pending)  # blocks: also the multi-device deadlock guard
                _check_finite(fetched)
                window.extend(fetched)
                progress.update(len(pending), fetched[-1][1])
                pending = []
                if done % log_every == 0 or done == num_steps:
                    last_metrics = _mean_metrics(window)
                    writer.write(done, {f"train/{k}": v for k, v in last_metrics.items()})
                    window = []
                if done % ckpt_every == 0 or done == num_steps:
                    _check_params_finite((state.params, state.ema_params), done)
                    _save_window(workdir, done, window, keep=checkpointer.all_steps())
                    checkpointer.save(done, state)
            if config.get("eval_every") and done % config.eval_every == 0 and done != num_steps:
                writer.write(done, _evaluate(config, resolved, graphdef, state, None))
    finally:
        progress.close()
        checkpointer.close()
    wall = time.perf_counter() - t0

    results = {f"train/{k}": v for k, v in last_metrics.items()}
    results["train/steps"] = float(num_steps)
    results["train/wall_s"] = wall
    results["train/steps_per_s"] = steps_done / wall if steps_done else float("nan")
    if not steps_done:  # a finished workdir run again (evaluation only): keep the training run's numbers
        results.update(_previous_train_results(workdir, writer.path, num_steps))
    results.update(_evaluate(config, resolved, graphdef, state, workdir))
    evaluated = {k: v for k, v in results.items() if k.startswith(("test/", "eval/"))}
    if evaluated:  # no empty row when the config has no evaluate function
        writer.write(num_steps, evaluated)
    if jax.process_index() == 0:
        metrics_lib.plot_curves(metrics_lib.read_jsonl(writer.path), ["train/loss"],
                                os.path.join(workdir, "train_loss.png"))
        metrics_lib.write_results(workdir, results)
    return results


def _evaluate(config: Any, resolved: dict, graphdef: Any, state: TrainState, workdir: str | None) -> dict:
    if "evaluate" not in resolved:
        return {}
    from kexue_jax import data as data_lib

    test_ds = data_lib.load(config.dataset, "test", data_dir=config.get("data_dir"))
    params = state.ema_params if state.ema_params is not None else state.params
    model = merge_model(graphdef, params, state.model_state)
    key = jax.random.fold_in(jax.random.key(config.seed), EVAL_STREAM)
    out = resolved["evaluate"](model, test_ds, key=key, config=config, workdir=workdir)
    return {k: float(v) for k, v in out.items()}

