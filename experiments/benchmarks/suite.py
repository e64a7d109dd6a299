"""dlearn against PyTorch, in one run on one machine: training-step throughput per workload.

  pip install -e ".[benchmark]"      # PyTorch; here: pip install torch==2.13.0 (CPU build on disk)
  python experiments/benchmarks/suite.py [--repeats=5] [--steps=5] [--only=lstm,elman] [--nocompile]
      [--dtype=bfloat16] [--noplain_layers] [--imagenet_batch=8] [--profile=DIR]

Per workload and framework: examples/s and step time (median, and min-max over repeats of
`--steps` steps, synthetic data already on the device), the first call's time (compilation included;
excluded from step time), peak memory (on a CPU: the process's peak resident size so far, so it
only grows down the table), achieved FLOP/s (the dlearn step's floating-point operations: XLA's
count for CNNs, 6x the multiply-adds for RNNs; used for both frameworks: same model, same work),
and, on a GPU, the fraction of `--peak_tflops`. The ratio column is dlearn / PyTorch eager (and / torch.compile).
`--dtype=bfloat16` times both frameworks in mixed precision (dlearn's config.dtype; PyTorch's
autocast), float32 parameters in both. On a GPU, LSTMs get a row 'dlearn cudnn' (config.rnn.implementation='cudnn', float32).
The small workloads get a row 'dlearn K/dispatch' (config.steps_per_dispatch=K, `--steps_per_dispatch`;
per-step times are the dispatch's divided by K). For the CNNs a row 'dlearn plain layers' times the same
step with XLA's own max pooling and convolution gradient (what dlearn.models.layers replaces), so
the table shows whether that fast path pays on this machine. `--profile=DIR` traces `--steps` more
steps of each dlearn row (`jax.profiler`, a folder per row in DIR) and prints and keeps what the
trace says (`profile_summary.py`: the device's busy time a step, its costliest operations).
Results are also written as JSON to experiments/benchmarks/results/<machine kind>.json.
"""

import os
import resource
import statistics
import sys
import time

import jax
import ml_collections
from absl import app, flags

from dlearn import configs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its neighbours:
import dlearn_step  # noqa: E402
import results_file  # noqa: E402  (and torch_reference, imported where PyTorch is timed)

FLAGS = flags.FLAGS
flags.DEFINE_integer('repeats', 5, 'Timed repeats per workload and framework.')
flags.DEFINE_integer('steps', 5, 'Steps per timed repeat.')
flags.DEFINE_list('only', [], 'Run only the workloads whose name contains one of these.')
flags.DEFINE_bool('compile', True, 'Also time torch.compile.')
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_integer('rnn_unroll', 1, 'dlearn RNNs: time steps per scan iteration.')
flags.DEFINE_enum(
  'dtype', 'float32', ['float32', 'bfloat16'], 'Precision of the computation, both frameworks.'
)
flags.DEFINE_bool(
  'plain_layers', True, "CNNs: also time dlearn with XLA's own pooling and convolution gradient."
)
flags.DEFINE_integer(
  'steps_per_dispatch',
  8,
  'The small workloads (seed_dcnn b32, the LSTM at '
  'batch 64): also time dlearn with this many steps per dispatch '
  '(config.steps_per_dispatch; 1 leaves the row out).',
)
flags.DEFINE_float(
  'peak_tflops',
  0.0,
  "The device's peak for the fraction-of-peak column (e.g. "
  '989 for H100 bf16 dense); 0 leaves it out.',
)

flags.DEFINE_string('results_suffix', '', 'Appended to the results file name (e.g. -imagenet).')
flags.DEFINE_string(
  'profile',
  None,
  "Trace `--steps` more of each dlearn row's steps into this folder (jax.profiler).",
)
flags.DEFINE_integer(
  'imagenet_batch', 8, 'Batch of the 224x224 workloads (ResNet-50, ViT-B/16): small on a CPU.'
)


