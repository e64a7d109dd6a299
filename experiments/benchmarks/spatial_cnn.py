"""Spatial partitioning of a CNN (dlearn/models/cnn.py, `space_axis`): memory per device and step
time against the unpartitioned model as the number of parts (bands of image rows) grows.

  python experiments/benchmarks/spatial_cnn.py [--models=resnet,seed_dcnn] [--height=256]
      [--seed_dcnn_height=128] [--batch=2] [--parts=1,2,4,8] [--repeats=5] [--memory_only]

Per model and part count, one forward + backward step (loss, gradients averaged over the mesh) on
one batch of `--batch` square images (ResNet: `--height` rows; SeedDCNN: `--seed_dcnn_height`, as
its first dense layer grows with the image: 33.6M weights at 128x128) by two methods:
  shard_map  the model built with `space_axis='space'` under `jax.jit(jax.shard_map(...,
             check_vma=False))` on a 1 x parts ('batch', 'space') mesh, images split with
             P('batch', None, 'space'): halo rows exchanged by `lax.ppermute` (dlearn's method);
  gspmd      the unpartitioned model under `jax.jit`, the images' H dimension sharded over the
             devices by a NamedSharding, parameters replicated: XLA's SPMD partitioner inserts
             the halo exchange and the reductions itself.
parts = 1 is the unpartitioned model on one device. Memory per device comes from the compiled
executable (`memory_analysis()`: arguments, outputs, temporaries; deterministic, and meaningful on a
CPU too); step time is the median of `--repeats` steps after a warm-up step. The losses of both
methods are checked against the unpartitioned one.

On a CPU, the script forces 8 host devices (XLA_FLAGS, unless already set) before importing jax.
On the project's 2-core CPU machine those 8 devices share 2 cores, so the step times show that the
method runs, not its speed: more parts there only add communication and no compute.
Results go to experiments/benchmarks/results/spatial_cnn-<machine kind>.json.

Findings (2-core CPU, 8 forced devices, 2026-11-27; see the JSON). ResNet (stages 1,1,1,1, width 16,
256x256): temporaries per device fall with the parts, 132.5 → 74 → 37.5 → 19.4 MB for 1/2/4/8,
shard_map 1-4 % below gspmd at every count; step times of the two within this machine's noise.
SeedDCNN (128x128): its 33.6M-weight first dense layer dominates; shard_map's replicated-parameter
gradient is all-reduced by the pmean rule, which costs a kernel-sized buffer (128 MB) and an
all-reduce that XLA's partitioner replaces by an all-gather (gspmd: smaller and faster there).
dlearn uses shard_map + ppermute: it composes with the trainer's per-device step (pmap or shard_map,
named axes, BatchNorm's axis_name, the pmean rule), its communication is explicit (exactly the halo
rows, one psum per reduction), and it is at least as lean as gspmd for the convolutional part that
spatial partitioning is for.
"""

import os
import sys

# This checkout's dlearn, even where another checkout is the installed (editable) one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  # Only the host (CPU) platform reads this flag; on a GPU machine it changes nothing there.
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import results_file  # noqa: E402  (beside this script)
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from dlearn.models import cnn  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['resnet', 'seed_dcnn'], 'Which CNNs (resnet, seed_dcnn).')
flags.DEFINE_integer('height', 256, 'ResNet image height and width.')
flags.DEFINE_integer('seed_dcnn_height', 128, 'SeedDCNN image height and width.')
flags.DEFINE_integer('batch', 2, 'Images per step (one data-parallel group).')
flags.DEFINE_list('parts', ['1', '2', '4', '8'], 'Spatial part counts.')
flags.DEFINE_list('stage_sizes', ['1', '1', '1', '1'], 'ResNet blocks per stage.')
flags.DEFINE_integer('width', 16, 'ResNet width (channels of the first stage).')
flags.DEFINE_integer('repeats', 5, 'Timed steps per row (median reported).')
flags.DEFINE_list('methods', ['shard_map', 'gspmd'], 'Partitioning methods to compare.')
flags.DEFINE_bool(
  'memory_only',
  False,
  'Compile and report memory per device; run nothing (for '
  'images too large to step through on this machine).',
)
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')

DATA, SPACE = 'batch', 'space'
NUM_CLASSES = 10


def height_of(model):
  return FLAGS.seed_dcnn_height if model == 'seed_dcnn' else FLAGS.height


def build(model, space_axis, axis_name):
  shape = (height_of(model), height_of(model), 3)
  rngs = nnx.Rngs(0)
  if model == 'seed_dcnn':
    return cnn.SeedDCNN(NUM_CLASSES, shape, rngs=rngs, space_axis=space_axis)
  return cnn.ResNet(
    NUM_CLASSES,
    shape,
    rngs=rngs,
    width=FLAGS.width,
    axis_name=axis_name,
    stage_sizes=tuple(map(int, FLAGS.stage_sizes)),
    space_axis=space_axis,
  )


def loss_and_grads(graphdef, params, rest, images, labels):
  def loss_fn(params):
    logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return jax.value_and_grad(loss_fn)(params)


