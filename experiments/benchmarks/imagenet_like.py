"""A folder of JPEGs of ImageNet's typical sizes, made from the CIFAR-10 JPEGs in ../shared/data,
for the input-pipeline benchmarks (`jpeg_decoders.py`, `input_pipeline.py`): the first `count`
images of the archive (in archive order, so every class), each upscaled (bicubic) to a height and
a width drawn uniformly from 200-500 px (numpy seed 0) and saved at JPEG quality 90, laid out as
`train/<class>/<name>.jpg`. Upscaled 32x32 images are smoother than photographs, so their JPEGs
are smaller and decode faster than ImageNet's of the same size: the figures are for this folder.

  python experiments/benchmarks/imagenet_like.py --output=data/imagenet_like --count=2000 [--archive=PATH]

numpy and Pillow only (the decoder benchmark runs it from other environments).
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile

import numpy as np
from PIL import Image

ARCHIVE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'shared', 'data',
  'cifar10_jpeg_train.tar.gz',
)  # fmt: skip
SIDES = (200, 500)
QUALITY = 90


def make_folder(output: str, count: int, archive: str = ARCHIVE, seed: int = 0) -> str:
  """Writes the folder (once: an existing one with `count` images is kept) and returns it."""
  if os.path.isdir(output) and sum(len(f) for _, _, f in os.walk(output)) == count:
    return output
  if not os.path.exists(archive):
    raise SystemExit(f'error: {archive}: not found (the CIFAR-10 JPEG archive of ../shared/data).')
  rng = np.random.default_rng(seed)
  made = 0
  with tarfile.open(archive, 'r:gz') as tar:
    # Every class in the first `count` images: the archive is ordered by class, so take them
    # round-robin over the classes' first members.
    by_class: dict[str, list] = {}
    for member in tar:
      if member.isfile() and member.name.endswith('.jpg'):
        by_class.setdefault(member.name.split('/')[-2], []).append(member)
        if sum(len(v) for v in by_class.values()) >= 50_000:
          break
    per_class = -(-count // len(by_class))
    for cls, members in sorted(by_class.items()):
      os.makedirs(os.path.join(output, 'train', cls), exist_ok=True)
      for member in members[:per_class]:
        if made == count:
          break
        image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert('RGB')
        height, width = (int(x) for x in rng.integers(SIDES[0], SIDES[1] + 1, 2))
        image = image.resize((width, height), Image.BICUBIC)
        name = os.path.splitext(os.path.basename(member.name))[0]
        image.save(os.path.join(output, 'train', cls, f'{name}.jpg'), quality=QUALITY)
        made += 1
  return output


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--output', default='data/imagenet_like')
  parser.add_argument('--count', type=int, default=2000)
  parser.add_argument('--archive', default=ARCHIVE, help='The CIFAR-10 JPEG archive.')
  args = parser.parse_args()
  print(make_folder(args.output, args.count, args.archive))


if __name__ == '__main__':
  main()
