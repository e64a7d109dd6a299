"""MiniRocket (aeon) beside dlearn's UEA/UCR recipe, on any train/test pair of `.ts` files.

  pip install -e ".[benchmark]"      # aeon (and PyTorch); here, see the README's benchmark section
  python experiments/benchmarks/uea_vs_minirocket.py [--data=../shared/data]
      [--datasets=NAME:TRAIN.ts[:TEST.ts],...] [--only=minirocket|dlearn] [--smoke]
      [--config=experiments/configs/rnn_uea.py] [--workdir=DIR] [--data_dir=DIR]

Datasets: `--datasets` names each one (NAME is made snake_case for dlearn: GunPoint → gun_point);
without it, every *_TRAIN.ts in `--data` (default ../shared/data), with its *_TEST.ts when that
file is there. Where a dataset has a test file, both sides train on the whole training file and are
scored on the test file; where it has none, both are scored on the split `dlearn.prepare` carves
as 'validation' (the last `--validation_fraction` of each class in file order,
`dataset_writer._carve`) and train on the rest.

- **MiniRocket**: `aeon.classification.convolution_based.MiniRocketClassifier` (10,000 kernels,
  its default ridge classifier, `--seed`, `--minirocket_jobs` threads) fit on the training cases,
  then predicting the evaluation cases. It needs one length of at least 9 steps, so every case is
  padded at its end with its own last value, per channel (aeon's `Padder(fill_value='last')`), to
  the longest case of either split or 9 steps, whichever is longer: this matters for
  JapaneseVowels (7-29 steps); equal-length files of 9+ steps are left as they are. Seconds: fit
  plus predict, after one untimed fit and predict that compiles (or loads from numba's cache)
  aeon's kernels; that first call's seconds are in the JSON as `first_seconds`.
- **dlearn**: the recipe's commands, as a user runs them, each in a subprocess from this
  repository's root: `python -m dlearn.prepare --name=NAME --train=... [--test=...] --overwrite`,
  `python -m dlearn.main --config=CONFIG:NAME --config.data.name=NAME --config.fresh=True
  --config.write_plots=False` (training split `train+validation` where there is a test file, else
  `train`), then `python -m dlearn.evaluate --split=test|validation`, whose accuracy line is
  read. Seconds: the wall time of the training command (Python and JAX start-up, data loading,
  compilation, training and its periodic evaluations included).

`--folds=K`: k-fold cross-validation on each training file instead (test files unused), both sides
on the same folds: the file prepared by `dlearn.prepare`, its whole `train+validation` split cut
by `pipeline.stratified_folds` with `--seed` (what `python -m dlearn.cross_validate --folds=K` cuts
with `--config.seed`, which it is given). MiniRocket fits on k-1 folds and predicts the held-out
one, k times; dlearn runs `dlearn.cross_validate --config.fresh=True` (no fold resumed from an
earlier run). Both report mean ± std (ddof=1) of the folds' accuracies and the seconds of all k
folds: dlearn's as the command times them (its first fold traces its programs and loads them from
JAX's compilation cache, once per process), and, as MiniRocket's are timed after an untimed first
call, `warm_seconds`: the same cross-validation run twice in this process, the second timed
(`in_process_seconds`). This is how a recipe is compared with MiniRocket on
data it was not tuned on, without a test split.

`--smoke`: MiniRocket with 840 kernels and dlearn's `CONFIG:NAME,smoke` (20 small steps): a check
that both sides run, not a measurement. Prints a table and writes
experiments/benchmarks/results/uea_vs_minirocket-<machine kind>.json (`-smoke` added for --smoke).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)  # this checkout's dlearn, before any installed one

import dlearn  # noqa: E402, F401  (before NumPy: its BLAS settings, for both sides alike)

# isort: split

import numpy as np  # noqa: E402
import results_file  # noqa: E402

from dlearn import cli, configs, cross_validate  # noqa: E402
from dlearn.data import dataset_writer, ts_format  # noqa: E402
from dlearn.models import rocket  # noqa: E402

FLAGS = flags.FLAGS
SHARED_DATA = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data'))
MIN_LENGTH = 9  # MiniRocket's kernels are 9 steps long
ACCURACY_LINE = re.compile(r'^accuracy (\S+)\s+loss (\S+)\s+examples (\d+)', re.MULTILINE)


def define_flags():
  flags.DEFINE_string('data', SHARED_DATA, 'Folder scanned for *_TRAIN.ts (and *_TEST.ts).')
  flags.DEFINE_list(
    'datasets',
    [],
    'NAME:TRAIN.ts[:TEST.ts] entries; given, --data is not scanned.',
  )
  flags.DEFINE_enum('only', None, ['minirocket', 'dlearn'], 'Run one side only.')
  flags.DEFINE_bool('smoke', False, 'A tiny run of both sides: plumbing, not a measurement.')
  flags.DEFINE_float(
    'validation_fraction',
    0.1,
    'Without a test file: the last fraction of each class of train is the evaluation split '
    "(dlearn.prepare's --validation_fraction).",
  )
  flags.DEFINE_integer(
    'folds', 0, 'k > 1: k-fold cross-validation of both sides on each training file instead.'
  )
  flags.DEFINE_integer('seed', 0, "MiniRocket's random_state; with --folds, the folds' seed too.")
  flags.DEFINE_integer('minirocket_kernels', 10_000, "MiniRocket's n_kernels (--smoke: 840).")
  flags.DEFINE_integer('minirocket_jobs', 1, "MiniRocket's n_jobs (threads).")
  flags.DEFINE_bool(
    'multirocket_hydra',
    False,
    "Also aeon's MultiRocketHydraClassifier (needs PyTorch beside aeon), on the same cases.",
  )
  flags.DEFINE_string(
    'config',
    os.path.join(REPO, 'experiments', 'configs', 'rnn_uea.py'),
    'dlearn config file; it is given the dataset name as its argument (CONFIG:NAME).',
  )
  flags.DEFINE_list(
    'dlearn_flags', [], 'More flags for dlearn.main, e.g. --dlearn_flags=--config.num_epochs=5.'
  )
  flags.DEFINE_string('workdir', None, "dlearn's work directories (default: a new temporary one).")
  flags.DEFINE_string(
    'data_dir',
    None,
    'Where dlearn.prepare writes the datasets (default: WORKDIR/tfds); an existing dataset of the '
    'same name there is replaced.',
  )
  flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')


# ------------------------------------------------------------------------------------------------
# Datasets and their cases
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Dataset:
  name: str  # as given, e.g. GunPoint
  train: str
  test: str | None

  @property
  def snake_name(self) -> str:
    return snake_case(self.name)


@dataclasses.dataclass
class Problem:
  """One dataset's cases as both sides see them: sequences [length, channels] and labels."""

  class_names: tuple[str, ...]
  train_sequences: list[np.ndarray]
  train_labels: np.ndarray
  eval_sequences: list[np.ndarray]
  eval_labels: np.ndarray
  eval_split: str  # 'test' or 'validation' (carved from train)

  @property
  def channels(self) -> int:
    return self.train_sequences[0].shape[1]

  @property
  def lengths(self) -> tuple[int, int]:
    lengths = [len(s) for s in self.train_sequences + self.eval_sequences]
    return min(lengths), max(lengths)


