"""The fast CIFAR-10 recipe (experiments/configs/fast_cifar10.py) timed as its reference times
itself (../shared/peers/airbench/airbench94_muon.py): several runs, seconds per run (training plus
the final evaluation with test-time augmentation, compilation excluded) and accuracy.

  python experiments/benchmarks/fast_cifar10.py [--data_dir=data/tfds] [--runs=5]
      [--dtype=bfloat16] [--steps_per_dispatch=8] [--tta_level=2] [--epochs=8]

Every run trains a fresh model (seed = run number) through `train.train_and_evaluate` in a new
work directory, evaluating only at the end. Run 0 warms up (its compilations fill JAX's persistent
compilation cache in a temporary folder; later runs read them back) and is not counted. Timed per
run: the first dispatch without its compilation, every later step and the final evaluation; not
timed: reading the splits onto the device, compiling the evaluation step (the reference compiles
in its warm-up run), the whitening layer's initialisation (the reference times it: a 5,000-image
covariance, milliseconds on a GPU) and the final checkpoint's wait.
Writes experiments/benchmarks/results/fast_cifar10-<machine kind>.json.
"""

import importlib.util
import os
import statistics
import sys
import tempfile

import jax
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', 'data/tfds', 'Where the prepared cifar10_jpeg dataset is.')
flags.DEFINE_integer('runs', 5, 'Timed runs (after one warm-up run).')
flags.DEFINE_string('dtype', 'bfloat16', 'config.dtype (and the Newton-Schulz dtype).')
flags.DEFINE_integer('steps_per_dispatch', 8, 'config.steps_per_dispatch.')
flags.DEFINE_integer('tta_level', 2, 'config.fast_cnn.tta_level of the final evaluation.')
flags.DEFINE_float('epochs', 8, 'config.num_epochs.')
flags.DEFINE_string('train_split', 'train', 'config.data.train_split.')
flags.DEFINE_string('eval_split', 'validation', 'config.data.eval_split.')
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_bool('smoke', False, "The config's :smoke (a narrow network, 20 steps): a CPU check.")


def recipe_config():
  """experiments/configs/fast_cifar10.py's config (loaded by path: it shares this file's name)."""
  path = os.path.join(HERE, '..', 'configs', 'fast_cifar10.py')
  spec = importlib.util.spec_from_file_location('fast_cifar10_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config('smoke' if FLAGS.smoke else None)


def one_run(seed: int, root: str) -> dict:
  from dlearn import train

  config = recipe_config()
  config.seed = seed
  config.data.data_dir = FLAGS.data_dir
  config.data.train_split, config.data.eval_split = FLAGS.train_split, FLAGS.eval_split
  config.dtype = config.fast_cnn.muon_dtype = FLAGS.dtype
  config.steps_per_dispatch = FLAGS.steps_per_dispatch
  config.fast_cnn.tta_level = FLAGS.tta_level
  if not FLAGS.smoke:
    config.num_epochs = FLAGS.epochs
  config.eval_every_steps = config.checkpoint_every_steps = 10**9  # at the end only
  config.log_every_steps = 10**9
  config.max_checkpoints_to_keep, config.write_plots = 1, False
  result = train.train_and_evaluate(config, os.path.join(root, f'run{seed}'))
  if result['preempted']:  # a time limit's SIGTERM: the run did not finish
    return None
  timing = result['timing']
  seconds = (
    timing['first_dispatch_seconds']
    - timing['compile_seconds']
    + result['seconds_after_first_step']
  )
  return {
    'seed': seed,
    'seconds': seconds,
    'eval_seconds': timing['eval_seconds'],
    'compile_seconds': timing['compile_seconds'],
    'accuracy': result['eval']['accuracy'],
    'eval_examples': result['eval']['count'],
    'steps': result['steps'],
  }


def main(argv):
  del argv
  from dlearn import metrics

  metrics.quiet_library_logs()
  root = tempfile.mkdtemp(prefix='fast_cifar10_')
  # JAX_COMPILATION_CACHE_DIR, if set, keeps the cache (gpu_run.sh carries it to the next call).
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(root, 'jax_cache')
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  warmup = one_run(0, root)
  if warmup is None:
    sys.exit('stopped by a signal during the warm-up run')
  print(f'warm-up: {warmup["seconds"]:.2f} s, accuracy {warmup["accuracy"]:.4f}', flush=True)
  runs = []
  for seed in range(1, FLAGS.runs + 1):
    run = one_run(seed, root)
    if run is None:
      print(f'run {seed}: stopped by a signal; the {len(runs)} finished runs are kept', flush=True)
      break
    runs.append(run)
    print(
      f'run {seed}: {run["seconds"]:.2f} s (eval {run["eval_seconds"]:.2f} s), '
      f'accuracy {run["accuracy"]:.4f}',
      flush=True,
    )
    write_results(runs)  # after every run: a time limit keeps the finished ones


def write_results(runs):
  import results_file

  accuracies = [r['accuracy'] for r in runs]
  summary = {
    'median_seconds': statistics.median(r['seconds'] for r in runs),
    'mean_accuracy': statistics.mean(accuracies),
    'std_accuracy': statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
  }
  print(
    f'{len(runs)} runs: median {summary["median_seconds"]:.2f} s a run, accuracy '
    f'{summary["mean_accuracy"]:.4f} ± {summary["std_accuracy"]:.4f} (TTA level {FLAGS.tta_level}, '
    f'{runs[0]["eval_examples"]} {FLAGS.eval_split} images), {jax.device_count()} device(s)',
    flush=True,
  )
  kind = results_file.machine_kind(FLAGS.machine_kind)
  settings = {
    k: getattr(FLAGS, k)
    for k in ('dtype', 'steps_per_dispatch', 'tta_level', 'epochs', 'train_split', 'eval_split')
  }
  path = results_file.write(
    f'fast_cifar10-{kind}', kind, {'settings': settings, 'summary': summary, 'runs': runs}
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
