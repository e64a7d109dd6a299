"""The fast CIFAR-10 recipe (experiments/configs/fast_cifar10.py) timed as its reference times
itself (../shared/peers/airbench/airbench94_muon.py): several runs, seconds per run (training plus
the final evaluation with test-time augmentation, compilation excluded) and accuracy.

  python experiments/benchmarks/fast_cifar10.py [--data_dir=data/tfds] [--runs=8] [--epochs=8,9]
      [--dtype=bfloat16] [--steps_per_dispatch=8] [--tta_level=2] [--profile=DIR --peak_tflops=989]

Every run trains a fresh model (seed = run number) through `train.train_and_evaluate` in a new
work directory, evaluating only at the end. Each `--epochs` value is a variant; the variants take
turns run by run, on the same seeds, so that they are compared on the same minutes of the machine.
A warm-up run per variant comes first (its compilations fill JAX's persistent compilation cache
in a temporary folder; later runs read them back) and is not counted. The train split is read and
decoded once per process, as the reference reads its data files once: the runs share it (on one
device every run's shard is the whole split in its stored order). Timed per run: the first
dispatch without its compilation, every later step and the final evaluation; not timed: reading
the splits onto the device, compiling the evaluation step (the reference compiles in its warm-up
run), the whitening layer's initialisation (the reference times it: a 5,000-image covariance,
milliseconds on a GPU) and the final checkpoint's wait. Each variant's seconds and accuracy:
mean ± std, median and range (`results_file.runs_summary`).

`--profile=DIR`: after the timed runs, one more run of the first variant under `jax.profiler`
(its trace in DIR), summarised by `profile_summary.py` (the device's busy time per step, its
costliest operations), with XLA's count of one training step's floating-point operations (the
recipe's own step, at its batch size) and, given `--peak_tflops`, the fraction of that peak the
steps reach. Writes experiments/benchmarks/results/fast_cifar10-<machine kind>.json.
"""

import importlib.util
import os
import sys
import tempfile

import jax
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', 'data/tfds', 'Where the prepared cifar10_jpeg dataset is.')
flags.DEFINE_integer('runs', 8, 'Timed runs of each variant (after one warm-up run each).')
flags.DEFINE_string('dtype', 'bfloat16', 'config.dtype (and the Newton-Schulz dtype).')
flags.DEFINE_integer('steps_per_dispatch', 8, 'config.steps_per_dispatch.')
flags.DEFINE_integer('tta_level', 2, 'config.fast_cnn.tta_level of the final evaluation.')
flags.DEFINE_list('epochs', ['8'], 'config.num_epochs of each variant (e.g. 8,9).')
flags.DEFINE_string('profile', None, 'Trace one more run into this folder (jax.profiler).')
flags.DEFINE_float('peak_tflops', 0.0, "The device's peak (e.g. 989, H100/H200 bf16 dense).")
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


def one_run(seed: int, epochs: float, root: str) -> dict | None:
  from dlearn import train

  config = recipe_config()
  config.seed = seed
  config.data.data_dir = FLAGS.data_dir
  config.data.train_split, config.data.eval_split = FLAGS.train_split, FLAGS.eval_split
  config.dtype = config.fast_cnn.muon_dtype = FLAGS.dtype
  config.steps_per_dispatch = FLAGS.steps_per_dispatch
  config.fast_cnn.tta_level = FLAGS.tta_level
  if not FLAGS.smoke:
    config.num_epochs = epochs
  config.eval_every_steps = config.checkpoint_every_steps = 10**9  # at the end only
  config.log_every_steps = 10**9
  config.max_checkpoints_to_keep, config.write_plots = 1, False
  result = train.train_and_evaluate(config, os.path.join(root, f'run{seed}-epochs{epochs:g}'))
  if result['preempted'] or 'accuracy' not in result['eval']:  # a time limit's SIGTERM
    return None
  timing = result['timing']
  seconds = (
    timing['first_dispatch_seconds']
    - timing['compile_seconds']
    + result['seconds_after_first_step']
  )
  return {
    'seed': seed,
    'epochs': epochs,
    'seconds': seconds,
    'eval_seconds': timing['eval_seconds'],
    'compile_seconds': timing['compile_seconds'],
    'accuracy': result['eval']['accuracy'],
    'eval_examples': result['eval']['count'],
    'steps': result['steps'],
  }