def workloads():
  """(name, model, batch, shape of one example, {config section: overrides})."""
  b = FLAGS.imagenet_batch
  return [
    ('seed_dcnn b32', 'seed_dcnn', 32, (32, 32, 3), {}),
    ('seed_dcnn b1024', 'seed_dcnn', 1024, (32, 32, 3), {}),
    ('resnet18 b128', 'resnet', 128, (32, 32, 3), {}),
    ('lstm T32 F96 H256 b256', 'rnn', 256, (32, 96), {'rnn': {'cell': 'lstm', 'hidden_size': 256}}),
    ('lstm T29 F12 H128 b64', 'rnn', 64, (29, 12), {'rnn': {'cell': 'lstm', 'hidden_size': 128}}),
    (
      'lstm T1024 F3 H128 b256',
      'rnn',
      256,
      (1024, 3),
      {'rnn': {'cell': 'lstm', 'hidden_size': 128}},
    ),
    (
      'elman T32 F96 H256 b256',
      'rnn',
      256,
      (32, 96),
      {'rnn': {'cell': 'simple', 'hidden_size': 256}},
    ),
    (f'resnet50 224px b{b}', 'resnet50', b, (224, 224, 3), {}),
    (f'vit_b16 224px b{b}', 'vit', b, (224, 224, 3), {'vit': {'size': 'B', 'patch': 16}}),
  ]


PLAIN_LAYER_MODELS = ('seed_dcnn', 'resnet')  # the CNNs built on dlearn/models/layers.py
NUM_CLASSES = 10
SMALL = ('seed_dcnn b32', 'lstm T29 F12 H128 b64')  # where launch overhead can matter


def training_flops(model, batch_size, shape, overrides):
  """RNNs: 6 x the forward multiply-adds (forward 2, backward 4 per multiply-add). XLA's cost
  analysis counts a scan's body once, not once per time step, so it cannot be used there.
  None for the CNNs, whose count XLA gets right."""
  if model != 'rnn':
    return None
  steps, features = shape
  rnn = overrides['rnn']
  hidden, gates = rnn['hidden_size'], {'lstm': 4, 'gru': 3, 'simple': 1}[rnn['cell']]
  multiply_adds = steps * gates * hidden * (features + hidden) + hidden * NUM_CLASSES
  return 6 * batch_size * multiply_adds


def _timed(step_fn, repeats, steps, warmup_steps=3):
  """(first call seconds, [seconds per step of each repeat]); a few more untimed steps after the
  first let lazy compilers (torch.compile) settle."""
  start = time.perf_counter()
  step_fn(1)
  first = time.perf_counter() - start
  step_fn(warmup_steps)
  per_step = []
  for _ in range(repeats):
    start = time.perf_counter()
    step_fn(steps)
    per_step.append((time.perf_counter() - start) / steps)
  return first, per_step


def _peak_memory_mb():
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole process (CPU)