def snake_case(name: str) -> str:
  """GunPoint → gun_point, JapaneseVowels → japanese_vowels, ECG200 → ecg200."""
  name = re.sub(r'(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])', '_', name)
  name = re.sub(r'[^0-9a-zA-Z]+', '_', name).strip('_').lower()
  return name if name[:1].isalpha() else f'd_{name}'


def scan(folder: str) -> list[Dataset]:
  """Every NAME_TRAIN.ts in `folder`, with NAME_TEST.ts beside it if present."""
  datasets = []
  for train in sorted(glob.glob(os.path.join(folder, '*_TRAIN.ts'))):
    test = train[: -len('_TRAIN.ts')] + '_TEST.ts'
    name = os.path.basename(train)[: -len('_TRAIN.ts')]
    datasets.append(Dataset(name, train, test if os.path.exists(test) else None))
  return datasets


def parse_datasets(entries: list[str]) -> list[Dataset]:
  datasets = []
  for entry in entries:
    parts = entry.split(':')
    if len(parts) not in (2, 3) or not all(parts):
      raise ValueError(f'--datasets entry {entry!r}: give NAME:TRAIN.ts or NAME:TRAIN.ts:TEST.ts.')
    datasets.append(Dataset(parts[0], parts[1], parts[2] if len(parts) == 3 else None))
  return datasets


