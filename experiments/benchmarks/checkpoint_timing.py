"""Times saving and restoring a full train-state checkpoint (orbax, as the training loop does it).

  python experiments/benchmarks/checkpoint_timing.py [--repeats=5]

For each model: the size on disk, the time until an asynchronous save hands control back to the
loop ("blocking"), until it is committed ("committed"), and the time to restore it onto the
devices. Medians over the repeats.
"""

import os
import statistics
import tempfile
import time

import jax
from absl import app, flags

from dlearn import checkpoint, configs, optimizers, parallel
from dlearn import steps as steps_lib
from dlearn.data.pipeline import DatasetInfo

FLAGS = flags.FLAGS
flags.DEFINE_integer('repeats', 5, 'Saves and restores per model.')

CIFAR10 = DatasetInfo('cifar10', 'image', (32, 32, 3), 10, tuple(str(i) for i in range(10)))


def _size_mb(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20


def time_model(name, config, repeats):
  mesh = parallel.make_mesh()
  tx = optimizers.create(config, 1000)
  _, state = steps_lib.create_train_state(config, CIFAR10, tx, mesh)
  _, abstract_state, shardings = steps_lib.state_shardings(config, CIFAR10, tx, mesh)
  blocking, committed, restoring = [], [], []
  with tempfile.TemporaryDirectory() as workdir:
    checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=2)
    for step in range(1, repeats + 1):
      start = time.perf_counter()
      checkpointer.save(step, state, {'next_index': step})
      blocking.append(time.perf_counter() - start)
      checkpointer._manager.wait_until_finished()
      committed.append(time.perf_counter() - start)
      start = time.perf_counter()
      restored, _ = checkpointer.restore(step, abstract_state, shardings)
      jax.block_until_ready(restored)
      restoring.append(time.perf_counter() - start)
    size = _size_mb(os.path.join(checkpoint.directory(workdir), str(repeats)))
    checkpointer.close()
  params = sum(x.size for x in jax.tree.leaves(state.params))
  print(
    f'{name:<12} {params:>11,} {size:>9.1f} {statistics.median(blocking):>10.3f} '
    f'{statistics.median(committed):>11.3f} {statistics.median(restoring):>9.3f}'
  )


def main(argv):
  del argv
  print(
    f'{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}, '
    f'median of {FLAGS.repeats}'
  )
  print(
    f'{"model":<12} {"parameters":>11} {"size MB":>9} {"blocking s":>10} {"committed s":>11} '
    f'{"restore s":>9}'
  )
  seed = configs.base()
  seed.model = 'seed_dcnn'
  time_model('seed_dcnn', seed, FLAGS.repeats)
  resnet = configs.base()
  resnet.model = 'resnet'  # ResNet-18 width 64, as in experiments/configs/resnet_cifar10.py
  time_model('resnet18', resnet, FLAGS.repeats)


if __name__ == '__main__':
  from dlearn import metrics

  metrics.quiet_library_logs()
  app.run(main)
