"""The time-partitioned, pipelined RNN against the unpartitioned model, as the number of time parts
grows: memory per device, step time (forward + backward), and the pipeline's idle fraction.

  PYTHONPATH=. python experiments/benchmarks/pipelined_rnn.py [--seq_len=1024] [--repeats=3]

Rows: the unpartitioned model (`RNNClassifier.__call__`, one device), then the pipelined one
(`pipelined_logits` under shard_map over a 1-D time mesh of `parts` devices, the whole batch on
every device) for each parts × micro-batches.

  * memory: from the compiled executable (`memory_analysis()`: argument, output and temporary
    bytes of one device's program). Deterministic, and meaningful on a CPU too.
  * step: median (and min) wall time of a jitted forward + backward (loss and gradients,
    pmean-ed).
  * idle: theory (P − 1) / (M + P − 1), and a measured estimate 1 − M·τ·s / step, from the
    fastest runs (the least disturbed by other processes on a shared machine), where τ is the
    measured time of one tick's work alone (the pipelined step on one device, batch B/M, length
    T/P: one chunk for one micro-batch, forward and backward) and s the core-sharing factor
    P / min(P, cores) (1 on an accelerator: one device each). M·τ is one device's useful work;
    the rest of the step is the bubble (where the SPMD program computes on a discarded
    placeholder), communication and overhead.

On a CPU the 8 "devices" are threads on the host's cores (each device single-threaded here, so a
device is about one core): with P above the core count the devices take turns on the cores and
wall time cannot show the pipeline's overlap, so `s` corrects for an assumed fair share, and
other load on the machine makes the estimate noisier still: the P=1, M=1 row runs the same program
as its own tick, so its estimate (ideally 0) shows the noise. Small micro-batches also make a tick
mostly fixed cost (the per-tick ppermute rendezvous of all devices, small matrix products), which
the estimate counts as idle. The measurement that counts belongs to a machine with one accelerator
per part; the memory columns are exact anywhere.

Results go to experiments/benchmarks/results/pipelined_rnn-<machine kind>.json.
"""

import os

if 'XLA_FLAGS' not in os.environ and os.environ.get('JAX_PLATFORMS', 'cpu') == 'cpu':
  # Before jax is imported. Single-threaded devices: on a CPU a device is then about one core.
  os.environ['XLA_FLAGS'] = (
    '--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false'
  )

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import results_file  # noqa: E402  (beside this script)
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P

