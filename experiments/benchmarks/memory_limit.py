"""Preparing and training over an image archive larger than the memory the process may use: a
.tar of `--images` JPEGs of random pixels (1000x800, quality 90: about 0.7 MB each, which nothing
compresses), prepared by `dlearn.prepare` under `ulimit -v` of `--prepare_limit_gb` (tfds' writer
buffers up to 1 GB of records before it writes them out), then trained on
for `--steps` steps (ResNet at width 8 on 64x64 random-resized crops, 2 worker processes) under
`--train_limit_gb` (JAX and the compiled step need about 3.5 GB of address space here). Prints each command's
peak resident memory (its largest process: the command or one of its workers) and writes
experiments/benchmarks/results/memory_limit-<machine>.json.

  python experiments/benchmarks/memory_limit.py [--images=6000 --folder=data/memory_limit]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, '..', '..')

# Runs argv[2:] under an address-space limit of argv[1] bytes; prints the peak resident memory
# of it and its descendants (the largest process, as getrusage reports), in MiB, as the last line.
_LIMITED = """
import resource, subprocess, sys
limit = int(sys.argv[1])
code = subprocess.run(sys.argv[2:], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
sys.exit(code)
"""


def make_archive(path: str, images: int) -> int:
  if os.path.exists(path):
    return os.path.getsize(path)
  rng = np.random.default_rng(0)
  with tarfile.open(path + '.partial', 'w') as archive:
    for i in range(images):
      buffer = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (800, 1000, 3), np.uint8)).save(
        buffer, 'JPEG', quality=90
      )
      member = tarfile.TarInfo(f'train/{"ab"[i % 2]}/{i:05d}.jpg')
      member.size = buffer.tell()
      buffer.seek(0)
      archive.addfile(member, buffer)
  os.replace(path + '.partial', path)
  return os.path.getsize(path)


def limited(command: list[str], limit_gb: float) -> tuple[int, float, float]:
  start = time.perf_counter()
  result = subprocess.run(
    [sys.executable, '-c', _LIMITED, str(int(limit_gb * 2**30)), *command],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  seconds = time.perf_counter() - start
  if result.returncode:
    print(result.stderr[-3000:])
  return result.returncode, float(result.stdout.strip().splitlines()[-1]), seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--folder', default='data/memory_limit')
  parser.add_argument('--images', type=int, default=6000)
  parser.add_argument('--prepare_limit_gb', type=float, default=1.0)
  parser.add_argument('--train_limit_gb', type=float, default=3.5)
  parser.add_argument('--steps', type=int, default=30)
  args = parser.parse_args()
  os.makedirs(args.folder, exist_ok=True)
  archive = os.path.abspath(os.path.join(args.folder, 'images.tar'))
  size = make_archive(archive, args.images)
  data_dir = os.path.abspath(os.path.join(args.folder, 'tfds'))
  print(f'{archive}: {size / 2**30:.2f} GiB, {args.images} JPEGs')
  prepare = [
    sys.executable, '-m', 'dlearn.prepare', '--name=memory_limit', f'--train={archive}',
    f'--data_dir={data_dir}', '--overwrite',
  ]  # fmt: skip
  code, prepare_rss, prepare_s = limited(prepare, args.prepare_limit_gb)
  print(
    f'prepare under {args.prepare_limit_gb} GiB: exit {code}, peak RSS {prepare_rss:.0f} MiB, {prepare_s:.0f} s'
  )
  train = [
    sys.executable, '-m', 'dlearn.main', '--config=experiments/configs/resnet_cifar10.py',
    f'--workdir={os.path.abspath(os.path.join(args.folder, "run"))}', '--config.fresh=True',
    '--config.data.name=memory_limit', f'--config.data.data_dir={data_dir}',
    '--config.data.image_size=64', '--config.resnet.width=8', '--config.batch_size=32', '--config.eval_batch_size=64',
    f'--config.num_train_steps={args.steps}', '--config.eval_every_steps=1000000',
    '--config.data.worker_count=2', '--config.write_plots=False', '--config.log_every_steps=10',
  ]  # fmt: skip
  code_t, train_rss, train_s = limited(train, args.train_limit_gb)
  print(
    f'train under {args.train_limit_gb} GiB: exit {code_t}, peak RSS {train_rss:.0f} MiB, {train_s:.0f} s'
  )
  sys.path.insert(0, HERE)
  from results_file import machine_kind, write

  kind = machine_kind()
  path = write(
    f'memory_limit-{kind}',
    kind,
    {
      'archive_gib': size / 2**30,
      'images': args.images,
      'prepare': {
        'limit_gib': args.prepare_limit_gb,
        'exit': code,
        'peak_rss_mib': prepare_rss,
        'seconds': prepare_s,
      },
      'train': {
        'limit_gib': args.train_limit_gb,
        'exit': code_t,
        'peak_rss_mib': train_rss,
        'seconds': train_s,
        'steps': args.steps,
      },
    },
  )
  print(json.dumps(json.load(open(path)), indent=1)[:200])
  print(path)


if __name__ == '__main__':
  main()
