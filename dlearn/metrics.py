"""Metrics as sums and counts until reported; JSON-lines and TensorBoard writers; console progress.

A step returns sums over its examples (`loss_sum`, `correct`, `count`); averages are taken once, at
report time, so a short or padded batch is weighted by what it really holds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
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
  """Progress towards `total` steps or inputs on the console: how many are done, their rate and
  the ETA. The rate counts from the clock's last `restart` (with nothing done since, from the
  start; 0.0 while nothing is done), so a caller restarts it after compilation or an evaluation.

  Training `report`s a logged line per call (step, steps/s since the last report, ETA, loss,
  accuracy). Prediction `advance`s by each batch's inputs: a line on stderr, process 0 only,
  redrawn at most once a second (a new line each time where stderr is not a terminal), its
  clock restarted at the end of the first batch, which includes compilation."""

  def __init__(
    self, total: float, done: float = 0, label='predict', unit='inputs', per_unit: float = 1
  ):
    self.total = total
    self._label, self._unit, self._per_unit = label, unit, per_unit
    self._start = (done, time.perf_counter())
    self.restart(done)
    self._restarted = False  # by a caller or by the first `advance`
    self._drawn = None  # when `advance` last drew its line
    self._active = jax.process_index() == 0
    self._redraw = '\r' if sys.stderr.isatty() else ''

  def restart(self, done: int | None = None):
    """Starts the rate's clock afresh at `done` (default: what is done now)."""
    self.done = self.done if done is None else done
    self._since = (self.done, time.perf_counter())
    self._restarted = True

  def rate(self) -> float:
    """Per second since the clock's last restart; with nothing done since, since the start."""
    done, start = self._since if self.done > self._since[0] else self._start
    return (self.done - done) / max(time.perf_counter() - start, 1e-9) if self.done > done else 0.0

  def report(self, step: int, scalars: dict[str, float]) -> float:
    """Logs a line at `step`; returns steps/s since the last report (or restart)."""
    self.done = step
    steps_per_second = self.rate()
    self.restart()
    logging.info(
      'step %d/%d  %.2f steps/s  ETA %s  loss %.4f  accuracy %.4f',
      step,
      self.total,
      steps_per_second,
      eta(self.total - step, steps_per_second),
      scalars['loss'],
      scalars['accuracy'],
    )
    return steps_per_second

  def advance(self, count: float):
    """Counts `count` more inputs (or bytes, ...) done; draws the line when a second has passed
    since it was last drawn, or when all are done. A total of 0: not known (no ETA)."""
    self.done += count
    if not self._restarted:
      self.restart()
    now, finished = time.perf_counter(), self.done == self.total
    if self._active and (self._drawn is None or now - self._drawn >= 1 or finished):
      self._drawn = now
      rate, per = self.rate(), self._per_unit
      decimals = 0 if per == 1 else 1
      of = f'/{self.total / per:.{decimals}f}' if self.total else ''
      left = f'  ETA {eta(self.total - self.done, rate)}' if self.total else ''
      print(
        f'{self._redraw}{self._label}: {self.done / per:.{decimals}f}{of} {self._unit}  '
        f'{rate / per:.1f} {self._unit}/s{left}',
        end='\n' if finished or not self._redraw else '',
        file=sys.stderr,
        flush=True,
      )