def load_problem(train: str, test: str | None, validation_fraction: float) -> Problem:
  """The cases of `train` and `test`, or, without a test file, train carved as dlearn.prepare
  carves 'validation' (dataset_writer._carve: the last fraction of each class in file order)."""
  train_data = ts_format.read_ts(train)
  if test is None:
    train_index, eval_index = dataset_writer._carve(train_data.labels, validation_fraction)
    labels = np.asarray(train_data.labels)
    return Problem(
      train_data.class_names,
      [train_data.sequences[i] for i in train_index],
      labels[train_index],
      [train_data.sequences[i] for i in eval_index],
      labels[eval_index],
      'validation',
    )
  test_data = ts_format.read_ts(test)
  if test_data.class_names != train_data.class_names:
    raise ts_format.TsFormatError(
      f'{test}: @classLabel {" ".join(test_data.class_names)} differs from the train file {train} '
      f'({" ".join(train_data.class_names)}).'
    )
  return Problem(
    train_data.class_names,
    train_data.sequences,
    np.asarray(train_data.labels),
    test_data.sequences,
    np.asarray(test_data.labels),
    'test',
  )


def fold_problems(name: str, data_dir: str, folds: int, seed: int) -> list[Problem]:
  """The k problems of k-fold cross-validation of prepared dataset `name`'s whole training file
  (split train+validation), cut as `dlearn.cross_validate --folds=k --config.seed=seed` cuts it."""
  from dlearn.data import pipeline

  source = pipeline.load_split(name, 'train+validation', data_dir)
  class_names = tuple(source.dataset_info.features['label'].names)
  records = [source[i] for i in range(len(source))]
  sequences = [np.asarray(r['sequence'], np.float32) for r in records]
  labels = np.array([r['label'] for r in records], np.int64)
  parts = pipeline.stratified_folds(labels, folds, seed, '--folds')
  problems = []
  for held_out in parts:
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    problems.append(
      Problem(
        class_names,
        [sequences[i] for i in train],
        labels[train],
        [sequences[i] for i in held_out],
        labels[held_out],
        'fold',
      )
    )
  return problems


def cross_validated(runs: list[dict]) -> dict:
  """One side's folds summarised as `dlearn.cross_validate` does: mean ± std (ddof=1)."""
  accuracies = [r['accuracy'] for r in runs]
  return {
    'accuracy': float(np.mean(accuracies)),
    'std': float(np.std(accuracies, ddof=1)),
    'seconds': float(sum(r['seconds'] for r in runs)),
    'folds': runs,
  }


# ------------------------------------------------------------------------------------------------
# MiniRocket
# ------------------------------------------------------------------------------------------------
def padded(problem: Problem) -> tuple[np.ndarray, np.ndarray, int]:
  """Both splits as [cases, channels, length] float32 arrays of one length: each case padded at
  its end with its last value, per channel, to the longest case of either split (at least 9)."""
  from aeon.transformations.collection.unequal_length import Padder

  length = max(MIN_LENGTH, problem.lengths[1])
  padder = Padder(padded_length=length, fill_value='last')

  def pad(sequences):
    return np.asarray(padder.fit_transform([s.T for s in sequences]), np.float32)

  return pad(problem.train_sequences), pad(problem.eval_sequences), length


