"""Small real datasets made by the tests: image folders and prepared tfds datasets."""

import io
import os

import numpy as np
from PIL import Image

from dlearn.data import dataset_writer


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
