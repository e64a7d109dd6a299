"""MiniRocket's transform (dlearn/models/minirocket.py) against aeon's, from aeon's own fitted
parameters and features (tests/data/minirocket_aeon.npz, written by
experiments/benchmarks/aeon_reference.py), and its handling of variable lengths."""

import os

import numpy as np
import pytest

from dlearn.models import minirocket

REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'minirocket_aeon.npz')


def _aeon(name):
  data = np.load(REFERENCE)
  fields = [f.name for f in minirocket.dataclasses.fields(minirocket.Parameters)]
  params = minirocket.Parameters(*(data[f'{name}/{field}'] for field in fields))
  return data[f'{name}/x'], params, data[f'{name}/features']


@pytest.mark.parametrize('name', ['multivariate', 'univariate_integers'])
def test_features_equal_aeons_from_its_parameters(name):
  x, params, expected = _aeon(name)
  features = np.asarray(minirocket.transform(x, np.full(len(x), x.shape[-1]), params))
  assert features.shape == expected.shape == (len(x), params.num_features)
  step = 1 / x.shape[-1]  # one position of a PPV: what a rounding flip at a bias would change
  difference = np.abs(features - expected)
  if name == 'univariate_integers':  # exact sums in float32: the same count at every feature
    np.testing.assert_allclose(features, expected, atol=1e-6)
  assert difference.max() <= step + 1e-6
  assert (difference > 1e-6).mean() < 1e-3  # flips at a bias: a handful of 8,400 features


def test_dilations_follow_the_reference():
  _, params, _ = _aeon('multivariate')
  dilations, per_dilation = minirocket.fit_dilations(40, 840)
  np.testing.assert_array_equal(dilations, params.dilations)
  np.testing.assert_array_equal(per_dilation, params.features_per_dilation)


def test_a_padded_case_has_the_features_of_the_case_alone():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 2, 50)).astype(np.float32)
  lengths = np.array([50, 37, 20, 50, 9, 44])
  params = minirocket.fit(x, lengths, num_features=840, seed=0)
  padded = x.copy()
  padded[np.arange(50) >= lengths[:, None, None].repeat(2, 1)] = 99.0  # garbage after each case
  batch = np.asarray(minirocket.transform(padded, lengths, params))
  for i, length in enumerate(lengths):
    alone = np.asarray(minirocket.transform(x[i : i + 1, :, :length], [length], params))
    np.testing.assert_allclose(batch[i], alone[0], atol=1e-6)
  assert batch.shape == (6, params.num_features)
  assert 0 < batch.mean() < 1  # proportions, not all 0 or 1