def run_minirocket(
  problem: Problem, n_kernels=10_000, n_jobs=1, seed=0, warmup=True, classifier='minirocket'
) -> dict:
  """Fit on the training cases, predict the evaluation cases: accuracy and seconds. `classifier`:
  aeon's MiniRocketClassifier (n_kernels), or 'multirocket_hydra', its MultiRocketHydraClassifier
  (its default sizes: 6,250 MultiRocket kernels, Hydra's 8 x 64; Hydra runs in PyTorch)."""
  from aeon.classification.convolution_based import (
    MiniRocketClassifier,
    MultiRocketHydraClassifier,
  )

  x_train, x_eval, length = padded(problem)

  def fit_predict():
    start = time.perf_counter()
    if classifier == 'multirocket_hydra':
      model = MultiRocketHydraClassifier(n_jobs=n_jobs, random_state=seed)
    else:
      model = MiniRocketClassifier(n_kernels=n_kernels, n_jobs=n_jobs, random_state=seed)
    model.fit(x_train, problem.train_labels)
    predictions = model.predict(x_eval)
    return predictions, time.perf_counter() - start

  first_seconds = None
  if warmup:
    _, first_seconds = fit_predict()
  predictions, seconds = fit_predict()
  correct = int((predictions == problem.eval_labels).sum())
  return {
    'classifier': classifier,
    'accuracy': correct / len(problem.eval_labels),
    'correct': correct,
    'seconds': seconds,
    'first_seconds': first_seconds,
    'padded_length': length,
    'n_kernels': n_kernels if classifier == 'minirocket' else None,
    'n_jobs': n_jobs,
    'seed': seed,
  }


# ------------------------------------------------------------------------------------------------
# dlearn, through its commands
# ------------------------------------------------------------------------------------------------
def _command(args: list[str], log: str) -> tuple[str, float]:
  """Runs `python -m ...` from the repository root; (stdout, wall seconds). The output goes to
  `log`; a failure raises with its last lines."""
  start = time.perf_counter()
  result = subprocess.run(
    [sys.executable, '-m', *args], cwd=REPO, capture_output=True, text=True, check=False
  )
  seconds = time.perf_counter() - start
  with open(log, 'w') as f:
    f.write(f'$ python -m {" ".join(args)}\n{result.stdout}\n{result.stderr}')
  if result.returncode:
    tail = '\n'.join((result.stdout + result.stderr).strip().splitlines()[-5:])
    raise RuntimeError(f'python -m {args[0]} exited {result.returncode} (log: {log}):\n{tail}')
  return result.stdout, seconds


def _config_flags(config: str, name: str, workdir: str, data_dir: str, smoke: bool) -> list[str]:
  """The flags of a dlearn command that trains `config` on prepared dataset `name`."""
  return [
    f'--config={config}:{name}' + (',smoke' if smoke else ''),
    f'--workdir={workdir}',
    f'--config.data.name={name}',
    f'--config.data.data_dir={data_dir}',
    '--config.write_plots=False',
  ]


def run_dlearn(
  dataset: Dataset,
  workdir_root: str,
  data_dir: str,
  config: str,
  smoke: bool = False,
  validation_fraction: float = 0.1,
  extra_flags: tuple[str, ...] = (),
) -> dict:
  name = dataset.snake_name
  workdir = os.path.join(workdir_root, name)
  os.makedirs(workdir, exist_ok=True)
  prepare = prepare_dlearn(dataset, workdir_root, data_dir, validation_fraction)
  train = [
    'dlearn.main',
    *_config_flags(config, name, workdir, data_dir, smoke),
    f'--config.data.train_split={"train+validation" if dataset.test else "train"}',
    '--config.fresh=True',
    *extra_flags,
  ]
  _, seconds = _command(train, os.path.join(workdir_root, f'{name}.main.log'))
  split = 'test' if dataset.test else 'validation'
  evaluate = ['dlearn.evaluate', f'--workdir={workdir}', f'--split={split}', '--nopng']
  output, _ = _command(evaluate, os.path.join(workdir_root, f'{name}.evaluate.log'))
  match = ACCURACY_LINE.search(output)
  if not match:
    raise RuntimeError(f'no accuracy line in the output of dlearn.evaluate:\n{output[-500:]}')
  return {
    'accuracy': float(match.group(1)),
    'examples': int(match.group(3)),
    'seconds': seconds,
    'workdir': workdir,
    'commands': [
      'python -m ' + ' '.join(args) for args in (prepare, train, evaluate)
    ],  # as run, from the repository root
  }


