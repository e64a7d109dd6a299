"""End-to-end training time through the real input pipeline, by `train.train_and_evaluate`: the
host pipeline (grain, a batch to the device per step) against the train split resident on the
device (`config.data.on_device`), each with one and with K steps per dispatch
(`config.steps_per_dispatch`).

  python experiments/benchmarks/epoch_time.py [--data_dir=data/tfds] [--devices=1] [--repeats=2]
      [--steps=0] [--workloads=seed_dcnn,lstm] [--variants=host:1,host:8,device:1,device:8]
      [--batch_size=0] [--eval_examples=512] [--results_suffix=]

Workloads: the article's `seed_dcnn` recipe (batch 32, experiments/configs/seed_dcnn_cifar10.py)
and the LSTM over CIFAR-10 rows (batch 256, lstm_cifar10_rows.py), on the prepared `cifar10_jpeg`
dataset (see those files); `resnet50`, ResNet-50 v1.5 (imagenet_resnet50.py, bf16, batch 256)
through the JPEG pipeline (encoded images decoded, random-resized-cropped to 224x224 and flipped
in worker processes, one per core) on the prepared `imagenet_like` folder (`imagenet_like.py`),
the host variants only (encoded images are not kept on the device): its images/s beside
`suite.py`'s step alone say whether the host keeps the device fed. Each run trains `--steps` steps
(0: the workload's default; -1: one whole epoch) in a fresh work directory. Timed: every step after
the first dispatch (which includes compilation), without the final evaluation (run on 512 validation
images) but with the final checkpoint's save call; steps/s, examples/s, and the epoch time those
give, with the on-device variant's one-off loading of the split shown apart. Variants run
interleaved, `--repeats` times; the table shows medians. Results are also written as JSON to
experiments/benchmarks/results/epoch_time-<machine kind>.json.

`--devices` (default 1) sets the CPU device count, or the visible GPUs; the batch stays the
workload's global batch.
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', 'data/tfds', 'Where the prepared cifar10_jpeg dataset is.')
flags.DEFINE_integer(
  'devices', 1, 'Devices to train on (CPU: forced host devices; GPU: the first N visible).'
)
flags.DEFINE_integer('repeats', 2, 'Runs per workload and variant, interleaved.')
flags.DEFINE_integer(
  'steps',
  0,
  "Steps per run: 0 for the workload's default, -1 for one epoch. "
  "Rounded up to a multiple of every variant's steps per dispatch.",
)
flags.DEFINE_list('workloads', ['seed_dcnn', 'lstm'], 'Among: seed_dcnn, lstm, resnet50.')
flags.DEFINE_list(
  'variants',
  ['host:1', 'host:8', 'device:1', 'device:8'],
  'pipeline:steps_per_dispatch, pipeline being host or device.',
)
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_string('results_suffix', '', 'Appended to the results file name (e.g. -resnet50).')
flags.DEFINE_integer('batch_size', 0, "Global batch (0: the workload's).")
flags.DEFINE_integer('eval_examples', 512, 'Validation images of the final evaluation.')

# name: (config file, default steps per run, config fields set)
WORKLOADS = {
  'seed_dcnn': ('seed_dcnn_cifar10.py', 400, {'data.name': 'cifar10_jpeg'}),  # not its fetched one
  'lstm': ('lstm_cifar10_rows.py', 96, {}),
  'resnet50': (
    'imagenet_resnet50.py',
    48,
    {'data.name': 'imagenet_like', 'batch_size': 256, 'dtype': 'bfloat16'},
  ),
}
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _set_devices(count: int):
  """Before jax is imported: `count` CPU devices, or the first `count` GPUs."""
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={count}'
  ).strip()
  os.environ.setdefault('CUDA_VISIBLE_DEVICES', ','.join(str(i) for i in range(count)))


def _config(workload: str, pipeline: str, steps_per_dispatch: int, steps: int):
  import importlib.util

  from dlearn import configs

  path = os.path.join(ROOT, 'experiments', 'configs', WORKLOADS[workload][0])
  spec = importlib.util.spec_from_file_location('experiment', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = configs.override(module.get_config(), WORKLOADS[workload][2])
  config.batch_size = FLAGS.batch_size or config.batch_size
  config.data.data_dir = FLAGS.data_dir
  config.data.on_device = pipeline == 'device'
  config.data.eval_split = f'validation[:{FLAGS.eval_examples}]'
  config.eval_batch_size = FLAGS.eval_examples
  config.steps_per_dispatch = steps_per_dispatch
  if steps > 0:
    config.num_train_steps = steps
  else:
    config.num_epochs = 1
  # Boundaries only at the end, so that every dispatch holds K steps (when `steps` is a multiple).
  interval = steps if steps > 0 else 10**9
  config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = interval
  config.write_plots = False
  config.fresh = True
  return config


def _run(workload, pipeline, steps_per_dispatch, steps):
  import tempfile

  import jax

  from dlearn import train

  config = _config(workload, pipeline, steps_per_dispatch, steps)
  with tempfile.TemporaryDirectory() as workdir:
    result = train.train_and_evaluate(config, workdir)
  timing = result['timing']
  seconds = result['seconds_after_first_step'] - timing['eval_seconds']
  steps_timed = timing['steps_after_first_dispatch']
  steps_per_second = steps_timed / seconds
  mesh_size = jax.device_count()
  return {
    'workload': workload,
    'pipeline': pipeline,
    'steps_per_dispatch': steps_per_dispatch,
    'batch_size': config.batch_size,
    'devices': mesh_size,
    'steps': result['steps'],
    'steps_timed': steps_timed,
    'seconds_timed': seconds,
    'steps_per_second': steps_per_second,
    'examples_per_second': steps_per_second * config.batch_size,
    'first_dispatch_seconds': timing['first_dispatch_seconds'],
    'data_load_seconds': timing['data_load_seconds'],
    'train_loss': result['train'].get('loss'),
  }


def main(argv):
  del argv
  sys.path.insert(0, ROOT)  # this checkout's dlearn, whichever is installed
  import math
  import statistics

  import jax
  import results_file  # beside this script

  from dlearn import metrics, parallel
  from dlearn.data import on_device
  from dlearn.data import pipeline as pipeline_lib

  metrics.quiet_library_logs()

  variants = [(v.split(':')[0], int(v.split(':')[1])) for v in FLAGS.variants]
  for pipeline, _ in variants:
    if pipeline not in ('host', 'device'):
      raise app.UsageError(f'--variants: {pipeline!r} is not host or device')
  multiple = math.lcm(*(k for _, k in variants))
  device = jax.devices()[0]
  kind = results_file.machine_kind(FLAGS.machine_kind)
  print(
    f'{jax.device_count()} x {device.platform} ({device.device_kind}), jax {jax.__version__}; '
    f'median of {FLAGS.repeats} interleaved run(s) per variant',
    flush=True,
  )

  steps_per_epoch, runs = {}, []
  for workload in FLAGS.workloads:
    config = _config(workload, 'host', 1, 1)
    source = pipeline_lib.load_split(
      config.data.name, config.data.train_split, config.data.data_dir
    )
    # One epoch as the on-device path counts it (the host's is the same or one step more).
    layout = on_device.Layout(
      len(source),
      jax.device_count(),
      parallel.per_device_batch_size(config.batch_size, parallel.make_mesh()),
    )
    steps_per_epoch[workload] = len(source) // config.batch_size
    steps = FLAGS.steps or WORKLOADS[workload][1]
    if steps > 0:
      steps = math.ceil(steps / multiple) * multiple
    elif layout.steps_per_epoch % multiple:
      print(
        f'note: {workload}: an epoch of {layout.steps_per_epoch} steps is not a multiple of '
        f'{multiple}; its last steps run one per dispatch'
      )
    runs.append((workload, steps))

  rows = []
  for repeat in range(FLAGS.repeats):
    for workload, steps in runs:
      for pipeline, k in variants:
        row = _run(workload, pipeline, k, steps)
        row['repeat'] = repeat
        rows.append(row)
        print(
          f'  run {repeat + 1}/{FLAGS.repeats} {workload} {pipeline} K={k}: '
          f'{row["steps_per_second"]:.1f} steps/s',
          flush=True,
        )

  header = (
    f'{"workload":<12}{"pipeline":<10}{"K":>3}{"batch":>7}{"steps":>7}{"steps/s":>10}'
    f'{"examples/s":>12}{"epoch s":>9}{"vs host K=1":>13}{"first s":>9}{"load s":>8}'
  )
  print(header)
  summary = []
  for workload, _steps in runs:
    baseline = None
    for pipeline, k in variants:
      mine = [
        r
        for r in rows
        if (r['workload'], r['pipeline'], r['steps_per_dispatch']) == (workload, pipeline, k)
      ]
      rate = statistics.median(r['steps_per_second'] for r in mine)
      entry = {
        'workload': workload,
        'pipeline': pipeline,
        'steps_per_dispatch': k,
        'batch_size': mine[0]['batch_size'],
        'steps': mine[0]['steps'],
        'steps_per_second': rate,
        'examples_per_second': rate * mine[0]['batch_size'],
        'epoch_steps': steps_per_epoch[workload],
        'epoch_seconds': steps_per_epoch[workload] / rate,
        'first_dispatch_seconds': statistics.median(r['first_dispatch_seconds'] for r in mine),
        'data_load_seconds': statistics.median(r['data_load_seconds'] for r in mine),
      }
      if (pipeline, k) == ('host', 1):
        baseline = rate
      entry['speedup_vs_host_k1'] = rate / baseline if baseline else None
      summary.append(entry)
      speedup = f'{entry["speedup_vs_host_k1"]:.2f}x' if baseline else '-'
      load = f'{entry["data_load_seconds"]:.1f}' if pipeline == 'device' else '-'
      print(
        f'{workload:<12}{pipeline:<10}{k:>3}{entry["batch_size"]:>7}{entry["steps"]:>7}'
        f'{rate:>10.1f}{entry["examples_per_second"]:>12,.0f}'
        f'{entry["epoch_seconds"]:>9.1f}{speedup:>13}'
        f'{entry["first_dispatch_seconds"]:>9.1f}{load:>8}'
      )

  path = results_file.write(
    f'epoch_time-{kind}{FLAGS.results_suffix}',
    kind,
    {
      'repeats': FLAGS.repeats,
      'summary': summary,
      'runs': rows,
      'note': 'steps/s over the steps after the first dispatch (compilation excluded), final '
      'evaluation excluded; epoch s = steps of one epoch / steps/s; load s = reading the '
      'split onto the device, once per run (not in epoch s).',
    },
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  flags.FLAGS(sys.argv, known_only=True)  # --devices must act before jax is imported
  _set_devices(FLAGS.devices)
  app.run(main)
