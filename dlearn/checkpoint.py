"""Orbax checkpoints of the train state together with the input iterator's position; preemption.

A checkpoint holds global jax.Arrays (the train state, however its sharding rule placed it: each
process writes only the shards it holds) and the grain iterator state as JSON: no pickle anywhere.
Restoring targets an abstract state built with `jax.eval_shape`, placed by the current sharding
rule on the current mesh, so a checkpoint written under one rule, device and process count
restores exactly under any other (8 devices 'fsdp' → 4 'fsdp' → 1 'replicate').
Orbax writes each checkpoint into a temporary folder and renames it when complete, so a crash
during a save never leaves a checkpoint that is later taken as complete.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from dlearn.errors import UserError

# The exit status of a run stopped by SIGTERM/SIGINT after saving (EX_TEMPFAIL: "try again";
# rerunning the same command resumes).
PREEMPTED_EXIT_STATUS = 75


class CheckpointWriteError(UserError, OSError):
  """A checkpoint could not be written (disk full, unwritable directory)."""


class IncompatibleStateError(UserError, ValueError):
  """A checkpoint's train state has other arrays or shapes than the one it is restored into."""


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """Saves asynchronously; keeps the newest `max_to_keep` checkpoints and, with `best_metric`, also
  the best one by that metric (e.g. 'eval/accuracy')."""

  def __init__(
    self,
    workdir: str,
    *,
    max_to_keep: int = 3,
    best_metric: str | None = None,
    best_mode: str = 'max',
    read_only: bool = False,
  ):
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    if best_metric:
      policies.append(
        ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric],
          reverse=best_mode == 'min',
          n=1,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=True,
      preservation_policy=None
      if read_only
      else ocp.checkpoint_managers.AnyPreservationPolicy(policies),
    )
    self.directory = directory(workdir)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(
    self, step: int, state, data_state: dict | None, metrics: dict | None = None, wait: bool = False
  ):
    try:
      self._manager.save(
        step,
        metrics=metrics,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})
        ),
      )
      if wait:
        self._manager.wait_until_finished()
    except OSError as e:  # also what an earlier asynchronous save left behind
      raise CheckpointWriteError(
        f'Could not write the checkpoint of step {step} to {self.directory}: {e}. Earlier '
        f'checkpoints are untouched (newest complete: step {self.latest_step()}); free space '
        'or fix permissions and rerun the same command to resume.'
      ) from e

  def restore(self, step: int, abstract_state, shardings):
    """(state, iterator state) of checkpoint `step`, each array of `abstract_state` placed by
    `shardings` (a tree of the same structure). A checkpoint of other shapes is refused, naming
    them, before any array is read."""
    differences = shape_differences(self.state_shapes(step), tree_shapes(abstract_state))
    if differences:
      raise IncompatibleStateError(
        f'The checkpoint of step {step} in {self.directory} holds a train state of other shapes '
        'than this config makes (shape, dtype):\n'
        + '\n'.join(differences)
        + "\nRestore it with the run's own config (a field that changes the model, optimizer "
        'or dataset changes the shapes).'
      )
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
    )
    return restored['state'], restored['data']

  def state_shapes(self, step: int) -> dict[str, tuple]:
    """{path: (shape, dtype name)} of every array of checkpoint `step`'s train state, read from
    its metadata (no array is loaded)."""
    return tree_shapes(self._manager.item_metadata(step)['state'])

  def reached_preemption(self, step: int) -> bool:
    """Multi-process jobs: JAX's preemption sync point, the step at which every process saves."""
    return self._manager.reached_preemption(step)

  def close(self):
    try:
      self._manager.wait_until_finished()
    except OSError as e:
      raise CheckpointWriteError(
        f'The last checkpoint could not be written to {self.directory}: '
        f'{e}. Earlier checkpoints are untouched.'
      ) from e
    finally:
      self._manager.close()


def tree_shapes(tree) -> dict[str, tuple]:
  """{path: (shape, dtype name)} of a tree of arrays, abstract arrays or checkpoint metadata."""
  return {
    jax.tree_util.keystr(path, simple=True, separator='.'): (tuple(x.shape), str(x.dtype))
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def shape_differences(saved: dict, wanted: dict, shown: int = 8) -> list[str]:
  """Lines naming the arrays whose (shape, dtype) differ between two `tree_shapes`, at most
  `shown` of them and a count of the rest."""
  lines = [
    f'  {path}: {saved.get(path, "absent")} in the checkpoint, {wanted.get(path, "absent")} now'
    for path in sorted(set(saved) | set(wanted))
    if saved.get(path) != wanted.get(path)
  ]
  return lines[:shown] + ([f'  ... and {len(lines) - shown} more'] if len(lines) > shown else [])


class StopSignals:
  """SIGTERM (preemption, schedulers) and SIGINT (Ctrl-C) ask the loop to stop at the next step
  boundary, after a checkpoint, instead of dying mid-step. A second Ctrl-C stops at once.

  In a multi-process job JAX's own preemption service catches SIGTERM and makes every process
  agree on the step (`Checkpointer.reached_preemption`); this handler then covers SIGINT.

  `deadline` (time.monotonic()), if set, stops the loop the same way once it has passed
  (config.max_train_seconds), or as soon as the steps' pace says the run would pass it: after
  MEASURE_SECONDS of steps or MEASURE_SHARE of the time the run had left at the first check,
  whichever is longer, the steps left at the pace since that check; every process takes process
  0's clock. (A run's first seconds of steps can be far slower than its later ones: README.)"""

  MEASURE_SECONDS, MEASURE_SHARE = 2.0, 0.25

  def __init__(self, deadline: float | None = None):
    self.received = None
    self.deadline = deadline
    self._pace_from = None  # (step, time) of the first check
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return  # Python takes signals in the main thread only; elsewhere the defaults stay
    for signum in (signal.SIGTERM, signal.SIGINT):
      if signum == signal.SIGTERM and jax.process_count() > 1:
        continue
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    logging.warning(
      '%s received: saving a checkpoint at the next step boundary, then stopping.', self.received
    )

  def stop_reason(
    self, checkpointer: Checkpointer, dispatch: int, step: int = 0, total_steps: int = 0
  ) -> str | None:
    """Why the loop should stop after this dispatch, at `step` of `total_steps`: the signal
    received, 'preemption' at JAX's sync point in a multi-process job (it counts calls, which
    every process makes once per dispatch), or the deadline; None to go on."""
    if self.received:
      return self.received
    if jax.process_count() > 1 and checkpointer.reached_preemption(dispatch):
      return 'preemption'
    if self.deadline is not None:
      now = time.monotonic()
      if self._pace_from is None:
        self._pace_from = (step, now)
      (first, since), late = self._pace_from, now > self.deadline
      window = max(self.MEASURE_SECONDS, self.MEASURE_SHARE * (self.deadline - since))
      if step > first and now - since >= window:
        late = late or now + (total_steps - step) * (now - since) / (step - first) > self.deadline
      late = np.array(late)
      if jax.process_count() > 1:
        late = multihost_utils.broadcast_one_to_all(late)
      if late:
        return 'config.max_train_seconds'
    return None

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