def prepare_dlearn(
  dataset: Dataset,
  workdir_root: str,
  data_dir: str,
  validation_fraction: float,
  with_test: bool = True,
) -> list[str]:
  """`dlearn.prepare` of `dataset` into `data_dir`, replacing one there; the command run."""
  name = dataset.snake_name
  prepare = ['dlearn.prepare', f'--name={name}', f'--train={os.path.abspath(dataset.train)}']
  if dataset.test and with_test:
    prepare.append(f'--test={os.path.abspath(dataset.test)}')
  prepare += [f'--data_dir={data_dir}', f'--validation_fraction={validation_fraction}']
  prepare.append('--overwrite')
  _command(prepare, os.path.join(workdir_root, f'{name}.prepare.log'))
  return prepare


def cross_validate_dlearn(
  dataset: Dataset,
  workdir_root: str,
  data_dir: str,
  config: str,
  folds: int,
  seed: int,
  smoke: bool = False,
  extra_flags: tuple[str, ...] = (),
) -> dict:
  """`dlearn.cross_validate` of the prepared dataset (`prepare_dlearn`): its
  cross_validation.json, as `cross_validated` summarises MiniRocket's folds."""
  name = dataset.snake_name
  workdir = os.path.join(workdir_root, f'cv_{name}')
  command = [
    'dlearn.cross_validate',
    *_config_flags(config, name, workdir, data_dir, smoke),
    f'--folds={folds}',
    f'--config.seed={seed}',
    '--config.fresh=True',  # every fold fitted again, never resumed from an earlier run's
    *extra_flags,
  ]
  _command(command, os.path.join(workdir_root, f'{name}.cross_validate.log'))
  with open(os.path.join(workdir, 'cross_validation.json')) as f:
    summary = json.load(f)
  overrides = {'data.name': name, 'data.data_dir': data_dir, 'write_plots': False, 'seed': seed}
  overrides |= {'fresh': True, **cli.field_values([f.removeprefix('--config.') for f in extra_flags], '--dlearn_flags')}  # fmt: skip
  in_process = in_process_seconds(
    config, name + (',smoke' if smoke else ''), overrides, folds, workdir
  )
  return {
    'accuracy': summary['mean_accuracy'],
    'std': summary['std_accuracy'],
    'seconds': summary['seconds'],
    'warm_seconds': in_process['warm_seconds'],
    'in_process': in_process,
    'folds': [{'accuracy': r['accuracy'], 'count': r['count']} for r in summary['folds']],
    'workdir': workdir,
    'commands': ['python -m ' + ' '.join(command)],
  }


def in_process_seconds(config_file: str, argument: str, overrides: dict, folds: int, workdir: str):
  """The same cross-validation run twice in this process (the command's config and flags): the
  seconds of its folds the first time, and the second time (`warm_seconds`), as MiniRocket's
  side is timed after an untimed first call that compiles or loads its kernels. The second leaves
  out what a process pays once: tracing its programs and loading them from the compilation cache
  (the command's first fold's extra)."""
  cli.use_compilation_cache(cli.default_compilation_cache())  # as the commands do
  config = configs.override(configs.load_file(config_file, argument), overrides)
  seconds = {}
  for run in ('first_seconds', 'warm_seconds'):
    rocket.HYDRA_COUNTS.clear()  # the second counts its cases as the first did
    summary = cross_validate.run_folds(
      config, os.path.join(workdir, f'in_process_{run}'), folds, 'train+validation', lambda *_: None
    )
    seconds[run] = summary['seconds']
  return seconds


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
COLUMNS = (
  ('dataset', 23),
  ('train', 6),
  ('eval', 10),
  ('ch', 4),
  ('length', 8),
  ('MiniRocket', 11),
  ('s', 8),
  ('dlearn', 11),
  ('s', 8),
  ('warm s', 8),
)


