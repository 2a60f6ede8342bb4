"""Meshes and shardings from config (the jit + Mesh/NamedSharding model).

A config names its mesh as {'data': -1, 'fsdp': 1}: 'data' replicates parameters and splits the batch,
'fsdp' splits the batch *and* shards each large parameter (and its optimizer state) along its largest
divisible dimension, as big_vision and MaxText do. The step is `jax.jit` with these shardings as
in/out shardings; XLA inserts the collectives. Explicit per-device code, where a technique needs it,
uses `jax.shard_map` on the same mesh. No pmap, no experimental pjit, no mesh context managers.

Multi-host (TPU pods, SLURM): set `config.distributed = True`; `maybe_initialize_distributed` calls
`jax.distributed.initialize()` (which auto-detects the cluster) before the mesh is built, and every host
then runs the same program. Each host builds the global batch indices and places only its addressable
shards (`jax.make_array_from_callback`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kexue_jax.core.config import mesh_size

__all__ = ["make_mesh", "batch_axes", "batch_sharding", "replicated", "param_shardings", "put_batch",
           "maybe_initialize_distributed", "check_batch_size", "data_parallel_step"]

# Leaves smaller than this stay replicated under fsdp: sharding a bias costs more than it saves.
FSDP_MIN_SIZE = 2 ** 12


def maybe_initialize_distributed(config: Any) -> None:
    """Calls `jax.distributed.initialize()` once when `config.distributed` is true."""
    if config.get("distributed", False) and jax.process_count() == 1:
        jax.distributed.initialize()


def make_mesh(mesh_config: Any = None, devices: list | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with Auto axes, so GSPMD propagates shardings."""
    devices = list(jax.devices()) if devices is None else list(devices)
    axes = mesh_size(mesh_config, len(devices))
    names = tuple(axes)
    shape = tuple(axes[n] for n in names)
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                         devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """Mesh axes the leading (batch) dimension is split over."""
    return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _leaf_spec(shape: tuple[int, ...], fsdp: int) -> P:
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return P()
    # Largest dimension divisible by the fsdp size; ties go to the later (usually output) dimension.
    candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return P(*spec)


def param_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays / ShapeDtypeStructs (params or optimizer state)."""
    fsdp = dict(zip(mesh.axis_names, mesh.devices.shape)).get("fsdp", 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(tuple(x.shape), fsdp)), abstract_tree)


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Places a host batch (the global batch, identical on every host) with `sharding`."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def check_batch_size(batch_size: Any, mesh_config: Any = None) -> dict[str, int]:
    """The resolved mesh axes; `batch_size` must split over the batch-parallel devices (data × fsdp).

    For runners with their own loop (the shared trainer validates its config itself); call it before
    anything compiles."""
    axes = mesh_size(mesh_config, jax.device_count())
    n = axes.get("data", 1) * axes.get("fsdp", 1)
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
            and batch_size % n == 0):
        raise ValueError(f"`batch_size` must be a positive multiple of the batch-parallel device count {n} "
                         f"(mesh {axes}); got {batch_size!r}")
    return axes


def data_parallel_step(loss_fn: Callable[..., tuple[Any, Any]], tx: optax.GradientTransformation, mesh: Mesh,
                       num_batch_args: int) -> Callable:
    """A jitted optimizer step for runners with their own loop, data-parallel on `mesh`.

    loss_fn(params, *batch) -> (loss, aux) on the pure parameter pytree with `num_batch_args` batch arrays.
    Returns step(params, opt_state, *batch) -> (params, opt_state, loss): parameters and optimizer state
    replicated, every batch array split over the mesh's batch axes, the old state donated; XLA inserts the
    gradient all-reduce."""
    rep, bsh = replicated(mesh), batch_sharding(mesh)

    def step(params, opt_state, *batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, in_shardings=(rep, rep) + (bsh,) * num_batch_args, out_shardings=(rep, rep, rep),
                   donate_argnums=(0, 1))
