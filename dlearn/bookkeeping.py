"""The loop's bookkeeping, one object or call each (after big_vision's `utils.itstime`, `Chrono`,
`steps`): intervals and durations resolved to steps, the dispatch plan, the periodic-action test, timing, and
the check of each dispatch for non-finite values.
"""

from __future__ import annotations

import contextlib
import logging
import time

import jax

from dlearn.errors import UserError


def interval(value: int, steps_per_epoch: int) -> int:
  """An interval in steps (evaluation, checkpoints): `value` if positive, else (-1) one epoch."""
  return value if value > 0 else steps_per_epoch


def total_steps(config, steps_per_epoch: int) -> int:
  """config.num_train_steps if positive, else config.num_epochs epochs, at most
  config.max_train_steps if that is positive (a recipe's bound for large datasets)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  steps = int(config.num_epochs * steps_per_epoch)
  return min(steps, config.max_train_steps) if config.max_train_steps > 0 else steps


def itstime(step: int, every: int, total: int) -> bool:
  """Whether a periodic action (log, evaluation, checkpoint) is due after `step`: every `every`
  steps and at the end."""
  return step % every == 0 or step == total


def dispatch_plan(
  first_step: int, total_steps: int, steps_per_dispatch: int, intervals
) -> list[tuple[int, int]]:
  """[(steps done before, steps in this dispatch)] from `first_step` to `total_steps`. A dispatch
  runs `steps_per_dispatch` steps unless a boundary (a multiple of one of `intervals`: logging,
  evaluation, checkpoints; or the end) comes sooner; the steps up to that boundary then run one
  per dispatch, so every boundary ends a dispatch and only two step functions are ever compiled."""
  plan, step = [], first_step
  while step < total_steps:
    boundary = min([total_steps] + [(step // i + 1) * i for i in intervals])
    length = steps_per_dispatch if boundary - step >= steps_per_dispatch else 1
    plan.append((step, length))
    step += length
  return plan


class Timing:
  """Wall-clock seconds of a run's phases: the first dispatch (its compilation included), the
  steps after it, compilation, evaluations, and loading data onto the devices."""

  def __init__(self):
    self.first_dispatch_seconds = self.eval_seconds = self.data_load_seconds = 0.0
    self.compile_seconds = self.eval_compile_seconds = 0.0
    self.first_dispatch_steps = 0
    self._start = time.perf_counter()

  @contextlib.contextmanager
  def timed(self, phase: str):
    """`with timing.timed('eval'):` adds the block's seconds to `<phase>_seconds`."""
    start = time.perf_counter()
    yield
    name = f'{phase}_seconds'
    setattr(self, name, getattr(self, name) + time.perf_counter() - start)

  def start(self):
    """Starts the clock of the first dispatch (its compilation included)."""
    self._start = time.perf_counter()

  def first_dispatch_done(self, state, num_steps: int):
    """Waits for the first dispatch and starts the clock of the steps after it."""
    jax.block_until_ready(state)
    self.first_dispatch_seconds = time.perf_counter() - self._start
    self.first_dispatch_steps = num_steps
    logging.info(
      'First dispatch (%d step(s), compilation included) took %.1f s.',
      num_steps,
      self.first_dispatch_seconds,
    )
    self._start = time.perf_counter()

  def summary(self, steps_run: int) -> tuple[float, dict]:
    """(seconds since the first dispatch ended, evaluations included; the timing record)."""
    seconds = time.perf_counter() - self._start
    return seconds, {
      'first_dispatch_steps': self.first_dispatch_steps,
      'steps_after_first_dispatch': max(steps_run - self.first_dispatch_steps, 0),
      'first_dispatch_seconds': self.first_dispatch_seconds,
      'compile_seconds': self.compile_seconds,
      'eval_compile_seconds': self.eval_compile_seconds,
      'eval_seconds': self.eval_seconds,
      'data_load_seconds': self.data_load_seconds,
    }


class NonFiniteError(UserError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""


class NonFiniteCheck:
  """Checks each dispatch's sums for non-finite steps once the next dispatch is queued (so the
  device is never idle for it), and before a checkpoint (never save a state that followed a
  non-finite step). Stops the run naming the step, or with `skip` counts and goes on."""

  def __init__(self, skip: bool, last_checkpoint):
    self.skip = skip
    self.skipped = 0
    self._last_checkpoint = last_checkpoint  # () → (step or None, directory)
    self._pending = None

  def push(self, first_step: int, last_step: int, sums):
    """Queues dispatch [first_step, last_step]'s sums and checks the one before it."""
    self.flush()
    self._pending = (first_step, last_step, sums)

  def flush(self):
    """Checks the queued dispatch, blocking until it is done."""
    if self._pending is None:
      return
    first, last, sums = self._pending
    self._pending = None
    sums = jax.device_get(sums)
    if not sums['nonfinite']:
      return
    where = (
      f'at step {first}'
      if first == last
      else f'at step {int(sums["first_nonfinite_step"])} (steps {first}-{last} ran as one dispatch)'
    )
    if self.skip:
      self.skipped += int(sums['nonfinite'])
      logging.warning(
        'Non-finite loss or gradient %s: update skipped (%d so far).', where, self.skipped
      )
      return
    step, directory = self._last_checkpoint()
    kept = (
      f'The last good checkpoint, step {step} in {directory}, is kept.'
      if step is not None
      else f'No checkpoint was written yet (none in {directory}).'
    )
    raise NonFiniteError(
      f'Non-finite loss or gradient {where}; training stopped without applying it. {kept} '
      'Lower config.learning_rate, or set --config.skip_nonfinite_steps=True to skip such steps.'
    )