EVAL_SPLITS = {'test': 'test', 'validation': 'val', 'fold': 'cv'}


def _cell(side: dict | None, key: str) -> str:
  if side is None or ('error' not in side and key not in side):
    return '-'
  if 'error' in side:
    return 'failed'
  if key == 'accuracy' and 'std' in side:  # cross-validated: mean ± std over the folds, in %
    return f'{100 * side[key]:.1f}±{100 * side["std"]:.1f}'
  return f'{side[key]:.2%}' if key == 'accuracy' else f'{side[key]:.2f}'


def row(result: dict) -> str:
  low, high = result['length']
  cells = (
    result['dataset'],
    str(result['train_cases']),
    f'{result["eval_cases"]} {EVAL_SPLITS[result["eval_split"]]}',
    str(result['channels']),
    str(low) if low == high else f'{low}-{high}',
    _cell(result.get('minirocket'), 'accuracy'),
    _cell(result.get('minirocket'), 'seconds'),
    _cell(result.get('dlearn'), 'accuracy'),
    _cell(result.get('dlearn'), 'seconds'),
    _cell(result.get('dlearn'), 'warm_seconds'),
  )
  return ''.join(f'{c:<{w}}' for c, (_, w) in zip(cells, COLUMNS))


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}: flags take the form --name=value.')
  try:
    datasets = parse_datasets(FLAGS.datasets) if FLAGS.datasets else scan(FLAGS.data)
  except ValueError as e:
    sys.exit(f'error: {e}')
  if not datasets:
    sys.exit(f'error: no *_TRAIN.ts in --data={FLAGS.data}; name files with --datasets.')
  for dataset in datasets:
    for path in (dataset.train, dataset.test):
      if path and not os.path.isfile(path):
        sys.exit(f'error: {dataset.name}: no such file {path}.')
  kind = results_file.machine_kind(FLAGS.machine_kind)
  sides = [FLAGS.only] if FLAGS.only else ['minirocket', 'dlearn']
  workdir = os.path.abspath(FLAGS.workdir or tempfile.mkdtemp(prefix='uea_vs_minirocket_'))
  data_dir = os.path.abspath(FLAGS.data_dir or os.path.join(workdir, 'tfds'))
  config = os.path.abspath(FLAGS.config)
  kernels = 840 if FLAGS.smoke else FLAGS.minirocket_kernels
  versions = {}
  if 'minirocket' in sides:
    import aeon
    import numba
    import sklearn

    versions = {'aeon': aeon.__version__, 'numba': numba.__version__}
    versions |= {'scikit-learn': sklearn.__version__, 'numpy': np.__version__}
  if 'dlearn' in sides:
    print(f'dlearn work directories and logs: {workdir}', flush=True)

  config_name = os.path.splitext(os.path.basename(FLAGS.config))[0]  # the results file's name

  def write_results():  # after every dataset: a cut run keeps the rows it finished
    return results_file.write(
      f'uea_vs_minirocket-{kind}'
      + (f'-cv{folds}' if folds else '')
      + ('' if config_name == 'rnn_uea' else f'-{config_name}')
      + ('-multirocket_hydra' if FLAGS.multirocket_hydra else '')
      + ('-smoke' if FLAGS.smoke else ''),
      kind,
      {
        'command': ' '.join(['python', os.path.relpath(__file__, REPO), *sys.argv[1:]]),
        'smoke': FLAGS.smoke,
        'sides': sides,
        'config': os.path.relpath(config, REPO) if 'dlearn' in sides else None,
        'validation_fraction': FLAGS.validation_fraction,
        'folds': folds,
        'padding': "aeon Padder(fill_value='last') to the longest case (at least 9 steps)",
        'results': results,
      },
      versions=versions,
    )

  print(''.join(f'{title:<{width}}' for title, width in COLUMNS), flush=True)
  results = []
  folds = FLAGS.folds
  if folds == 1 or folds < 0:
    sys.exit(f'error: --folds={folds}: give k >= 2 folds, or 0 for train/test (or validation).')
  for dataset in datasets:
    if folds:  # both sides on the folds of the whole training file, prepared by dlearn
      os.makedirs(workdir, exist_ok=True)
      prepare = prepare_dlearn(dataset, workdir, data_dir, FLAGS.validation_fraction, False)
      problems = fold_problems(dataset.snake_name, data_dir, folds, FLAGS.seed)
      problem = dataclasses.replace(
        problems[0],
        train_sequences=problems[0].train_sequences + problems[0].eval_sequences,
        train_labels=np.concatenate([problems[0].train_labels, problems[0].eval_labels]),
        eval_sequences=[],
        eval_labels=np.array([], np.int64),
      )
    else:
      problem = load_problem(dataset.train, dataset.test, FLAGS.validation_fraction)
    result = {
      'dataset': dataset.name,
      'name': dataset.snake_name,
      'train_file': os.path.relpath(dataset.train, REPO),
      'test_file': dataset.test and os.path.relpath(dataset.test, REPO),
      'eval_split': problem.eval_split,
      'train_cases': len(problem.train_labels),
      'eval_cases': folds or len(problem.eval_labels),
      'channels': problem.channels,
      'length': list(problem.lengths),
      'classes': len(problem.class_names),
    }
    if 'minirocket' in sides:
      try:
        minirocket = functools.partial(
          run_minirocket, n_kernels=kernels, n_jobs=FLAGS.minirocket_jobs, seed=FLAGS.seed
        )
        result['minirocket'] = (
          cross_validated([minirocket(p) for p in problems]) if folds else minirocket(problem)
        )
      except Exception as e:  # one failure does not lose the other datasets' rows
        result['minirocket'] = {'error': f'{type(e).__name__}: {e}'}
      if FLAGS.multirocket_hydra:
        try:
          hydra = functools.partial(minirocket, classifier='multirocket_hydra')
          result['multirocket_hydra'] = (
            cross_validated([hydra(p) for p in problems]) if folds else hydra(problem)
          )
          side = result['multirocket_hydra']
          print(f'  aeon MultiRocket-Hydra: {_cell(side, "accuracy")}, {_cell(side, "seconds")} s', flush=True)  # fmt: skip
        except Exception as e:
          result['multirocket_hydra'] = {'error': f'{type(e).__name__}: {e}'}
    if 'dlearn' in sides and folds:
      try:
        result['dlearn'] = cross_validate_dlearn(
          dataset,
          workdir,
          data_dir,
          config,
          folds,
          FLAGS.seed,
          FLAGS.smoke,
          tuple(FLAGS.dlearn_flags),
        )
        result['dlearn']['commands'].insert(0, 'python -m ' + ' '.join(prepare))
      except Exception as e:
        result['dlearn'] = {'error': f'{type(e).__name__}: {e}'}
    elif 'dlearn' in sides:
      try:
        result['dlearn'] = run_dlearn(
          dataset,
          workdir,
          data_dir,
          config,
          FLAGS.smoke,
          FLAGS.validation_fraction,
          tuple(FLAGS.dlearn_flags),
        )
      except Exception as e:
        result['dlearn'] = {'error': f'{type(e).__name__}: {e}'}
    results.append(result)
    print(row(result), flush=True)
    for side in ('minirocket', 'multirocket_hydra', 'dlearn'):
      if 'error' in result.get(side, {}):
        print(f'  {side} failed: {result[side]["error"]}', flush=True)
    aeon, ours = result.get('minirocket', {}), result.get('dlearn', {})
    if 'warm_seconds' in ours and 'seconds' in aeon:
      ratios = [ours[key] / aeon['seconds'] for key in ('seconds', 'warm_seconds')]
      print('  dlearn / aeon MiniRocket seconds: {:.1f}x, warm {:.1f}x'.format(*ratios), flush=True)
    path = write_results()

  print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
