"""The training loop: `train_and_evaluate(config, workdir)`, one linear function in sections.

What a step computes is in dlearn/steps.py, what is specific to a model in its family
(dlearn/models/), how training data reaches the devices in dlearn/data/train_data.py, the work
directory and what to start from in dlearn/runs.py, and the bookkeeping (durations, the
dispatch plan, timing, non-finite checks) in dlearn/bookkeeping.py.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from dlearn import (
  bookkeeping,
  checkpoint,
  evaluation,
  metrics,
  models,
  optimizers,
  parallel,
  runs,
  sharding,
)
from dlearn import steps as steps_lib
from dlearn.bookkeeping import NonFiniteError  # noqa: F401  (raised by the loop; callers catch it)
from dlearn.data import fetch, pipeline, train_data
from dlearn.errors import ConfigError
from dlearn.models.family import compute_dtype
from dlearn.runs import IncompatibleConfigError  # noqa: F401  (likewise)


def check_partition(config, info, mesh):
  """Refuses, before anything is compiled, a partition of examples the model cannot run."""
  parts = config.partition.parts
  if parts > 1 and config.mapping != 'shard_map':
    raise ConfigError(
      f'config.partition.parts={parts} needs a 2-D device mesh, which only '
      "config.mapping='shard_map' runs: add --config.mapping=shard_map."
    )
  family = models.family_of(config)
  per_device_batches = {
    what: parallel.per_device_batch_size(config[what], mesh, what)
    for what in ('batch_size', 'eval_batch_size')
  }
  family.check_partition(config, family.input_shape(config, info), parts, per_device_batches)


def _check_run_settings(config):
  parallel.is_per_device(config.mapping)  # an unknown mapping
  sharding.check(config)
  if not isinstance(config.steps_per_dispatch, int) or config.steps_per_dispatch < 1:
    raise ConfigError(
      f'config.steps_per_dispatch={config.steps_per_dispatch!r} must be a whole number of steps, '
      '1 or more (e.g. 1, or 8 for a small model).'
    )
  if config.loss_reduction not in steps_lib.LOSS_REDUCTIONS:
    raise ConfigError(
      f'Unknown config.loss_reduction {config.loss_reduction!r}: one of '
      f'{steps_lib.LOSS_REDUCTIONS}.'
    )
  if config.best_checkpoint_metric not in ('', 'eval/accuracy', 'eval/loss'):
    raise ConfigError(
      f'Unknown config.best_checkpoint_metric {config.best_checkpoint_metric!r}: '
      "'eval/accuracy' (the highest is kept), 'eval/loss' (the lowest), or '' for none."
    )
  models.family_of(config)  # an unknown model, before anything is read
  compute_dtype(config)  # an unknown dtype, likewise


def check_data(config, info):
  """Refuses, before anything is compiled, settings that do not fit the dataset."""
  if info.kind == 'image':
    channels = info.example_shape[-1]
    for field in ('mean', 'std'):
      if len(config.data[field]) != channels:
        raise ConfigError(
          f'config.data.{field} has {len(config.data[field])} values for images of {channels} '
          f'channels ({info.name!r}): give one per channel.'
        )


def derived_batch_size(num_examples: int, num_devices: int) -> int:
  """config.batch_size=0: a tenth of the train split, at most 16 (Fawaz et al. 2019's rule for
  time-series classifiers, which gives small datasets enough steps), rounded up to a multiple of
  the devices."""
  batch = min(16, max(1, num_examples // 10))
  return -(-batch // num_devices) * num_devices


def fold_eval_batch_size(eval_batch_size: int, examples: int, folds: int, num_devices: int) -> int:
  """A cross-validation fold's evaluation batch: the largest fold's held-out examples (so that
  every fold runs one program) in as few batches of at most `eval_batch_size` as hold them, of
  even size, rounded up to a multiple of the devices: the padding of a small held-out fold costs
  a ROCKET model as much as real examples (10 GunPoint cases were a batch of 16)."""
  largest = -(-examples // folds)
  batches = -(-largest // eval_batch_size)
  size = -(-largest // batches)
  return -(-size // num_devices) * num_devices


def _check_batches(config, mesh):
  """Both global batch sizes divide over the devices (else a clear error, before any work); a
  batch size of 0 is derived from the data later."""
  if config.batch_size:
    parallel.per_device_batch_size(config.batch_size, mesh)
  parallel.per_device_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  logging.info(
    '%d devices (%s) in %d process(es); global batch %d, %s%s.',
    mesh.size,
    jax.devices()[0].platform,
    jax.process_count(),
    config.batch_size,
    config.mapping,
    f'; every example split over {config.partition.parts} devices'
    if config.partition.parts > 1
    else '',
  )


def _dispatch_functions(config, mesh, data, tx, graphdef, info, timing):
  """(num_steps, state, inputs) → the compiled function of one dispatch of that many train steps
  (K, and 1 for the steps before a boundary K does not reach). Each is compiled ahead of its first
  call (timed as 'compile'), so that no dispatch's time includes compilation."""
  compiled = {}

  def dispatch_function(num_steps, state, inputs):
    if num_steps not in compiled:
      body = functools.partial(
        steps_lib.train_steps,
        num_steps=num_steps,
        draw=data.draw,
        unroll=config.unroll_dispatch,
        tx=tx,
        graphdef=graphdef,
        config=config,
        info=info,
        steps_per_epoch=data.steps_per_epoch,
      )
      mapped = parallel.map_over_devices(
        body,
        mesh,
        config.mapping,
        state_sharding=sharding.of(state),
        donate_state=True,
      )
      with timing.timed('compile'):
        compiled[num_steps] = mapped.lower(state, inputs).compile()
    return compiled[num_steps]

  return dispatch_function


