"""Where a warm k-fold cross-validation of a ROCKET config spends its seconds, on a prepared dataset.

  python experiments/benchmarks/rocket_fold_costs.py --dataset=gun_point [--transform=...]
      [--data_dir=data/tfds] [--folds=5] [--runs=3] [--set=FIELD=VALUE ...]

Runs the folds of `dlearn.cross_validate` (`cross_validate.run_folds`, the config
experiments/configs/rocket_uea.py:DATASET[,TRANSFORM], fresh runs) in this process: twice untimed
(tracing its programs, loading them from JAX's compilation cache), then `--runs` times with
wall-clock timers around the functions a fold calls. Prints each timed run's seconds and, per
function, the milliseconds a cross-validation spent in it (mean over the runs). The timers nest:
a fold's `train_and_evaluate` holds `init_from_data` (which holds the biases' fit, the features and
their scaling, the ridge and its temperature) and the evaluation (a fold's fit is not saved).
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's dlearn

import dlearn  # noqa: E402, F401  (before NumPy: its BLAS settings)

# isort: split

from absl import app, flags, logging  # noqa: E402

from dlearn import cli, configs, cross_validate, evaluation, train  # noqa: E402
from dlearn.models import rocket  # noqa: E402

flags.DEFINE_string('dataset', 'gun_point', 'A prepared dataset (dlearn.prepare).')
flags.DEFINE_enum('transform', None, list(rocket.TRANSFORMS), "rocket_uea.py's default if unset.")
flags.DEFINE_string('data_dir', 'data/tfds', 'Where the dataset is prepared.')
flags.DEFINE_integer('folds', 5, 'k.')
flags.DEFINE_integer('runs', 3, 'Timed cross-validations.')
flags.DEFINE_multi_string('set', [], 'FIELD=VALUE of the config, e.g. rocket.num_features=50000.')
FLAGS = flags.FLAGS

# (owner, attribute, label): what a fold calls, outermost first
TIMED = (
  (train, 'train_and_evaluate', 'fold (train_and_evaluate)'),
  (rocket.RocketFamily, 'init_from_data', '  fit (init_from_data)'),
  (rocket.RocketClassifier, 'fit_biases', '    biases'),
  (rocket.RocketClassifier, 'fit_scaling', '    features and scaling'),
  (rocket, 'ridge_loo', '    ridge'),
  (rocket, 'temperature', '    temperature'),
  (rocket, '_read', '    reading cases'),
  (evaluation, 'evaluate_split', '  evaluation'),
)


def timed(function, label, totals):
  @functools.wraps(function)
  def wrapper(*args, **kwargs):
    start = time.perf_counter()
    try:
      return function(*args, **kwargs)
    finally:
      totals[label] += time.perf_counter() - start

  return wrapper


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cli.use_compilation_cache(cli.default_compilation_cache())  # as the commands do
  argument = ','.join(a for a in (FLAGS.dataset, FLAGS.transform) if a)
  config = configs.override(
    configs.load_file('experiments/configs/rocket_uea.py', argument),
    {'data.data_dir': FLAGS.data_dir, 'fresh': True, **cli.field_values(FLAGS.set, '--set')},
  )
  root = tempfile.mkdtemp()

  def cross_validation(run):
    rocket.HYDRA_COUNTS.clear()  # each counts its cases as a command's would
    summary = cross_validate.run_folds(
      config, os.path.join(root, str(run)), FLAGS.folds, 'train+validation', lambda *_: None
    )
    return summary['seconds']

  cross_validation('untimed-0')
  cross_validation('untimed-1')
  totals = collections.defaultdict(float)
  for owner, name, label in TIMED:
    setattr(owner, name, timed(getattr(owner, name), label, totals))
  seconds = [cross_validation(run) for run in range(FLAGS.runs)]
  print(f'{argument}: {FLAGS.folds}-fold cross-validation, warm: ' + ', '.join(f'{s:.3f}' for s in seconds) + ' s')  # fmt: skip
  for _, _, label in TIMED:
    print(f'{label:28s} {1e3 * totals[label] / FLAGS.runs:8.1f} ms a cross-validation')


if __name__ == '__main__':
  app.run(main)