def time_dlearn(
  model,
  batch_size,
  shape,
  overrides,
  repeats,
  steps,
  plain_layers=False,
  rnn_implementation='scan',
  steps_per_dispatch=1,
  profile_as=None,
):
  """(first call seconds, [seconds per step of each repeat], FLOPs per step, and with
  --profile, what a trace of `steps` more steps says (`profile_summary`), in --profile/profile_as)."""
  config = configs.base()
  config.model, config.data.augment, config.learning_rate = model, False, 0.01
  config.plain_layers = plain_layers
  config.dtype = FLAGS.dtype
  for section, values in overrides.items():
    if section in config:
      config[section].update(values)
    else:  # a plug-in model's own section
      config[section] = ml_collections.ConfigDict(values)
  config.rnn.unroll = FLAGS.rnn_unroll
  config.rnn.implementation = rnn_implementation
  compiled, state, batch, compile_seconds = dlearn_step.compiled_step(
    config, shape, NUM_CLASSES, batch_size, steps_per_dispatch
  )
  flops = training_flops(model, batch_size, shape, overrides) or dlearn_step.flops(compiled)
  holder = {'state': state}

  def run(n):
    for _ in range(n):
      holder['state'], sums = compiled(holder['state'], batch)
    jax.block_until_ready(sums)

  dispatches = max(1, steps // steps_per_dispatch)
  first, per_dispatch = _timed(run, repeats, dispatches)
  profile = None
  if FLAGS.profile and profile_as:
    import profile_summary

    folder = os.path.join(FLAGS.profile, profile_as.replace(' ', '_').replace('/', '-'))
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      run(dispatches)
    profile = profile_summary.summarize(folder)
    print(profile_summary.report(profile, dispatches * steps_per_dispatch), flush=True)
  return compile_seconds + first, [t / steps_per_dispatch for t in per_dispatch], flops, profile


def time_torch(model, batch_size, shape, overrides, repeats, steps, compiled):
  import torch
  import torch_reference

  if model == 'seed_dcnn':
    network = torch_reference.SeedDCNN(NUM_CLASSES, shape)
  elif model == 'resnet':
    network = torch_reference.ResNet(NUM_CLASSES)
  elif model == 'rnn':
    rnn = overrides['rnn']
    network = torch_reference.RNNClassifier(NUM_CLASSES, shape[-1], rnn['hidden_size'], rnn['cell'])
  else:  # torchvision's resnet50, timm's ViTs
    network = torch_reference.imagenet_model(model, NUM_CLASSES, overrides.get(model, {}))
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  # float32 matmuls in TF32, as JAX does by default on this GPU (cuDNN convolutions already are).
  torch.backends.cuda.matmul.allow_tf32 = True
  # A fresh torch.compile per workload: dynamo otherwise counts every earlier workload's optimizer
  # against its recompile limit (8) and runs the optimizer step eagerly after that.
  torch._dynamo.reset()
  network = network.to(device).train()
  optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
  generator = torch.Generator().manual_seed(0)
  if len(shape) == 3:  # NCHW, normalised floats (dlearn gets uint8 and normalises in its step)
    inputs = torch.randn(batch_size, shape[2], shape[0], shape[1], generator=generator)
  else:
    inputs = torch.randn(batch_size, *shape, generator=generator)
  inputs = inputs.to(device)
  labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator).to(device)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device, torch.bfloat16, enabled=FLAGS.dtype == 'bfloat16'):
      logits = network(inputs)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    return loss

  if compiled:
    train_step = torch.compile(train_step)
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()

  def run(n):
    for _ in range(n):
      loss = train_step()
    loss.item()  # waits for the device

  first, per_step = _timed(run, repeats, steps)
  memory = (
    torch.cuda.max_memory_allocated() / 2**20
    if device == 'cuda'
    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  )
  return first, per_step, memory


def _row(workload, framework, batch_size, first, per_step, memory_mb, flops):
  median = statistics.median(per_step)
  row = {
    'workload': workload,
    'framework': framework,
    'batch_size': batch_size,
    'examples_per_second': batch_size / median,
    'step_ms_median': 1e3 * median,
    'step_ms_min': 1e3 * min(per_step),
    'step_ms_max': 1e3 * max(per_step),
    'first_call_s': first,
    'peak_memory_mb': memory_mb,
    'flops_per_step': flops,
    'tflops_per_second': flops / median / 1e12 if flops else None,
  }
  if FLAGS.peak_tflops and flops:
    row['fraction_of_peak'] = row['tflops_per_second'] / FLAGS.peak_tflops
  return row


