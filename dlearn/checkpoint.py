"""Orbax checkpoints of the train state together with the input iterator's position.

A checkpoint holds global jax.Arrays (the replicated train state) and the grain iterator state as
JSON: no pickle anywhere. Restoring targets an abstract state built with `jax.eval_shape` and
placed on the current mesh, so a checkpoint written on 8 devices restores onto 4 or 1.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """Saves asynchronously every so many steps, keeps the newest `max_to_keep`, and commits
  atomically (a step directory becomes visible only once complete)."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep,
                                           create=not read_only,
                                           read_only=read_only,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(directory(workdir), options=options,
                                          item_names=('state', 'data'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict | None):
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})))

  def restore(self, step: int, abstract_state, mesh):
    """(state placed replicated on `mesh`, iterator state) of checkpoint `step`."""
    replicated = NamedSharding(mesh, P())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
