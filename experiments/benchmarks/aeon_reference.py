"""Writes tests/data/minirocket_aeon.npz: inputs, aeon's fitted MiniRocket and MultiRocket
parameters and aeon's features for them, so that tests/test_minirocket.py checks dlearn's transform against aeon's
without aeon installed (CI). Runs in any environment with aeon and numpy (not dlearn):

  python3 -m venv /tmp/aeon-env && /tmp/aeon-env/bin/pip install aeon
  /tmp/aeon-env/bin/python experiments/benchmarks/aeon_reference.py

Two cases: multivariate float series (3 channels, 40 steps), and univariate integer-valued ones
(whose convolutions are exact in float32, so not even a rounding flip can differ).
"""

import os

import aeon
import numpy as np
from aeon.transformations.collection.convolution_based import MiniRocket, MultiRocket

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = (
  'channels_per_combination', 'channel_indices', 'dilations', 'features_per_dilation', 'biases',
)  # fmt: skip


def main():
  rng = np.random.default_rng(0)
  cases = {
    'multivariate': rng.normal(size=(10, 3, 40)).astype(np.float32),
    'univariate_integers': rng.integers(-5, 6, size=(8, 1, 60)).astype(np.float32),
  }
  arrays = {'aeon_version': np.array(aeon.__version__)}
  for name, x in cases.items():
    transform = MiniRocket(n_kernels=840, random_state=0).fit(x)
    for field, value in zip(FIELDS, transform.parameters):
      arrays[f'{name}/{field}'] = np.asarray(value)
    arrays[f'{name}/x'] = x
    arrays[f'{name}/features'] = np.asarray(transform.transform(x), np.float32)
    multi = MultiRocket(n_kernels=168, random_state=0).fit(x)
    for part, parameters in (('series', multi.parameter), ('difference', multi.parameter1)):
      fields = FIELDS if len(parameters) == 5 else FIELDS[2:]  # univariate: no channel choice
      for field, value in zip(fields, parameters):
        arrays[f'multirocket/{name}/{part}/{field}'] = np.asarray(value)
    arrays[f'multirocket/{name}/features'] = np.asarray(multi.transform(x), np.float32)
  path = os.path.join(HERE, '..', '..', 'tests', 'data', 'minirocket_aeon.npz')
  np.savez_compressed(path, **arrays)
  print(f'wrote {os.path.normpath(path)} (aeon {aeon.__version__})')


if __name__ == '__main__':
  main()
