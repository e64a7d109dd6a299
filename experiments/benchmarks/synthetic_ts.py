"""A synthetic UCR-style classification problem as `.ts` files, for what the archive's small
training files cannot show: many training cases, and a test split as large as one likes.

  python experiments/benchmarks/synthetic_ts.py --name=SynthFord --cases=3600 --test_cases=1300 \\
      --length=500 --classes=2 --out=workdirs/synthetic

writes OUT/NAME_TRAIN.ts and OUT/NAME_TEST.ts (univariate, equal length). Each case is a random
walk (steps of 0.1 standard deviations) plus white noise (0.5), with one bump at a random position
whose shape tells the class: class c is (1 + c mod 3) half-periods of a sine over 10 + 3c steps,
of amplitude 1 + 0.3 floor(c / 3). The class is in a short local shape among noise, as in many
sensor datasets; how well a classifier finds it grows with its training cases. The same flags
and `--seed` write the same files (training cases drawn first, then the test cases).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags


def define_flags():  # when run, not imported (tests import the functions beside other flags)
  flags.DEFINE_string(
    'name', 'SynthFord', 'Problem name: the files are NAME_TRAIN.ts, NAME_TEST.ts.'
  )
  flags.DEFINE_integer('cases', 3600, 'Training cases.')
  flags.DEFINE_integer('test_cases', 1300, 'Test cases.')
  flags.DEFINE_integer('length', 500, 'Steps of every case (at least 40).')
  flags.DEFINE_integer('classes', 2, 'Classes.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  flags.DEFINE_string('out', 'workdirs/synthetic', 'Folder of the two files.')


FLAGS = flags.FLAGS


def cases(count: int, length: int, classes: int, rng) -> tuple[np.ndarray, np.ndarray]:
  labels = rng.integers(0, classes, count)
  x = rng.normal(0, 1, (count, length)).cumsum(1) * 0.1
  for i, c in enumerate(labels):
    start = rng.integers(0, length - 30)
    width = 10 + 3 * c
    shape = np.sin(np.linspace(0, np.pi * (1 + c % 3), width)) * (1 + 0.3 * (c // 3))
    x[i, start : start + width] += shape[: length - start]
    x[i] += rng.normal(0, 0.5, length)
  return x.astype(np.float32), labels


def write(path: str, name: str, x: np.ndarray, labels: np.ndarray, classes: int) -> None:
  with open(path, 'w') as f:
    f.write(
      f'@problemName {name}\n@timeStamps false\n@missing false\n@univariate true\n'
      f'@equalLength true\n@seriesLength {x.shape[1]}\n'
      f'@classLabel true {" ".join(str(c) for c in range(classes))}\n@data\n'
    )
    for row, c in zip(x, labels):
      f.write(','.join(f'{v:.5f}' for v in row) + f':{c}\n')


def main(argv):
  del argv
  for flag, least in (('length', 40), ('classes', 2), ('cases', 1), ('test_cases', 1)):
    if FLAGS[flag].value < least:
      sys.exit(f'error: --{flag}={FLAGS[flag].value}: give at least {least}.')
  rng = np.random.default_rng(FLAGS.seed)
  os.makedirs(FLAGS.out, exist_ok=True)
  for split, count in (('TRAIN', FLAGS.cases), ('TEST', FLAGS.test_cases)):
    path = os.path.join(FLAGS.out, f'{FLAGS.name}_{split}.ts')
    write(path, FLAGS.name, *cases(count, FLAGS.length, FLAGS.classes, rng), FLAGS.classes)
    print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