def main(argv):
  del argv
  device = jax.devices()[0]
  kind = results_file.machine_kind(FLAGS.machine_kind)
  rows = []
  header = (
    f'{"workload":<26}{"framework":<20}{"examples/s":>11}{"step ms":>9}{"min-max":>14}'
    f'{"first s":>9}{"peak MB":>9}{"TFLOP/s":>9}{"ratio":>7}'
  )
  print(
    f'{device.platform} ({device.device_kind}), jax {jax.__version__}; median of '
    f'{FLAGS.repeats} x {FLAGS.steps} steps',
    flush=True,
  )
  print(header, flush=True)
  for name, model, batch_size, shape, overrides in workloads():
    if FLAGS.only and not any(part in name for part in FLAGS.only):
      continue

    def dlearn_row(framework, flops=None, **options):
      first, per_step, counted, profile = time_dlearn(
        *(model, batch_size, shape, overrides, FLAGS.repeats, FLAGS.steps),
        profile_as=f'{name} {framework}',
        **options,
      )
      row = _row(name, framework, batch_size, first, per_step, _peak_memory_mb(), flops or counted)
      if profile:
        row['profile'] = profile
      return row

    ours = dlearn_row('dlearn')
    flops = ours['flops_per_step']
    results = [ours]
    if FLAGS.plain_layers and model in PLAIN_LAYER_MODELS:
      results.append(dlearn_row('dlearn plain layers', flops, plain_layers=True))
    if name in SMALL and FLAGS.steps_per_dispatch > 1:
      results.append(
        dlearn_row(
          f'dlearn {FLAGS.steps_per_dispatch}/dispatch',
          flops,
          steps_per_dispatch=FLAGS.steps_per_dispatch,
        )
      )
    if (
      overrides.get('rnn', {}).get('cell') == 'lstm'
      and jax.default_backend() == 'gpu'
      and (FLAGS.dtype == 'float32')
    ):  # JAX's cuDNN LSTM (on a CPU it would time a reference)
      results.append(dlearn_row('dlearn cudnn', flops, rnn_implementation='cudnn'))
    for compiled in [False, True] if FLAGS.compile else [False]:
      framework = 'torch.compile' if compiled else 'torch eager'
      try:
        first, per_step, memory = time_torch(
          model, batch_size, shape, overrides, FLAGS.repeats, FLAGS.steps, compiled
        )
      except Exception as e:  # torch.compile is not available everywhere
        print(f'{name:<26}{framework:<20} failed: {type(e).__name__}: {str(e)[:80]}', flush=True)
        continue
      theirs = _row(name, framework, batch_size, first, per_step, memory, flops)
      for row in results[1:]:
        if row['framework'].startswith('dlearn') and not compiled:  # its ratio: vs eager
          row['ratio'] = row['examples_per_second'] / theirs['examples_per_second']
      ours[f'ratio_vs_{framework.replace(" ", "_").replace(".", "_")}'] = (
        ours['examples_per_second'] / theirs['examples_per_second']
      )
      theirs['ratio'] = ours['examples_per_second'] / theirs['examples_per_second']
      results.append(theirs)
    for row in results:
      tflops = f'{row["tflops_per_second"]:.3f}' if row['tflops_per_second'] else '-'
      ratio = f'{row["ratio"]:.2f}' if 'ratio' in row else ''
      print(
        f'{name:<26}{row["framework"]:<20}{row["examples_per_second"]:>11,.0f}'
        f'{row["step_ms_median"]:>9.2f}{row["step_ms_min"]:>7.1f}-{row["step_ms_max"]:<6.1f}'
        f'{row["first_call_s"]:>9.2f}{row["peak_memory_mb"]:>9.0f}{tflops:>9}{ratio:>7}',
        flush=True,
      )
    rows.extend(results)
    path = _write(kind, rows)  # after every workload: a run cut short keeps its rows
  print(f'wrote {path}')


def _write(kind, rows):
  import torch

  suffix = (
    ('' if FLAGS.dtype == 'float32' else f'-{FLAGS.dtype}')
    + (f'-unroll{FLAGS.rnn_unroll}' if FLAGS.rnn_unroll > 1 else '')
    + FLAGS.results_suffix
  )
  return results_file.write(
    f'{kind}{suffix}',
    kind,
    {
      'dtype': FLAGS.dtype,
      'repeats': FLAGS.repeats,
      'steps': FLAGS.steps,
      'rnn_unroll': FLAGS.rnn_unroll,
      'rows': rows,
      'note': "ratio = dlearn examples/s / PyTorch examples/s; TFLOP/s from XLA's count "
      'of the dlearn step, applied to both frameworks.',
    },
    versions={'torch': torch.__version__},
  )


if __name__ == '__main__':
  from dlearn import metrics

  metrics.quiet_library_logs()
  app.run(main)