def read_once():
  """The runs share the train split read and decoded once (`on_device`'s reads memoised by their
  source and indices), as the reference reads its data files once per process."""
  from dlearn.data import on_device

  read, cache = on_device._read, {}

  def shared(source, indices, info):
    key = (id(source), indices.tobytes())
    if key not in cache:
      cache[key] = read(source, indices, info)
    return cache[key]

  on_device._read = shared


def step_flops() -> float | None:
  """XLA's count of one training step of the recipe (batch, optimizer and precision as run)."""
  import dlearn_step

  config = recipe_config()
  config.dtype = config.fast_cnn.muon_dtype = FLAGS.dtype
  compiled, *_ = dlearn_step.compiled_step(config, (32, 32, 3), 10, config.batch_size)
  return dlearn_step.flops(compiled)


def profiled(seed: int, epochs: float, root: str) -> dict:
  """One more run traced into --profile, and what its trace says."""
  import profile_summary

  with jax.profiler.trace(FLAGS.profile, create_perfetto_trace=True):
    run = one_run(seed, epochs, root)
  if run is None:
    return {'stopped': True}
  summary = profile_summary.summarize(FLAGS.profile)
  print(profile_summary.report(summary, run['steps']), flush=True)
  flops = step_flops()
  profile = {'run': run, 'devices': summary, 'flops_a_step': flops}
  device = next(iter(summary.values()), None)
  if flops and device and device['busy_ms']:
    tflops = flops * run['steps'] / (device['busy_ms'] / 1e3) / 1e12
    profile['tflops_per_second_busy'] = tflops
    line = f'{flops / 1e9:.1f} GFLOP a step (XLA), {tflops:.1f} TFLOP/s over the busy time'
    line += ' (the evaluation in it)'
    if FLAGS.peak_tflops:
      profile['fraction_of_peak_busy'] = tflops / FLAGS.peak_tflops
      line += f', {tflops / FLAGS.peak_tflops:.1%} of {FLAGS.peak_tflops:g}'
    print(line, flush=True)
  return profile


def main(argv):
  del argv
  from dlearn import metrics

  metrics.quiet_library_logs()
  read_once()
  root = tempfile.mkdtemp(prefix='fast_cifar10_')
  # JAX_COMPILATION_CACHE_DIR, if set, keeps the cache (gpu_run.sh carries it to the next call).
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(root, 'jax_cache')
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  variants = [float(e) for e in FLAGS.epochs]
  for epochs in variants:
    warmup = one_run(0, epochs, root)
    if warmup is None:
      sys.exit('stopped by a signal during a warm-up run')
    print(f'warm-up, {epochs:g} epochs: {warmup["seconds"]:.2f} s, accuracy {warmup["accuracy"]:.4f}', flush=True)  # fmt: skip
  runs = {epochs: [] for epochs in variants}
  for seed in range(1, FLAGS.runs + 1):
    for epochs in variants:
      run = one_run(seed, epochs, root)
      if run is None:
        print(f'run {seed}, {epochs:g} epochs: stopped by a signal; the finished runs are kept', flush=True)  # fmt: skip
        return
      runs[epochs].append(run)
      print(
        f'run {seed}, {epochs:g} epochs: {run["seconds"]:.2f} s (eval {run["eval_seconds"]:.2f} s), '
        f'accuracy {run["accuracy"]:.4f}',
        flush=True,
      )
      write_results(runs)  # after every run: a time limit keeps the finished ones
  if FLAGS.profile:
    write_results(runs, profiled(FLAGS.runs + 1, variants[0], root))


def write_results(runs: dict, profile: dict | None = None):
  import results_file

  variants = {}
  for epochs, finished in runs.items():
    if not finished:
      continue
    summary = results_file.runs_summary(finished)
    print(
      f'{epochs:g} epochs, {results_file.runs_line(summary)} (TTA level {FLAGS.tta_level}, '
      f'{finished[0]["eval_examples"]} {FLAGS.eval_split} images), {jax.device_count()} device(s)',
      flush=True,
    )
    variants[f'epochs={epochs:g}'] = {'summary': summary, 'runs': finished}
  kind = results_file.machine_kind(FLAGS.machine_kind)
  settings = {
    k: getattr(FLAGS, k)
    for k in ('dtype', 'steps_per_dispatch', 'tta_level', 'epochs', 'train_split', 'eval_split')
  }
  fields = {'settings': settings, 'variants': variants}
  if profile:
    fields['profile'] = profile
  path = results_file.write(f'fast_cifar10-{kind}', kind, fields)
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