from dlearn.models import rnn  # noqa: E402
from dlearn.models.pipelined_rnn import check_time_parts, pipelined_logits  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('cell', 'lstm', 'simple, lstm or gru.')
flags.DEFINE_integer('seq_len', 1024, 'Sequence length T.')
flags.DEFINE_integer('features', 3, 'Features F.')
flags.DEFINE_integer('hidden', 128, 'Hidden size H.')
flags.DEFINE_integer('batch', 64, 'Batch (on every device of the time axis).')
flags.DEFINE_list('parts', ['1', '2', '4', '8'], 'Time parts P.')
flags.DEFINE_list('micro_batches', ['1', '2', '4', '8', '16'], 'Micro-batches M.')
flags.DEFINE_integer('repeats', 3, 'Timed steps (after one untimed).')
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
CLASSES = 10
MiB = 2**20


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _time(fn, *args):
  """(median, min) seconds of `repeats` runs after an untimed one."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), min(times)


def _memory(compiled):
  m = compiled.memory_analysis()
  return {
    'argument_mib': m.argument_size_in_bytes / MiB,
    'output_mib': m.output_size_in_bytes / MiB,
    'temp_mib': m.temp_size_in_bytes / MiB,
  }


def _data(batch, seq_len, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, seq_len, FLAGS.features)), jnp.float32)
  lengths = jnp.asarray(rng.integers(seq_len // 2, seq_len + 1, size=batch))
  labels = jnp.asarray(rng.integers(0, CLASSES, size=batch))
  return x, lengths, labels


def unpartitioned_step(model):
  graphdef, params = nnx.split(model)

  def step(params, x, lengths, labels):
    return jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p)(x, lengths), labels))(params)

  return jax.jit(step), params


def pipelined_step(model, parts, micro_batches):
  mesh = Mesh(np.asarray(jax.devices()[:parts]), ('time',))
  graphdef, params = nnx.split(model)

  def body(params, x, lengths, labels):
    def loss_fn(params):
      logits = pipelined_logits(
        nnx.merge(graphdef, params), x, lengths, time_axis='time', micro_batches=micro_batches
      )
      return _loss(logits, labels)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return jax.lax.pmean((loss, grads), 'time')

  step = jax.shard_map(
    body, mesh=mesh, in_specs=(P(), P(None, 'time'), P(), P()), out_specs=P(), check_vma=False
  )
  return jax.jit(step), params


def measure(step, params, data):
  compiled = step.lower(params, *data).compile()
  return _memory(compiled), _time(compiled, params, *data)


def main(argv):
  del argv
  device = jax.devices()[0]
  cpu = device.platform == 'cpu'
  kind = results_file.machine_kind(FLAGS.machine_kind)
  cores = os.cpu_count() if cpu else None
  T, B = FLAGS.seq_len, FLAGS.batch
  model = rnn.RNNClassifier(
    CLASSES, FLAGS.features, rngs=nnx.Rngs(0), cell=FLAGS.cell, hidden_size=FLAGS.hidden
  )
  print(
    f'{device.platform} ({device.device_kind}) x{jax.device_count()}, jax {jax.__version__}; '
    f'{FLAGS.cell} T={T} F={FLAGS.features} H={FLAGS.hidden} batch {B}; median of '
    f'{FLAGS.repeats} steps'
  )
  header = (
    f'{"model":<14}{"P":>3}{"M":>4}{"arg MiB":>9}{"out MiB":>9}{"temp MiB":>10}'
    f'{"temp/base":>10}{"step ms":>9}{"/base":>7}{"min ms":>8}{"tick min":>9}{"idle thy":>9}'
    f'{"idle est":>9}'
  )
  print(header)
  print('-' * len(header))

  memory, (seconds, fastest) = measure(*unpartitioned_step(model), _data(B, T))
  base = {
    'model': 'unpartitioned',
    'parts': 1,
    'micro_batches': 1,
    **memory,
    'step_s': seconds,
    'step_min_s': fastest,
  }
  rows = [base]
  print(
    f'{"unpartitioned":<14}{1:>3}{1:>4}{memory["argument_mib"]:>9.2f}'
    f'{memory["output_mib"]:>9.2f}{memory["temp_mib"]:>10.2f}{1:>10.2f}{seconds * 1e3:>9.0f}'
    f'{1:>7.2f}{fastest * 1e3:>8.0f}'
  )
  ticks = {}  # τ by (micro-batch, chunk length)
  for parts in map(int, FLAGS.parts):
    for micro_batches in map(int, FLAGS.micro_batches):
      check_time_parts(T, parts, micro_batches, B)
      memory, (seconds, fastest) = measure(
        *pipelined_step(model, parts, micro_batches), _data(B, T)
      )
      shape = (B // micro_batches, T // parts)
      if shape not in ticks:  # one tick alone: one chunk of one micro-batch, on one device
        ticks[shape] = measure(*pipelined_step(model, 1, 1), _data(*shape))[1][1]
      tick = ticks[shape]
      sharing = parts / min(parts, cores) if cpu else 1.0
      theory = (parts - 1) / (micro_batches + parts - 1)
      estimate = 1 - micro_batches * tick * sharing / fastest
      row = {
        'model': 'pipelined',
        'parts': parts,
        'micro_batches': micro_batches,
        **memory,
        'step_s': seconds,
        'step_min_s': fastest,
        'tick_min_s': tick,
        'core_sharing': sharing,
        'idle_theory': theory,
        'idle_estimate': estimate,
      }
      rows.append(row)
      print(
        f'{"pipelined":<14}{parts:>3}{micro_batches:>4}{memory["argument_mib"]:>9.2f}'
        f'{memory["output_mib"]:>9.2f}{memory["temp_mib"]:>10.2f}'
        f'{memory["temp_mib"] / base["temp_mib"]:>10.2f}{seconds * 1e3:>9.0f}'
        f'{seconds / base["step_s"]:>7.2f}{fastest * 1e3:>8.0f}{tick * 1e3:>9.1f}{theory:>9.2f}{estimate:>9.2f}',
        flush=True,
      )

  path = results_file.write(
    f'pipelined_rnn-{kind}',
    kind,
    {
      'workload': {
        'cell': FLAGS.cell,
        'seq_len': T,
        'features': FLAGS.features,
        'hidden': FLAGS.hidden,
        'batch': B,
      },
      'repeats': FLAGS.repeats,
      'rows': rows,
      'note': (
        "memory: one device's compiled program; step: median forward+backward; "
        "idle estimate = 1 - M*tick_min*core_sharing/step_min (see the script's "
        'docstring; on a CPU with more devices than cores it rests on the assumed fair '
        'share).'
      ),
    },
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
