"""Training input throughput, side by side on one machine: dlearn's pipeline (the encoded store of
`dlearn.prepare`, decoded, random-resized-cropped (scale (0.08, 1), ratio (3/4, 4/3)) and flipped to
224x224 in grain worker processes, batches formed) against torchvision's `ImageFolder` +
`RandomResizedCrop(224)` + `RandomHorizontalFlip` + `PILToTensor` in a `DataLoader` (uint8 batches,
as dlearn's), both with `--workers` worker processes, over the same folder of JPEGs
(`imagenet_like.py`: CIFAR-10 images upscaled to 200-500 px, quality 90).

  python experiments/benchmarks/input_pipeline.py [--workers=2 --count=2000 --batches=100] \
      [--torch_python=PYTHON]

The torchvision side runs in `--torch_python` (default: this Python), any environment with
torch, torchvision and Pillow: on a machine whose torch is a CPU build from outside PyPI (this
project's), PyPI's torchvision does not load, so give a venv of PyPI's own torch and torchvision
(`python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision`).

Prints images/s and images/s per worker for each side (the median of `--repeats` interleaved runs
of `--batches` batches, timed from the second batch: worker start-up excluded), and writes
experiments/benchmarks/results/input_pipeline-<machine>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagenet_like  # noqa: E402

NAME = 'imagenet_like'


def dlearn_rate(data_dir: str, workers: int, batch_size: int, batches: int, seed: int) -> float:
  from dlearn.data import pipeline

  source = pipeline.load_split(NAME, 'train', data_dir)
  info = pipeline.dataset_info(source, NAME, None)
  iterator = pipeline.train_iterator(
    source, info, local_batch_size=batch_size, seed=seed, workers=workers
  )
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def torchvision_rate(folder: str, workers: int, batch_size: int, batches: int, seed: int) -> float:
  import torch
  from torchvision import datasets, transforms

  torch.manual_seed(seed)
  dataset = datasets.ImageFolder(
    os.path.join(folder, 'train'),
    transforms.Compose(
      [
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
      ]
    ),
  )
  loader = torch.utils.data.DataLoader(
    dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
  )
  iterator = iter(loader)
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    try:
      next(iterator)
    except StopIteration:  # a small folder: start the next epoch
      iterator = iter(loader)
      next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def _torchvision_in(
  python: str, folder: str, workers: int, batch_size: int, batches: int, seed: int
):
  result = subprocess.run(
    [python, os.path.abspath(__file__), '--side=torchvision', f'--folder={folder}',
     f'--workers={workers}', f'--batch_size={batch_size}', f'--batches={batches}', f'--seed={seed}'],
    capture_output=True, text=True, check=False,
  )  # fmt: skip
  if result.returncode:
    raise SystemExit(f'error: the torchvision side failed in {python}:\n{result.stderr[-2000:]}')
  rate, *versions = result.stdout.split()
  return float(rate), dict(v.split('=') for v in versions)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--folder', default='data/imagenet_like')
  parser.add_argument('--data_dir', default='data/tfds')
  parser.add_argument('--count', type=int, default=2000)
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--batches', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--machine', default=None)
  parser.add_argument('--torch_python', default=sys.executable)
  parser.add_argument('--side', default='both', choices=['both', 'torchvision'])
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if args.side == 'torchvision':  # one run of the torchvision side, printed for the parent
    import PIL
    import torch
    import torchvision

    rate = torchvision_rate(args.folder, args.workers, args.batch_size, args.batches, args.seed)
    print(
      rate,
      f'torch={torch.__version__}',
      f'torchvision={torchvision.__version__}',
      f'pillow_torchvision={PIL.__version__}',
    )
    return
  folder = imagenet_like.make_folder(args.folder, args.count)
  if not os.path.isdir(os.path.join(args.data_dir, NAME)):
    subprocess.run(
      [sys.executable, '-m', 'dlearn.prepare', f'--name={NAME}', f'--train={folder}',
       f'--data_dir={args.data_dir}'],  # the README's command: its train split is timed
      check=True,
    )  # fmt: skip
  rates = {'dlearn': [], 'torchvision': []}
  for repeat in range(args.repeats):
    rates['dlearn'].append(
      dlearn_rate(args.data_dir, args.workers, args.batch_size, args.batches, repeat)
    )
    rate, versions = _torchvision_in(
      args.torch_python, folder, args.workers, args.batch_size, args.batches, repeat
    )
    rates['torchvision'].append(rate)
    print(
      f'run {repeat}: dlearn {rates["dlearn"][-1]:.0f} images/s, '
      f'torchvision {rates["torchvision"][-1]:.0f} images/s'
    )
  import cv2
  import PIL
  from results_file import machine_kind, write

  rows = {}
  for side, values in rates.items():
    median = statistics.median(values)
    rows[side] = {
      'images_per_s': median,
      'images_per_s_per_worker': median / args.workers,
      'runs': values,
    }
    print(
      f'{side:12s} {median:7.0f} images/s, {median / args.workers:6.0f} per worker '
      f'({args.workers} workers)'
    )
  ratio = rows['dlearn']['images_per_s'] / rows['torchvision']['images_per_s']
  print(f'dlearn / torchvision: {ratio:.2f}')
  kind = machine_kind(args.machine)
  path = write(
    f'input_pipeline-{kind}',
    kind,
    {
      'folder': f'{args.count} JPEGs by imagenet_like.py',
      'workers': args.workers,
      'batch_size': args.batch_size,
      'batches_timed': args.batches,
      'rows': rows,
      'dlearn_over_torchvision': ratio,
    },
    {**versions, 'pillow': PIL.__version__, 'opencv': cv2.__version__},
  )
  print(path)


if __name__ == '__main__':
  main()
