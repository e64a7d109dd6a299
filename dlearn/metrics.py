"""Metrics as sums and counts until reported; JSON-lines and TensorBoard writers; console progress.

A step returns sums over its examples (`loss_sum`, `correct`, `count`); averages are taken once, at
report time, so a short or padded batch is weighted by what it really holds.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax


def summarize(totals: dict) -> dict[str, float]:
  """{'loss_sum', 'correct', 'count'} sums → {'loss', 'accuracy', 'count'}."""
  count = float(totals['count'])
  summary = {
    'loss': float(totals['loss_sum']) / max(count, 1.0),
    'accuracy': float(totals['correct']) / max(count, 1.0),
    'count': int(count),
  }
  if totals.get('nonfinite'):
    summary['nonfinite_steps'] = int(totals['nonfinite'])
  return summary


def _not_library_chatter(record) -> bool:
  noisy = ('/orbax/', '/tensorflow_datasets/', '/grain/')
  return record.levelno >= logging.WARNING or not any(n in record.pathname for n in noisy)


def quiet_library_logs():
  """Orbax, tfds and grain log every save and read at INFO; keep their warnings and errors."""
  from absl import logging as absl_logging

  absl_logging.get_absl_logger().addFilter(_not_library_chatter)


def _drop_records_after(path: str, step: int):
  """A resumed run repeats the steps after its checkpoint: drop what a killed run logged for them,
  so the log has no duplicate (and, the checkpoint's steps being logged, no gap)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)['step'] <= step:
        kept.append(line)
    except (ValueError, KeyError):
      pass  # a line cut short by a kill
  with open(path, 'w') as f:
    f.writelines(kept)


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tensorboard`
  (view with `tensorboard --logdir WORKDIR`). Only process 0 writes; the others do nothing."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    # tensorboard's own event writer: TensorBoard files without TensorFlow.
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'metrics.jsonl')
    _drop_records_after(path, resume_step)
    self._jsonl = open(path, 'a')
    self._events = EventFileWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, prefix: str, scalars: dict[str, float]):
    if not self._active:
      return
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    now = time.time()
    record = {
      'step': int(step),
      'time': now,
      **{f'{prefix}/{k}': float(v) for k, v in scalars.items()},
    }
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    values = [
      Summary.Value(tag=k, simple_value=v) for k, v in record.items() if k not in ('step', 'time')
    ]
    self._events.add_event(Event(wall_time=now, step=int(step), summary=Summary(value=values)))
    self._events.flush()

  def close(self):
    if self._active:
      self._jsonl.close()
      self._events.close()


def eta(remaining: float, per_second: float) -> str:
  """'HH:MM:SS' to do `remaining` more at `per_second`; '-' while no rate is known."""
  return time.strftime('%H:%M:%S', time.gmtime(remaining / per_second)) if per_second else '-'


class Progress:
  """One console line per report: step, steps/s, ETA, loss, accuracy."""

  def __init__(self, total_steps: int, first_step: int = 0):
    self.total_steps = total_steps
    self.restart(first_step)

  def restart(self, step: int):
    """Starts the steps/s clock afresh at `step` (after compilation or an evaluation)."""
    self._last_step, self._last_time = step, time.perf_counter()

  def report(self, step: int, scalars: dict[str, float]) -> float:
    """Logs a line; returns steps/s since the last report (0.0 right after a restart)."""
    now = time.perf_counter()
    steps = step - self._last_step
    steps_per_second = steps / max(now - self._last_time, 1e-9) if steps else 0.0
    self._last_step, self._last_time = step, now
    rate = f'{steps_per_second:.2f} steps/s  ETA {eta(self.total_steps - step, steps_per_second)}'
    logging.info(
      'step %d/%d  %s  loss %.4f  accuracy %.4f',
      step,
      self.total_steps,
      rate,
      scalars['loss'],
      scalars['accuracy'],
    )
    return steps_per_second