def _kept_on_devices(eval_step, batches, state, timing):
  """With config.data.on_device the evaluation split stays on the devices too (read once, like
  the training split), and its step is compiled here, before the loop's clock starts: an
  evaluation then costs its computation only (streamed from the host, the fast recipe's final
  evaluation cost far more than its computation on a GPU: README, "On a GPU")."""
  with timing.timed('data_load'):
    batches = list(batches)
  with timing.timed('eval_compile'):
    compiled = eval_step.lower(state, batches[0]).compile()
  return compiled, lambda: batches


def _evaluate(eval_step, state, step, batches, timing):
  """(summary, each example's probabilities or None: `evaluation.held_out`)."""
  cases = []
  with timing.timed('eval'):
    summary, _ = evaluation.evaluate_split(eval_step, state, batches, cases)
  logging.info(
    'eval at step %d: loss %.4f  accuracy %.4f  (%d examples)',
    step,
    summary['loss'],
    summary['accuracy'],
    summary['count'],
  )
  return summary, evaluation.held_out(cases) if cases else None


def _write_final(result, config, workdir):
  """final_metrics.json and (config.write_plots) curves.png, by process 0."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
    json.dump(result, f, indent=2)
  if config.write_plots:
    from dlearn import plots  # matplotlib only when asked for

    plots.plot_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'curves.png'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` on every device, evaluating every epoch and at the end; writes the resolved
  config, metrics.jsonl, TensorBoard files and checkpoints to `workdir`, and resumes from the
  newest checkpoint there. Returns the final metrics and state; `preempted` is set when a signal
  stopped the run after a checkpoint; a cross-validation fold's run (config.data.folds) also
  returns `held_out`, its held-out examples' probabilities (`evaluation.held_out`)."""
  # ---------------------------------------------------------------------------------------------
  # Devices: the mesh, and the batch sizes checked before any data is read or anything compiled.
  # ---------------------------------------------------------------------------------------------
  config = config.copy_and_resolve_references()  # what the run derives stays in this run
  _check_run_settings(config)
  mesh = parallel.make_mesh(parts=config.partition.parts)
  _check_batches(config, mesh)

  # ---------------------------------------------------------------------------------------------
  # Input: the splits (or a cross-validation fold's), the model's checks against them, the
  # training data's steps per epoch.
  # ---------------------------------------------------------------------------------------------
  runs.prepare(config, workdir)
  fetch.prepare_if_missing(config.data.name, config.data.data_dir or pipeline.default_data_dir())
  train_source, eval_source = pipeline.run_sources(config)
  if not config.batch_size:
    config.batch_size = derived_batch_size(len(train_source), mesh.shape[parallel.AXIS])
    logging.info('config.batch_size=0: %d from the train split.', config.batch_size)
  if config.data.folds:
    examples = len(train_source) + len(eval_source)
    config.eval_batch_size = fold_eval_batch_size(config.eval_batch_size, examples, config.data.folds, mesh.shape[parallel.AXIS])  # fmt: skip
  info = pipeline.dataset_info(
    train_source, config.data.name, config.data.max_length, config.data.standardize, config.data
  )
  if info.kind == 'sequence':
    # the model's length, kept in the run's config.json: evaluation and prediction build the
    # model so even after a test split of longer cases is prepared (`pipeline.with_room_for`)
    config.data.max_length = info.example_shape[0]
  check_data(config, info)
  check_partition(config, info, mesh)
  data = train_data.create(config, train_source, info, mesh)
  total_steps = bookkeeping.total_steps(config, data.steps_per_epoch)
  eval_every = bookkeeping.interval(config.eval_every_steps, data.steps_per_epoch)
  checkpoint_every = bookkeeping.interval(config.checkpoint_every_steps, data.steps_per_epoch)

  # ---------------------------------------------------------------------------------------------
  # Model and state: the newest checkpoint in workdir (if it fits this config), or a fresh start.
  # ---------------------------------------------------------------------------------------------
  tx = optimizers.create(config, total_steps, data.steps_per_epoch)
  checkpointer = runs.checkpointer(config, workdir, info, tx)
  graphdef, state = runs.restore_or_create(config, info, tx, mesh, checkpointer, data, train_source)
  first_step = int(jax.device_get(state.step))
  logging.info(
    '%s: %s parameters; %d train / %d eval examples; %d steps (%d per epoch).',
    *(config.model, f'{sum(x.size for x in jax.tree.leaves(state.params)):,}'),
    *(len(train_source), len(eval_source), total_steps, data.steps_per_epoch),
  )
  if info.kind == 'sequence':
    logging.info('Sequences standardised: %s (config.data.standardize).', info.standardize)
  timing = bookkeeping.Timing()
  with timing.timed('data_load'):
    data.load()

  # ---------------------------------------------------------------------------------------------
  # Steps and outputs
  # ---------------------------------------------------------------------------------------------
  dispatch_function = _dispatch_functions(config, mesh, data, tx, graphdef, info, timing)
  eval_step = evaluation.map_eval_step(graphdef, config, info, mesh)
  # an evaluation split of longer cases (a test split) padded to them, the model as trained
  longest = pipeline.longest_sequence(eval_source)
  eval_info = pipeline.with_room_for(info, longest, config.partition.parts)
  eval_batches = functools.partial(evaluation.device_batches, eval_source, eval_info, config, mesh)
  if config.data.on_device:
    eval_step, eval_batches = _kept_on_devices(eval_step, eval_batches(), state, timing)
  intervals = (config.log_every_steps, eval_every, checkpoint_every)
  plan = bookkeeping.dispatch_plan(first_step, total_steps, config.steps_per_dispatch, intervals)
  runs.write_config(config, workdir)
  writer = metrics.MetricWriter(workdir, resume_step=first_step)
  progress = metrics.Progress(total_steps, first_step)
  nonfinite = bookkeeping.NonFiniteCheck(
    config.skip_nonfinite_steps, lambda: (checkpointer.latest_step(), checkpointer.directory)
  )
  deadline = time.monotonic() + config.max_train_seconds if config.max_train_seconds > 0 else None
  signals = checkpoint.StopSignals(deadline)

  # ---------------------------------------------------------------------------------------------
  # Loop
  # ---------------------------------------------------------------------------------------------
  totals, stopped_by, step, train_summary, eval_summary, held_out = None, None, first_step, {}, {}, None  # fmt: skip
  timing.start()
  try:
    for dispatch, ((before, length), (inputs, position)) in enumerate(
      zip(plan, data.dispatches(plan))
    ):
      step = before + length
      run = dispatch_function(length, state, inputs)
      if dispatch == 0:
        progress.restart(before)  # steps/s from the first dispatch on, compilation excluded
      state, sums = run(state, inputs)
      # At most two dispatches in flight (parallel.wait_for_previous): the one before is checked.
      nonfinite.push(before + 1, step, sums)
      sums = {k: v for k, v in sums.items() if k != 'first_nonfinite_step'}
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if dispatch == 0:
        timing.first_dispatch_done(state, length)

      if bookkeeping.itstime(step, config.log_every_steps, total_steps):
        train_summary = metrics.summarize(jax.device_get(totals))
        train_summary['steps_per_second'] = progress.report(step, train_summary)
        writer.write(step, 'train', train_summary)
        totals = None

      eval_metrics = None
      if bookkeeping.itstime(step, eval_every, total_steps):
        eval_summary, held_out = _evaluate(eval_step, state, step, eval_batches(), timing)
        writer.write(step, 'eval', eval_summary)
        eval_metrics = {f'eval/{k}': v for k, v in eval_summary.items()}
        progress.restart(step)

      stopped_by = signals.stop_reason(checkpointer, dispatch, step, total_steps)
      if bookkeeping.itstime(step, checkpoint_every, total_steps) or stopped_by:
        nonfinite.flush()  # never save a state that followed a non-finite step
        checkpointer.save(step, state, position, eval_metrics, wait=bool(stopped_by))
      if stopped_by:
        logging.warning('Stopped by %s at step %d after a checkpoint; rerun to resume.', stopped_by, step)  # fmt: skip
        break
    nonfinite.flush()
    # A run of no steps (a model fitted from the data when created, config.rocket.head=
    # 'ridge') is saved as step 0, written while it is evaluated (the save's threads mostly wait
    # on each other: a small fitted state took orbax as long as its evaluation), and reported
    # like any run; a finished run started again only reports. A cross-validation fold's fit is
    # not saved: what is kept of it are its held-out probabilities (`held_out`, which
    # dlearn.cross_validate writes), and orbax's save cost more than a small fold's features
    # (README, "ROCKET"); a rerun fits it again.
    fitted = total_steps == 0 and checkpointer.latest_step() is None
    if fitted and not config.data.folds:
      checkpointer.save(0, state, None)
    if first_step >= total_steps:
      logging.info('%s; evaluating only.', 'No steps to train' if fitted else f'Already trained for {first_step} steps')  # fmt: skip
      eval_summary, held_out = _evaluate(eval_step, state, step, eval_batches(), timing)
    train_seconds, timing_record = timing.summary(step - first_step)
    checkpointer.close()
  except bookkeeping.NonFiniteError:
    checkpointer.close()  # the saves before the bad step complete
    raise
  finally:
    signals.restore()
    writer.close()

  # ---------------------------------------------------------------------------------------------
  # Final metrics. seconds_after_first_step: the steps after the first dispatch (whose
  # compilation it includes), evaluations (timing.eval_seconds) included.
  # ---------------------------------------------------------------------------------------------
  result = dict(
    train=train_summary, eval=eval_summary, steps=total_steps,
    steps_per_epoch=data.steps_per_epoch, timing=timing_record,
    seconds_after_first_step=train_seconds, skipped_nonfinite_steps=nonfinite.skipped,
    preempted=bool(stopped_by),
  )  # fmt: skip
  if not stopped_by and (first_step < total_steps or fitted):
    _write_final(result, config, workdir)
  return {**result, 'state': state, 'held_out': held_out}
