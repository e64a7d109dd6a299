"""Command: an ensemble of different models for one dataset, each weighted by its cross-validated
accuracy on the training data (HIVE-COTE 2's CAWPE: accuracy^4), in one work directory that
`dlearn.evaluate`, `dlearn.predict` and `dlearn.export` read like any other.

  python -m dlearn.ensemble --dataset=gun_point --workdir=workdirs/ensemble_gun_point \
      [--member=experiments/configs/rocket_uea.py --member=experiments/configs/rnn_uea.py:quick] \
      [--folds=5] [--minutes=3] [--split=train+validation] [--set=data.data_dir=data/tfds ...]

Each member is an experiment config taking the dataset as its argument (`FILE` gets
`FILE:DATASET`; `FILE:EXTRA` gets `FILE:DATASET,EXTRA`, e.g. `rocket_uea.py:minirocket`). In
order, each member is cross-validated over `--split` (its config.data.train_split; by default the
whole training file, as HIVE-COTE 2 and the ROCKET classifiers fit, and as `dlearn.cross_validate`
folds it: its folds, in WORKDIR/members/NAME/cv) and then trained on the whole split
(WORKDIR/members/NAME/final).
The ensemble (`config.model='weighted_ensemble'`, dlearn/models/weighted_ensemble.py) takes the
members' trained state into its own checkpoint in WORKDIR and is evaluated on the evaluation
split; its own k-fold accuracy combines the members' held-out probabilities of each fold
(`cross_validated_ensemble`). `--minutes` bounds the whole command: each of a member's folds may
take the time left when the member starts divided by its folds + 1, its final fit all that is
left then (config.max_train_seconds); a member whose run is stopped so,
that no longer fits in the time or that would not fit in memory (`errors.DoesNotFit`) is left
out, and the command says which and why (rerun with more minutes
to finish it: its runs resume). A member with config.max_num_epochs above its num_epochs trains
as many epochs in that range as its runs' share affords (`affordable_epochs`). WORKDIR/
ensemble.json records each member's fold accuracies, weight, epochs, seconds, and why any was
left out.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from dlearn import cli, configs, cross_validate, distributed, metrics, runs, train
from dlearn.errors import ConfigError, DoesNotFit
from dlearn.models import weighted_ensemble

FLAGS = flags.FLAGS
DEFAULT_MEMBERS = ('experiments/configs/rocket_uea.py', 'experiments/configs/rnn_uea.py:quick')


def define_flags():
  flags.DEFINE_string('workdir', None, 'Work directory of the ensemble.', required=True)
  flags.DEFINE_string('dataset', None, 'Prepared dataset (or UEA/UCR archive name).', required=True)  # fmt: skip
  flags.DEFINE_multi_string('member', list(DEFAULT_MEMBERS), 'An experiment config, FILE or FILE:EXTRA (repeat the flag for each member).')  # fmt: skip
  flags.DEFINE_integer('folds', 5, 'k of the cross-validation that weighs each member.')
  flags.DEFINE_float('minutes', 3.0, 'Time budget of the whole command (members beyond it are left out).')  # fmt: skip
  flags.DEFINE_string('split', 'train+validation', "What the members are cross-validated and trained on (default: the whole training file; 'train' leaves the validation split out, to report on it).")  # fmt: skip
  flags.DEFINE_multi_string(
    'set', [], 'FIELD=VALUE for every member, e.g. data.data_dir=data/tfds.'
  )
  distributed.define_flags()


def in_ensemble_flags(message: str) -> str:
  """A message of the members' commands in this command's flags: their `--config.data.name=`
  is `--dataset=`, any other `--config.FIELD=VALUE` is `--set=FIELD=VALUE`."""
  return message.replace('--config.data.name=', '--dataset=').replace('--config.', '--set=')


def member_config(spec: str, dataset: str, overrides: dict):
  """(name, config) of a member spec FILE[:EXTRA] for `dataset`."""
  path, _, extra = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--member={spec}: {path} is not a file: give experiment config files.')
  try:
    config = configs.load_file(path, ','.join(a for a in (dataset, extra) if a))
  except ConfigError as e:
    raise ConfigError(f'--member={spec} (with --dataset={dataset}): {e}') from e
  name = '-'.join([os.path.splitext(os.path.basename(path))[0], *extra.split(',')]).rstrip('-')
  try:
    configs.override(config, overrides)
  except ConfigError as e:
    raise ConfigError(
      f"--set: member {name} ({spec}): {e} --set sets a field of every member; one member's "
      "own settings go in its config's argument (e.g. "
      '--member=experiments/configs/rocket_uea.py:minirocket).'
    ) from e
  return name, config


def check_same_data(members) -> None:
  """The members read the same examples: one dataset, one padded length."""
  (first, a), *others = members
  for name, b in others:
    for field in ('name', 'data_dir', 'train_split', 'eval_split', 'max_length'):
      if a.data[field] != b.data[field]:
        raise ConfigError(
          f'--member: {first} and {name} read config.data.{field}={a.data[field]!r} and '
          f'{b.data[field]!r}: members must read the same data (set it with --set).'
        )


class Budget:
  def __init__(self, minutes: float):
    self.end = time.monotonic() + 60 * minutes

  def share(self, runs: int) -> float:
    """Seconds one of `runs` remaining training runs may take."""
    return max(self.end - time.monotonic(), 0.0) / runs


PACE_EPOCHS, PACE_STEPS = 4.0, 100  # the timed run's: so many epochs, at most so many steps
SAFETY = 0.8  # of a run's share: the pace of a few steps is a rough guess at a whole run's


def affordable_epochs(config, workdir: str, seconds: float) -> float:
  """config.num_epochs, or where config.max_num_epochs is above it, the most epochs up to that
  which a run of `seconds` affords, at the pace of a timed run of a few steps over the whole
  split (WORKDIR/pace; its fixed cost, compilation included, counted as every run's). The
  choice is kept in WORKDIR/epochs.json, so that a rerun resumes the same runs (with
  config.fresh, chosen again)."""
  least, most = config.num_epochs, config.max_num_epochs
  if not most > least or config.num_train_steps > 0:
    return least
  path = os.path.join(workdir, 'epochs.json')
  if os.path.exists(path) and not config.fresh:
    with open(path) as f:
      return json.load(f)['num_epochs']
  probe = config.copy_and_resolve_references()
  probe.num_epochs, probe.max_num_epochs, probe.max_train_seconds = PACE_EPOCHS, 0.0, 0.0
  probe.max_train_steps = PACE_STEPS
  probe.fresh = True
  start = time.monotonic()
  result = train.train_and_evaluate(probe, os.path.join(workdir, 'pace'))
  timing = result['timing']
  stepping = result['seconds_after_first_step'] - timing['eval_seconds']
  per_step = stepping / max(timing['steps_after_first_dispatch'], 1)
  steps = (SAFETY * seconds - (time.monotonic() - start - stepping)) / per_step
  if 0 < config.max_train_steps <= steps:
    steps = float('inf')  # the run stops at max_train_steps whatever its epochs
  epochs = float(np.clip(np.floor(steps / result['steps_per_epoch']), least, most))
  if jax.process_count() > 1:  # each process timed its own run: process 0's choice for all
    epochs = float(multihost_utils.broadcast_one_to_all(np.float32(epochs)))
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump({'num_epochs': epochs, 'seconds_per_step': per_step, 'share_seconds': seconds}, f)
  return epochs


def train_member(name, config, workdir, folds, budget: Budget, report):
  """The member's record for ensemble.json: its folds' accuracies and weight, or why it was left
  out."""
  start = time.monotonic()
  record = {'name': name}
  config = config.copy_and_resolve_references()
  least, config.num_epochs = config.num_epochs, affordable_epochs(config, workdir, budget.share(folds + 1))  # fmt: skip
  if config.max_num_epochs > least:  # contracted
    record['num_epochs'] = config.num_epochs
    report(f'member {name}: {config.num_epochs:g} epochs a run ({least:g} to {config.max_num_epochs:g}, as its share of --minutes affords)')  # fmt: skip
  cv_config = config.copy_and_resolve_references()
  # every fold gets the same share: the time left now, over the member's folds and final fit
  cv_config.max_train_seconds = budget.share(folds + 1)
  summary = None
  if cv_config.max_train_seconds > 0:
    try:
      summary = cross_validate.run_folds(
        cv_config, os.path.join(workdir, 'cv'), folds, config.data.train_split, report
      )
    except DoesNotFit as e:  # this member only: the others may fit
      return {**record, 'left_out': str(e), 'seconds': time.monotonic() - start}
  if summary is None:
    return {**record, 'left_out': _left_out(cv_config.max_train_seconds, 'a fold of its cross-validation'), 'seconds': time.monotonic() - start}  # fmt: skip
  final = config.copy_and_resolve_references()
  final.max_train_seconds = budget.share(1) or 1e-9
  result = train.train_and_evaluate(final, os.path.join(workdir, 'final'))
  if result['preempted']:
    return {**record, 'left_out': _left_out(final.max_train_seconds, 'its final training'), 'seconds': time.monotonic() - start}  # fmt: skip
  return {
    **record,
    'fold_accuracies': [f['accuracy'] for f in summary['folds']],
    'cv_accuracy': summary['mean_accuracy'],
    'cv_std': summary['std_accuracy'],
    'eval_accuracy': result['eval'].get('accuracy'),  # on config.data.eval_split
    'seconds': time.monotonic() - start,
    'workdir': os.path.abspath(os.path.join(workdir, 'final')),
    'cv_workdir': os.path.abspath(os.path.join(workdir, 'cv')),
  }


def _left_out(seconds, what):
  share = f'{seconds:.0f}' if seconds >= 1 else f'{seconds:.2f}'  # not '0 s' for a short share
  return (
    f'{what} would not finish in its share of --minutes ({share} s); rerun with more '
    '--minutes to finish it (its runs resume)'
  )


def ensemble_config(members, records, power: float):
  """The ensemble's run config: the first included member's data and batch settings."""
  kept = [(name, config) for (name, config), r in zip(members, records) if 'left_out' not in r]
  kept_records = [r for r in records if 'left_out' not in r]
  config = kept[0][1].copy_and_resolve_references()
  config.model = 'weighted_ensemble'
  config.ensemble_size = 1
  config.data.standardize = 'train_split'
  config.data.augment = False
  config.num_epochs, config.num_train_steps = 0, -1  # the members are trained: nothing to train
  config.max_train_seconds = 0.0
  config.eval_batch_size = min(c.eval_batch_size for _, c in kept)
  config.fresh = True  # the members may have changed since the last run: rebuilt each time
  weights = weighted_ensemble.cawpe_weights([r['cv_accuracy'] for r in kept_records], power)
  config.weighted_ensemble = dict(
    names=tuple(name for name, _ in kept),
    members=tuple(c.to_json_best_effort() for _, c in kept),
    workdirs=tuple(r['workdir'] for r in kept_records),
    weights=tuple(float(w) for w in weights),
    power=power,
  )
  return config


def cross_validated_ensemble(records, power, folds, report):
  """The ensemble's own k-fold accuracies: on each held-out fold, its members' probabilities of
  that fold's examples (from their runs that did not see it: each fold's
  cross_validate.HELD_OUT) combined as the ensemble combines them, as HIVE-COTE 2 estimates its
  own accuracy. The weights are the members' k-fold accuracies over all folds, the held-out one
  included (a little optimistic for that)."""
  kept = [r for r in records if 'left_out' not in r]
  weights = weighted_ensemble.cawpe_weights([r['cv_accuracy'] for r in kept], power)
  accuracies = []
  for fold in range(folds):
    held = []
    for r in kept:
      with np.load(os.path.join(r['cv_workdir'], f'fold_{fold}', cross_validate.HELD_OUT)) as f:
        held.append({k: f[k] for k in f.files})
    for r, h in zip(kept[1:], held[1:]):
      if not np.array_equal(h['index'], held[0]['index']):
        raise ConfigError(
          f'--member: {kept[0]["name"]} and {r["name"]} held out other examples in fold '
          f'{fold} (their config.seed cuts the folds): give every member the same seed '
          '(--set=seed=0).'
        )
    probabilities = weighted_ensemble.combined(weights, [h['probabilities'] for h in held])
    accuracies.append(float(np.mean(np.argmax(probabilities, -1) == held[0]['label'])))
    report(f'ensemble fold {fold}: accuracy {accuracies[-1]:.4f}')
  return accuracies


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags take the form --name=value.')
  if not FLAGS.minutes > 0:
    cli.fail(f'--minutes={FLAGS.minutes:g}: give the time budget in minutes, more than 0 (e.g. --minutes=3).')  # fmt: skip
  start = time.monotonic()
  budget = Budget(FLAGS.minutes)
  metrics.quiet_library_logs()
  distributed.initialize_from_flags()
  report = print if jax.process_index() == 0 else (lambda *_: None)
  try:
    overrides = {'data.train_split': FLAGS.split, **cli.field_values(FLAGS.set, '--set')}
    members = [member_config(spec, FLAGS.dataset, overrides) for spec in FLAGS.member]
    if len({name for name, _ in members}) < len(members):
      raise ConfigError(f'--member: {" ".join(FLAGS.member)}: a member is named twice.')
    check_same_data(members)
    for name, config in members:  # before any run: none may resume a run on other examples
      member_dir = os.path.join(FLAGS.workdir, 'members', name)
      cross_validate.check_folds(config, os.path.join(member_dir, 'cv'), FLAGS.folds)
      runs.check_same_examples(config, os.path.join(member_dir, 'final'))
    records = []
    for name, config in members:
      report(f'member {name}: {FLAGS.folds}-fold cross-validation, then the final model')
      record = train_member(name, config, os.path.join(FLAGS.workdir, 'members', name), FLAGS.folds, budget, report)  # fmt: skip
      records.append(record)
      if 'left_out' in record:
        report(f'member {name}: left out: {record["left_out"]}')
      else:
        report(f'member {name}: {FLAGS.folds}-fold accuracy {record["cv_accuracy"]:.4f} ± {record["cv_std"]:.4f}, {record["seconds"]:.0f} s')  # fmt: skip
    if all('left_out' in r for r in records):
      raise ConfigError(
        f'every member was left out ({"; ".join(r["left_out"] for r in records)}): give more '
        '--minutes.'
      )
    fold_accuracies = cross_validated_ensemble(records, 4.0, FLAGS.folds, report)
    config = ensemble_config(members, records, 4.0)
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except cli.USER_ERRORS as e:
    cli.fail(in_ensemble_flags(str(e)))
  weights = dict(zip(config.weighted_ensemble.names, config.weighted_ensemble.weights))
  for r in records:
    r['weight'] = weights.get(r['name'], 0.0)
  summary = {
    'dataset': FLAGS.dataset,
    'folds': FLAGS.folds,
    'minutes': FLAGS.minutes,
    'members': records,
    'fold_accuracies': fold_accuracies,
    'cv_accuracy': float(np.mean(fold_accuracies)),
    'cv_std': float(np.std(fold_accuracies, ddof=1)),
    'eval': result['eval'],
    'seconds': time.monotonic() - start,
  }
  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.workdir, 'ensemble.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  total = sum(weights.values())
  shares = ', '.join(f'{n} {w / total:.2f}' for n, w in weights.items())
  evaluated = f'{config.data.eval_split} accuracy {result["eval"]["accuracy"]:.4f}'
  if config.data.eval_split in config.data.train_split.split('+'):
    evaluated += ' (a split it was trained on)'
  report(f'ensemble ({shares}): {FLAGS.folds}-fold accuracy {summary["cv_accuracy"]:.4f} ± {summary["cv_std"]:.4f}; {evaluated}; {summary["seconds"]:.0f} s')  # fmt: skip
  sys.stdout.flush()


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
