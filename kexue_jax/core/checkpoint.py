"""Atomic, resumable checkpoints with orbax-checkpoint's `CheckpointManager`.

Orbax writes each step into a temporary directory and renames it only once every file is on disk, so a
process killed mid-save leaves the previous checkpoint as the latest restorable one. `restore` always
takes an abstract target (`jax.ShapeDtypeStruct`s carrying the *current* shardings): optax's NamedTuple
states keep their types, and a checkpoint written on 8 devices restores onto 1 (or the reverse).
"""
from __future__ import annotations

import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "abstract_like"]

# Test hook, never set in normal use: "kill_after_save:STEP" or "kill_during_save:STEP" sends SIGKILL to
# this process right after (or in the middle of) saving STEP, so tests can prove nothing is lost.
FAULT_ENV = "KEXUE_JAX_TEST_FAULT"


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs of `tree`, with `shardings` (a matching tree) if given."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=getattr(x, "sharding", None)), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _fault(kind: str, step: int) -> bool:
    spec = os.environ.get(FAULT_ENV, "")
    return spec == f"{kind}:{step}"


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager`: keep-last-N, async saves, restore with a target."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Starts saving `state` as `step` (asynchronously; `wait` or the next save completes it)."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        if _fault("kill_during_save", step):
            os.kill(os.getpid(), signal.SIGKILL)
        if _fault("kill_after_save", step):
            self._manager.wait_until_finished()
            os.kill(os.getpid(), signal.SIGKILL)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restores `step` (default: latest) into the structure, dtypes and shardings of the target."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def leaf_signature(self, step: int) -> list[tuple[tuple[int, ...], str]]:
        """The sorted (shape, dtype) of every array saved at `step`, read from the metadata only."""
        meta = self._manager.item_metadata(step)
        tree = getattr(meta, "tree", meta)
        leaves = jax.tree.leaves(tree, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
        return sorted((tuple(m.shape), str(m.dtype)) for m in leaves)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
