"""Command: k-fold cross-validation of a config over a training split.

  python -m dlearn.cross_validate --config=experiments/configs/rnn_uea.py:gun_point \
      --workdir=workdirs/cv_gun_point --folds=5 [--split=train+validation] [--config.FIELD=VALUE ...]

The split (default `train+validation`: the whole training file that dlearn.prepare carved the
validation split from) is cut into k folds stratified by class: each class's examples shuffled
with config.seed and dealt round-robin, so every fold holds about 1/k of each class
(`pipeline.stratified_folds`). Fold i trains on the other k-1 folds and is evaluated on fold i, as
an ordinary run (`config.data.folds=k`, `config.data.fold=i`) in WORKDIR/fold_<i>: rerunning the
command resumes each fold, or only evaluates a finished one. Given a fold's work directory,
`dlearn.evaluate` evaluates on its held-out fold. Each fold also writes WORKDIR/fold_<i>/
held_out.npz: `index`, the held-out examples' positions in the split, their `label`s and
`probabilities` [examples, classes] (what `dlearn.ensemble` weighs its members' folds by). A
model fitted without steps (config.num_epochs=0: ROCKET's ridge) keeps no checkpoint of a fold,
only that file: a rerun fits the fold again.

Prints a line per fold and `k-fold accuracy: MEAN ± STD over K folds (N examples)`, STD being the
sample standard deviation (ddof=1) of the folds' accuracies, and writes
WORKDIR/cross_validation.json: each fold's accuracy, loss and examples, the mean and std, the folds'
sizes, the config and the seconds the folds took.
"""

import functools
import json
import os
import sys
import time

import jax
import numpy as np
from absl import flags, logging

from dlearn import checkpoint, cli, runs, train
from dlearn import main as main_command
from dlearn.data import pipeline

FLAGS = flags.FLAGS
HELD_OUT = 'held_out.npz'  # in each fold's work directory


def define_flags():
  main_command.define_flags()  # --workdir (here: a fold_<i> run per fold), --config, processes
  flags.DEFINE_integer('folds', 5, 'k: from 2 to the number of examples.')
  flags.DEFINE_string(
    'split', 'train+validation', 'The split to cross-validate (config.data.train_split).'
  )


def _write_summary(workdir, results, sizes, config, seconds):
  accuracies = [r['accuracy'] for r in results]
  summary = {
    'folds': results,
    'mean_accuracy': float(np.mean(accuracies)),
    'std_accuracy': float(np.std(accuracies, ddof=1)),  # sample standard deviation
    'examples': sum(r['count'] for r in results),
    'fold_sizes': sizes,
    'config': json.loads(config.to_json_best_effort()),
    'seconds': seconds,
  }
  del summary['config']['data']['fold']  # each fold's own is in its run's config.json
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'cross_validation.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  return summary


def check_folds(config, workdir: str, folds: int) -> list[np.ndarray]:
  """The held-out positions of `config`'s `folds` folds of its train split; refuses, before any
  fold runs, a number of folds the split cannot hold (naming --folds) and fold runs in `workdir`
  that trained on other examples than these folds would (runs.SAME_DATA: a fold resumed so would
  be scored on cases it trained on)."""
  source = pipeline.load_split(config.data.name, config.data.train_split, config.data.data_dir)
  held_out = pipeline.stratified_folds(pipeline.labels(source), folds, config.seed, '--folds')
  for fold in range(folds):
    fold_config = config.copy_and_resolve_references()
    fold_config.data.folds, fold_config.data.fold = folds, fold
    runs.check_same_examples(fold_config, os.path.join(workdir, f'fold_{fold}'))
  return held_out


def run_folds(config, workdir: str, folds: int, split: str, report=print):
  """Cross-validates `config` over `split` in `workdir` (a fold_<i> run per fold; rerunning
  resumes), `report`ing a line per fold; returns the summary (cross_validation.json), or None
  when a signal or config.max_train_seconds stopped a fold after a checkpoint."""
  start = time.monotonic()
  config = config.copy_and_resolve_references()
  config.data.train_split, config.data.folds = split, folds
  # The folds' checks and sizes before any training; each run cuts the same folds again.
  held_out = check_folds(config, workdir, folds)
  source = pipeline.load_split(config.data.name, config.data.train_split, config.data.data_dir)
  if small := pipeline.small_classes(pipeline.labels(source), folds):
    logging.warning('--folds=%d: %s', folds, small)
  results = []
  for fold in range(folds):
    config.data.fold = fold  # each run derives its own settings (e.g. batch_size=0) afresh
    fold_dir = os.path.join(workdir, f'fold_{fold}')
    logging.info('Fold %d of %d: %d examples held out; %s.', fold, folds, len(held_out[fold]), fold_dir)  # fmt: skip
    result = train.train_and_evaluate(config, fold_dir)
    if result['preempted']:
      return None
    if jax.process_index() == 0:
      held = result['held_out']
      index = held_out[fold][held['index']]  # positions in the fold -> in the split
      np.savez(os.path.join(fold_dir, HELD_OUT), **{**held, 'index': index})
    evaluation = result['eval']
    results.append({'fold': fold, **evaluation, 'workdir': fold_dir})
    if jax.process_index() == 0:
      report(
        f'fold {fold}: accuracy {evaluation["accuracy"]:.4f}  loss {evaluation["loss"]:.4f}  '
        f'examples {evaluation["count"]}'
      )
  sizes = [len(f) for f in held_out]
  return _write_summary(workdir, results, sizes, config, time.monotonic() - start)


def main(argv):
  config = main_command.start(argv)
  try:
    summary = run_folds(config, FLAGS.workdir, FLAGS.folds, FLAGS.split, functools.partial(print, flush=True))  # fmt: skip
  except cli.USER_ERRORS as e:  # the messages say what is wrong and what to do
    cli.fail(e)
  if summary is None:
    sys.exit(checkpoint.PREEMPTED_EXIT_STATUS)
  if jax.process_index() == 0:
    print(
      f'k-fold accuracy: {summary["mean_accuracy"]:.4f} ± {summary["std_accuracy"]:.4f} over '
      f'{len(summary["folds"])} folds ({summary["examples"]} examples)'
    )


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
