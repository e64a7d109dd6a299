"""What many tests share: tiny dataset descriptions, synthetic batches and records, tree
comparison, and small real datasets (image folders, prepared tfds datasets)."""

import functools
import io
import os

import jax
import numpy as np
from PIL import Image

from dlearn import parallel, sharding
from dlearn import steps as steps_lib
from dlearn.data import dataset_writer, on_device
from dlearn.data.pipeline import DatasetInfo

IMAGES = DatasetInfo('synthetic', 'image', (16, 16, 3), 10, tuple('abcdefghij'))
SEQUENCES = DatasetInfo('synthetic', 'sequence', (8, 2), 3, ('x', 'y', 'z'))


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
  a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def mapped_step(config, info, mesh, tx, body=steps_lib.train_step, source=None, **body_args):
  """(`body` mapped under config.mapping on `mesh`, a fresh train state placed there by
  config.sharding), as the trainer makes them."""
  graphdef, state = steps_lib.create_train_state(config, info, tx, mesh, source)
  step = parallel.map_over_devices(
    functools.partial(body, graphdef=graphdef, tx=tx, config=config, info=info, **body_args),
    mesh,
    config.mapping,
    state_sharding=sharding.of(state),
    donate_state=True,
  )
  return step, state


def image_batches(steps, global_batch=16, seed=0):
  """`steps` random global batches of IMAGES, each [global_batch, ...]."""
  rng = np.random.default_rng(seed)
  per_device = (global_batch,)
  return [
    {
      'image': rng.integers(0, 256, (*per_device, *IMAGES.example_shape), np.uint8),
      'label': rng.integers(0, IMAGES.num_classes, per_device).astype(np.int32),
      'mask': np.ones(per_device, np.float32),
    }
    for _ in range(steps)
  ]


def image_records(n, shape=(4, 4, 3), num_classes=5):
  """Records that carry their index: in the label's place (`index` field) and in the pixels."""
  rng = np.random.default_rng(n)
  return [
    {'image': rng.integers(0, 256, shape, np.uint8), 'label': i % num_classes, 'index': i}
    for i in range(n)
  ]


def sequence_records(n):
  rng = np.random.default_rng(0)
  return [
    {'sequence': rng.normal(size=(int(rng.integers(3, 9)), 2)).astype(np.float32), 'label': i % 3}
    for i in range(n)
  ]


def draw(layout):
  """The per-step batch function of on-device data with `layout` (as the trainer passes it)."""
  return lambda shard, state: on_device.draw(shard, state.rng, state.step, layout)


def image_bytes(value, suffix, size=(6, 5)):
  buffer = io.BytesIO()
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(
    buffer, format='PNG' if suffix == '.png' else 'JPEG', quality=100
  )
  return buffer.getvalue()


def image_folder(
  root, classes=('dog', 'cat'), per_class=5, split='train', size=(6, 5), noise=False
):
  """<root>/<split>/<class>/<i>.png|.jpg; every image's pixels hold its class's sorted index
  (plus, with `noise`, random pixels so that a model has something to learn from)."""
  rng = np.random.default_rng(0)
  for index, name in enumerate(sorted(classes)):
    os.makedirs(os.path.join(root, split, name))
    for i in range(per_class):
      suffix = '.png' if i % 2 else '.jpg'
      path = os.path.join(root, split, name, f'{i:03d}{suffix}')
      if noise:
        pixels = np.clip(rng.normal(40 + 100 * index, 40, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format='PNG' if suffix == '.png' else 'JPEG')
      else:
        with open(path, 'wb') as f:
          f.write(image_bytes(40 + 100 * index, suffix, size))
  return str(root)


def prepared_images(tmp_path, name='toy_images', per_class=40, size=(8, 8)) -> str:
  """A prepared image dataset (train + validation) in tmp_path/tfds; returns that data_dir."""
  folder = image_folder(
    tmp_path / 'images', classes=('a', 'b', 'c'), per_class=per_class, size=size, noise=True
  )
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset(name, {'train': folder}, data_dir)
  return data_dir


def ts_file(path, lines, header=None):
  """A UEA/UCR .ts file of `lines` (cases) after `header` (default: two channels of unequal
  lengths, classes a b c)."""
  header = header or [
    '@problemName toy',
    '@timeStamps false',
    '@missing true',
    '@univariate false',
    '@dimensions 2',
    '@equalLength false',
    '@classLabel true a b c',
    '@data',
  ]
  with open(path, 'w') as f:
    f.write('# a comment\n' + '\n'.join(header + lines) + '\n')
  return str(path)


def prepared_sequences(tmp_path, name='toy_sequences', per_class=(6, 5, 4)) -> str:
  """A prepared sequence dataset from a .ts file of classes a, b, c with `per_class` cases (the
  last 10% of each class carved into validation), each class's values around its own level so
  that a model can learn them; returns its data_dir."""
  rng = np.random.default_rng(0)
  lines = []
  for label, count in zip('abc', per_class):
    for _ in range(count):
      length = int(rng.integers(3, 7))
      channels = rng.normal('abc'.index(label), 0.3, (2, length)).round(3)
      lines.append(':'.join(','.join(map(str, c)) for c in channels) + f':{label}')
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset(name, {'train': ts_file(tmp_path / f'{name}.ts', lines)}, data_dir)
  return data_dir


def tiny_lstm_fcn_flags(data_dir) -> list[str]:
  """Command-line flags that train `rnn_uea.py`'s LSTM-FCN, made tiny, on `prepared_sequences`."""
  return [
    '--config=experiments/configs/rnn_uea.py',
    '--config.data.name=toy_sequences',
    f'--config.data.data_dir={data_dir}',
    '--config.rnn.num_layers=1',  # the recipe has none: an LSTM beside the convolutions
    '--config.rnn.hidden_size=8',
    '--config.rnn.conv_filters=(4,)',
    '--config.rnn.conv_kernels=(3,)',
    '--config.ensemble_size=1',  # the recipe's five: tests/test_cross_validate.py trains two
  ]


def the_error_line(result) -> str:
  """The one `error:` line of a command that failed on bad input (a CompletedProcess): exit
  status 1, no traceback, and its message not printed twice (e.g. logged before it)."""
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert result.stderr.count(errors[0].removeprefix('error: ')) == 1, result.stderr[-2000:]
  return errors[0]