def compiled_step(model, method, parts, params, rest, images, labels):
  """(compiled step, its arguments). params/rest: the unpartitioned model's state."""
  devices = np.asarray(jax.devices()[:parts])
  if method == 'shard_map':
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(model, SPACE, DATA)), nnx.Param, ...)
    mesh = Mesh(devices.reshape(1, parts), (DATA, SPACE))

    def body(params, rest, images, labels):
      loss, grads = loss_and_grads(graphdef, params, rest, images[0], labels[0])
      return lax.pmean((loss, grads), (DATA, SPACE))  # the unpartitioned gradient (see cnn.py)

    step = jax.jit(
      jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(), P(), P(DATA, None, SPACE), P(DATA)),
        out_specs=P(),
        check_vma=False,
      )
    )
    args = (params, rest, images[None], labels[None])
    shardings = (P(), P(), P(DATA, None, SPACE), P(DATA))
  else:  # 'gspmd' (and parts = 1: the unpartitioned model on one device)
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(model, None, None)), nnx.Param, ...)
    mesh = Mesh(devices, (SPACE,))
    step = jax.jit(lambda *a: loss_and_grads(graphdef, *a), out_shardings=NamedSharding(mesh, P()))
    args = (params, rest, images, labels)
    shardings = (P(), P(), P(None, SPACE), P())
  args = tuple(jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, shardings))
  return step.lower(*args).compile(), args


def measure(model, method, parts, params, rest, images, labels):
  start = time.perf_counter()
  compiled, args = compiled_step(model, method, parts, params, rest, images, labels)
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  loss, times = (
    (float('nan'), [float('nan')])
    if FLAGS.memory_only
    else (jax.block_until_ready(compiled(*args))[0], [])
  )  # warm-up
  for _ in range(0 if FLAGS.memory_only else FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  mb = lambda b: b / 2**20
  row = {
    'model': model,
    'method': 'unpartitioned' if parts == 1 else method,
    'parts': parts,
    'argument_mb': mb(memory.argument_size_in_bytes),
    'output_mb': mb(memory.output_size_in_bytes),
    'temp_mb': mb(memory.temp_size_in_bytes),
    'total_mb': mb(
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
    ),
    'step_ms_median': 1e3 * statistics.median(times),
    'step_ms_min': 1e3 * min(times),
    'step_ms_max': 1e3 * max(times),
    'compile_s': compile_s,
    'loss': float(loss),
  }
  return row


def main(argv):
  del argv
  device = jax.devices()[0]
  kind = results_file.machine_kind(FLAGS.machine_kind)
  stage_sizes = tuple(map(int, FLAGS.stage_sizes))
  parts_list = [int(p) for p in FLAGS.parts]
  for model in FLAGS.models:  # a clear error before anything is compiled
    for parts in parts_list:
      cnn.check_spatial_parts(
        height_of(model), parts, cnn.spatial_downsampling(model, stage_sizes), model
      )
  print(
    f'{device.platform} ({device.device_kind}) x {jax.device_count()}, jax {jax.__version__}; '
    f'forward + backward of {FLAGS.batch} images; median of {FLAGS.repeats} steps',
    flush=True,
  )
  rows, workloads = [], {}
  for model in FLAGS.models:
    height = height_of(model)
    _, params, rest = nnx.split(build(model, None, None), nnx.Param, ...)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(FLAGS.batch, height, height, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, FLAGS.batch).astype(np.int32)
    workloads[model] = (
      f'{model}'
      + (f' stages {stage_sizes} width {FLAGS.width}' if model == 'resnet' else '')
      + f', {FLAGS.batch} x {height}x{height}x3 images, '
      f'{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M parameters'
    )
    print(f'\n{workloads[model]}', flush=True)
    print(
      f'{"method":<14}{"parts":>6}{"args MB":>9}{"out MB":>8}{"temp MB":>9}{"total MB":>10}'
      f'{"step ms":>10}{"min-max":>16}{"compile s":>10}{"loss err":>10}',
      flush=True,
    )
    baseline = None
    for parts in parts_list:
      if parts > jax.device_count():
        print(f'{"":<14}{parts:>6}  skipped: only {jax.device_count()} device(s)', flush=True)
        continue
      for method in ['gspmd'] if parts == 1 else FLAGS.methods:
        row = measure(model, method, parts, params, rest, images, labels)
        baseline = row['loss'] if baseline is None else baseline
        row['loss_error'] = abs(row['loss'] - baseline)
        rows.append(row)
        print(
          f'{row["method"]:<14}{parts:>6}{row["argument_mb"]:>9.1f}{row["output_mb"]:>8.1f}'
          f'{row["temp_mb"]:>9.1f}{row["total_mb"]:>10.1f}{row["step_ms_median"]:>10.1f}'
          f'{row["step_ms_min"]:>8.1f}-{row["step_ms_max"]:<7.1f}{row["compile_s"]:>10.1f}'
          f'{row["loss_error"]:>10.1e}',
          flush=True,
        )
  path = results_file.write(
    f'spatial_cnn-{kind}',
    kind,
    {
      'batch': FLAGS.batch,
      'workloads': workloads,
      'repeats': FLAGS.repeats,
      'rows': rows,
      'note': 'Memory per device from compiled.memory_analysis() (total = arguments + outputs + '
      'temporaries - aliased). On a CPU the forced host devices share the cores: step '
      'times there show the method runs, not its speed.',
    },
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
