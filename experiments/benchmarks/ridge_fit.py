"""Seconds and memory of the ROCKET ridge head's fit (`rocket.ridge_loo`) on random features.

  python experiments/benchmarks/ridge_fit.py [--cases=4000] [--features=54848] [--classes=5]
      [--runs=2]

Random float32 features [cases, features] (MultiRocket-Hydra's 54,848 by default), their means
spread as scaled ROCKET features' are, and random labels; prints each fit's seconds, the
process's peak resident memory above the features' own (ru_maxrss: the first fit's is the
peak), and `rocket.ridge_bytes`' estimate of the whole. Compare versions by running it in
worktrees of each, alternated.
"""

from __future__ import annotations

import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's dlearn

import dlearn  # noqa: E402, F401  (before NumPy: its BLAS settings)

# isort: split

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dlearn.models import rocket  # noqa: E402

flags.DEFINE_integer('cases', 4000, 'Rows of features.')
flags.DEFINE_integer('features', 54_848, 'Features a case.')
flags.DEFINE_integer('classes', 5, 'Classes.')
flags.DEFINE_integer('runs', 2, 'Fits timed.')
FLAGS = flags.FLAGS


def main(_):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((FLAGS.cases, FLAGS.features), dtype=np.float32)
  x += 3 * rng.random(FLAGS.features, dtype=np.float32)
  labels = np.arange(FLAGS.cases) % FLAGS.classes
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  for run in range(FLAGS.runs):
    start = time.perf_counter()
    alpha = rocket.ridge_loo(x, labels, FLAGS.classes, rocket.DEFAULTS.alphas)[2]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
      f'fit {run}: {seconds:.2f} s (alpha {alpha:.3g}); peak memory above the features '
      f'{(peak - before) / 2**30:.2f} GiB, features {x.nbytes / 2**30:.2f} GiB, '
      f'ridge_bytes {rocket.ridge_bytes(FLAGS.cases, FLAGS.features) / 2**30:.2f} GiB',
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
