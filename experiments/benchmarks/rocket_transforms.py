"""Milliseconds a case of each ROCKET transform (MiniRocket, MultiRocket, Hydra) as dlearn's fit
computes its features (`rocket.feature_parts`, the program a fold runs on its training cases), on
random series of one shape, warm (after a call that compiles), on this machine's default devices.

  python experiments/benchmarks/rocket_transforms.py [--length=150 --channels=1] [--cases=40]
      [--rounds=5] [--calls=5] [--transforms=minirocket,multirocket,hydra,aeon_minirocket]
      [--multirocket_features=50000]

GunPoint is about --length=150 --channels=1, BasicMotions --length=100 --channels=6,
JapaneseVowels --length=29 --channels=12. The transforms take turns, round by round (`--rounds`
of `--calls` calls each), so that a change of this machine's speed during the run falls on all of
them; each prints the median and the range of its rounds' ms a case. Writes
experiments/benchmarks/results/rocket_transforms-<machine kind>.json (one entry per shape, replaced
when measured again).
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's dlearn

import dlearn  # noqa: E402, F401  (before NumPy: its BLAS settings)

# isort: split

import jax  # noqa: E402
import numpy as np  # noqa: E402
import results_file  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from dlearn.models import rocket  # noqa: E402

flags.DEFINE_integer('length', 150, 'Time steps of each series.')
flags.DEFINE_integer('channels', 1, 'Channels of each series.')
flags.DEFINE_integer('cases', 40, 'Series a call transforms (as a fold of a cross-validation).')
flags.DEFINE_integer('rounds', 5, 'Rounds; each times every transform in turn.')
flags.DEFINE_integer('calls', 5, 'Calls of a transform a round.')
flags.DEFINE_list(
  'transforms',
  ['minirocket', 'multirocket', 'hydra'],
  "Which transforms; aeon_minirocket: aeon's MiniRocket fit and transform (one thread), for "
  'reference (needs the benchmark extra).',
)
flags.DEFINE_integer(
  'multirocket_features', 50_000, "MultiRocket's features (its paper's smaller variant: 10,000)."
)
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
FLAGS = flags.FLAGS

# The recipe's features (experiments/configs/rocket_uea.py): Hydra's follow from the length.
FEATURES = {'minirocket': 10_000, 'multirocket': 50_000, 'hydra': 0}


def fitted_call(transform: str, sequences, lengths):
  """A call of `rocket.feature_parts` for a RocketClassifier of `transform` whose biases are
  fitted to `sequences` [cases, steps, channels], blocking until its features are computed."""
  model = rocket.RocketClassifier(
    2,
    sequences.shape[1:],
    transform=transform,
    num_features=FLAGS.multirocket_features if transform == 'multirocket' else FEATURES[transform],
    max_dilations=32,
    seed=0,
    rngs=nnx.Rngs(0),
  )
  model.fit_biases(lambda index: (sequences[index], lengths[index]), len(sequences), seed=0)
  graphdef, state = nnx.split(model)
  x, n = jax.device_put((sequences, lengths))
  return lambda: jax.block_until_ready(rocket.feature_parts(graphdef, state, x, n))


def aeon_call(sequences):
  """aeon's MiniRocket (10,000 features, one thread) fitted to `sequences` and transforming
  them, as its MiniRocketClassifier does before its ridge."""
  from aeon.transformations.collection.convolution_based import MiniRocket

  x = np.swapaxes(sequences, 1, 2)  # aeon's [cases, channels, steps]

  def call():
    MiniRocket(random_state=0, n_jobs=1).fit(x).transform(x)

  return call


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  shape = (FLAGS.cases, FLAGS.length, FLAGS.channels)
  sequences = rng.normal(size=shape).astype(np.float32)
  lengths = np.full(FLAGS.cases, FLAGS.length, np.int32)
  calls = {
    t: aeon_call(sequences) if t == 'aeon_minirocket' else fitted_call(t, sequences, lengths)
    for t in FLAGS.transforms
  }
  for call in calls.values():
    call()  # compiles
  per_case = {t: [] for t in calls}
  for _ in range(FLAGS.rounds):
    for t, call in calls.items():
      start = time.perf_counter()
      for _ in range(FLAGS.calls):
        call()
      per_case[t].append(1e3 * (time.perf_counter() - start) / FLAGS.calls / FLAGS.cases)
  key = f'length{FLAGS.length}-channels{FLAGS.channels}-cases{FLAGS.cases}'
  entry = {}
  for t, ms in per_case.items():
    entry[t] = {'ms_a_case_median': float(np.median(ms)), 'ms_a_case_rounds': ms}
    print(f'{t:12s} {np.median(ms):7.3f} ms a case (rounds {min(ms):.3f}-{max(ms):.3f}), {key}')
  kind = results_file.machine_kind(FLAGS.machine_kind)
  path = os.path.join(results_file.FOLDER, f'rocket_transforms-{kind}.json')
  shapes = {}
  if os.path.exists(path):
    with open(path) as f:
      shapes = json.load(f).get('shapes', {})
  shapes[key] = {**entry, 'rounds': FLAGS.rounds, 'calls': FLAGS.calls}
  print('wrote', results_file.write(f'rocket_transforms-{kind}', kind, {'shapes': shapes}))


if __name__ == '__main__':
  app.run(main)
