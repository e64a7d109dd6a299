"""The ROCKET transforms: MiniRocket's and MultiRocket's (dlearn/models/minirocket.py,
multirocket.py) against aeon's, from aeon's own fitted parameters and features
(tests/data/minirocket_aeon.npz, written by experiments/benchmarks/aeon_reference.py), Hydra's
(hydra.py) by what its counts must satisfy, and how each handles variable lengths."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlearn.models import hydra, minirocket, multirocket

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


def test_the_biases_quantiles_are_numpys_of_each_case_alone():
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(84, 40)).astype(np.float32)
  lengths = rng.integers(1, 41, 84)
  q = minirocket.quantiles(84 * 5).reshape(84, 5)
  expected = np.stack([np.quantile(rows[r, : lengths[r]], q[r]) for r in range(84)])
  np.testing.assert_array_equal(minirocket.row_quantiles(rows, lengths, q), expected)


def test_a_padded_case_has_the_features_of_the_case_alone():
  rng = np.random.default_rng(0)
  # whole numbers: exact convolutions, so a value that equals its bias (a quantile can land on
  # one) compares the same way in a batch of any length
  x = rng.integers(-5, 6, size=(6, 2, 50)).astype(np.float32)
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


def test_cases_grouped_by_length_keep_every_cases_features(monkeypatch):
  """`in_case_blocks` puts cases of like lengths in a block (within each device's share) and
  `pool` stops each block at its longest case: on one device and on several, every case's
  features are those it has alone."""
  rng = np.random.default_rng(5)
  cases, steps = 37, 45  # three blocks of 13 (16 on 8 devices): lengths mixed, the last padded
  x = rng.integers(-5, 6, size=(cases, 2, steps)).astype(np.float32)  # exact, as above
  lengths = rng.integers(9, steps + 1, cases)
  x = np.where(np.arange(steps) < lengths[:, None, None], x, 0.0).astype(np.float32)
  series = minirocket.fit(x, lengths, num_features=168, seed=0)
  difference = minirocket.fit(np.diff(x, axis=-1), lengths - 1, num_features=168, seed=1)

  def features(devices):
    monkeypatch.setattr(jax, 'device_count', lambda: devices)
    jax.clear_caches()  # traced anew for each device count
    return np.asarray(multirocket.transform(x, lengths, series, difference))

  devices = jax.device_count()
  assert devices > 1  # the tests' forced devices
  alone = np.concatenate(
    [
      multirocket.transform(x[i : i + 1], lengths[i : i + 1], series, difference)
      for i in range(cases)
    ]
  )
  np.testing.assert_allclose(features(devices), alone, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(features(1), alone, rtol=1e-6, atol=1e-6)


def test_case_blocks_hold_like_lengths_within_each_devices_share(monkeypatch):
  """64 cases in two blocks on 8 devices: device d holds cases 8d..8d+7 (4 in each block); its 4
  shortest go to the first block, so each block's longest is the longest of its shares."""
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  lengths = np.random.default_rng(0).permutation(64).astype(np.int32) + 1
  rows = minirocket.in_case_blocks(
    lambda x, lengths: jnp.stack([x[:, 0, 0], jnp.full(len(x), lengths.max(), jnp.float32)], 1),
    np.arange(64, dtype=np.float32)[:, None, None],
    lengths,
    32,
  )
  np.testing.assert_array_equal(np.asarray(rows)[:, 0], np.arange(64))  # the cases' order
  runs = np.sort(lengths.reshape(8, 8), axis=1)
  shortest, longest = runs[:, :4].max(), runs[:, 4:].max()
  in_first = (lengths.reshape(8, 8) <= runs[:, 3:4]).reshape(-1)
  np.testing.assert_array_equal(np.asarray(rows)[:, 1], np.where(in_first, shortest, longest))
  assert shortest < longest


def _aeon_multirocket(name):
  data = np.load(REFERENCE)
  x = data[f'{name}/x']
  fields = [f.name for f in minirocket.dataclasses.fields(minirocket.Parameters)]
  parts = []
  for part in ('series', 'difference'):
    prefix = f'multirocket/{name}/{part}/'
    values = {f: data[prefix + f] for f in fields if prefix + f in data}
    combinations = len(values['dilations']) * len(minirocket.KERNEL_INDICES)
    values.setdefault('channels_per_combination', np.ones(combinations, np.int32))
    values.setdefault('channel_indices', np.zeros(combinations, np.int32))
    parts.append(minirocket.Parameters(**values))
  return x, parts, data[f'multirocket/{name}/features']


def test_case_blocks_keep_the_cases_order_and_are_as_even_as_they_can_be():
  """64 cases with room for 40 a block (8 devices): two blocks of 32, not of 40 (16 cases'
  work for nothing), each case's row where it was."""
  x = np.arange(64, dtype=np.float32)[:, None, None]
  rows = minirocket.in_case_blocks(
    lambda x, lengths: jnp.stack([x[:, 0, 0], jnp.full(len(x), len(x), jnp.float32)], 1),
    x,
    np.zeros(64, np.int32),
    40,
  )
  np.testing.assert_array_equal(np.asarray(rows)[:, 0], np.arange(64))
  assert set(np.asarray(rows)[:, 1].tolist()) == {32}


def test_pool_sums_a_kernels_channels_first_or_reads_every_channels_taps_alike(monkeypatch):
  """The two ways `pool` convolves (each kernel's channels summed first from SUMMED_CHANNELS on,
  else every channel's taps): the same four poolings, on exact whole numbers, lengths varied and
  MultiRocket's shifted taps."""
  rng = np.random.default_rng(2)
  x = rng.integers(-5, 6, size=(5, 4, 60)).astype(np.float32)
  lengths = np.array([60, 41, 12, 60, 30])
  x = np.where(np.arange(60) < lengths[:, None, None], x, 0.0).astype(np.float32)
  params = minirocket.fit(x, lengths, num_features=336, seed=0)
  weights = minirocket.weights_of(params, 4)
  dilations = tuple(int(d) for d in params.dilations)
  counts = tuple(int(n) for n in params.features_per_dilation)
  out = []
  for summed_from in (1, 10**9):
    monkeypatch.setattr(minirocket, 'SUMMED_CHANNELS', summed_from)
    pool = jax.jit(lambda x, n: minirocket.pool(x, weights, n, params.biases, dilations, counts, minirocket.POOLING, 1))  # fmt: skip
    out.append(np.asarray(pool(x, lengths)))
  np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-6)
  assert 0 < out[0][:, 0].mean() < 1  # proportions, not all 0 or 1


@pytest.mark.parametrize('name', ['multivariate', 'univariate_integers'])
def test_multirocket_features_equal_aeons_from_its_parameters(name):
  x, (series, difference), expected = _aeon_multirocket(name)
  features = np.asarray(multirocket.transform(x, np.full(len(x), x.shape[-1]), series, difference))
  assert features.shape == expected.shape == (len(x), 8 * series.num_features)
  blocks = features.reshape(len(x), 2, 4, -1)  # series/difference x PPV, LSPV, MPV, MIPV
  reference = expected.reshape(len(x), 2, 4, -1)
  agree = np.isclose(blocks, reference, rtol=1e-5, atol=1e-5)
  if name == 'univariate_integers':  # exact convolutions: every feature agrees
    assert agree.all(), np.argwhere(~agree)[:5]
  # float series: a value within rounding of a bias can change a count; a handful at most
  assert agree.mean() > 0.995, [agree[:, :, p].mean() for p in range(4)]


def test_multirocket_of_a_padded_case_is_that_of_the_case_alone():
  rng = np.random.default_rng(1)
  x = rng.integers(-5, 6, size=(4, 2, 40)).astype(np.float32)  # exact, as above
  lengths = np.array([40, 30, 17, 25])
  series = minirocket.fit(x, lengths, num_features=168, seed=0)
  difference = minirocket.fit(np.diff(x, axis=-1), lengths - 1, num_features=168, seed=1)
  padded = np.where(np.arange(40) < lengths[:, None, None], x, 7.0).astype(np.float32)
  batch = np.asarray(multirocket.transform(padded, lengths, series, difference))
  for i, length in enumerate(lengths):
    alone = multirocket.transform(x[i : i + 1, :, :length], [length], series, difference)
    np.testing.assert_allclose(batch[i], np.asarray(alone)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels', [1, 3])
def test_hydra_equals_its_definition_computed_directly(channels):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, channels, 40)).astype(np.float32)
  lengths = np.array([40, 27])
  kernels = hydra.draw(40, channels, seed=1)
  features = np.asarray(hydra.transform(x, lengths, kernels))
  expected = []
  for b, length in enumerate(lengths):
    series = x[b, :, :length].astype(np.float64)
    case = []
    for i, dilation in enumerate(kernels.dilations):
      for r, s in enumerate((series, np.diff(series, axis=-1))):
        w = kernels.weights[i, r].reshape(-1, kernels.kernels, 9)  # [groups, k, 9]
        top, bottom = np.zeros(w.shape[:2]), np.zeros(w.shape[:2])
        for g in range(len(w)):
          summed = s[0] if kernels.channels is None else s[kernels.channels[i, r, g]].sum(0)
          padded = np.pad(summed, 4 * dilation)
          taps = np.stack([padded[n * dilation : n * dilation + s.shape[-1]] for n in range(9)])
          z = w[g] @ taps  # [k, steps]: each kernel, zero outside the series
          np.add.at(top[g], z.argmax(0), z.max(0))
          np.add.at(bottom[g], z.argmin(0), 1)
        case += [top.ravel(), bottom.ravel()]
    expected.append(np.concatenate(case))
  np.testing.assert_allclose(features, np.stack(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('channels', [1, 3])
def test_hydra_counts_every_position_once_and_ignores_padding(channels):
  rng = np.random.default_rng(2)
  x = rng.integers(-5, 6, size=(3, channels, 60)).astype(np.float32)
  lengths = np.array([60, 41, 23])
  kernels = hydra.draw(60, channels, seed=0)
  padded = np.where(np.arange(60) < lengths[:, None, None], x, 9.0).astype(np.float32)
  features = np.asarray(hydra.transform(padded, lengths, kernels))
  assert features.shape == (3, kernels.num_features) == (3, len(kernels.dilations) * 4 * 32 * 8)
  # per dilation and series: [maxima (32 groups x 8 kernels), minima counts (32 x 8)]
  blocks = features.reshape(3, len(kernels.dilations), 2, 2, 32, 8)
  counts = blocks[:, :, :, 1].sum(-1)  # each group's argmin counts: one per valid position
  np.testing.assert_array_equal(
    counts[:, :, 0], np.broadcast_to(lengths[:, None, None], counts[:, :, 0].shape)
  )
  np.testing.assert_array_equal(
    counts[:, :, 1], np.broadcast_to(lengths[:, None, None] - 1, counts[:, :, 1].shape)
  )
  for i, length in enumerate(lengths):
    alone = np.asarray(hydra.transform(x[i : i + 1, :, :length], [length], kernels))[0]
    # the kernels' dilations come from the longest case; shorter cases keep them
    np.testing.assert_allclose(features[i], alone, rtol=1e-5, atol=1e-4)


def test_multirocket_sums_counted_from_bits_equal_those_step_by_step():
  # the chunk's comparisons packed as bits (`_compared`, `_counted`) against the sums' definition
  # a step at a time: ties with the biases (neither above nor below), NaN (outside a run), runs
  # of steps not below longer than a chunk and within one, no step below at all
  rng = np.random.default_rng(4)
  chunks, steps = 5, minirocket.TIME_CHUNK
  c = rng.choice([-1.0, 0.0, 1.0, 2.0, np.nan], size=(chunks, 2, steps, 3, 84)).astype(np.float32)
  c[:, 0, :, 0] = np.abs(c[:, 0, :, 0])  # nothing below a bias of 0 for a whole case
  c[1:3, 1, :, 1] = 2.0  # 32 steps above everything
  biases = rng.choice([0.0, 0.5, 1.0], size=(2, 2, 1, 84)).astype(np.float32)
  first = rng.integers(0, 3, size=(2, 3, 84)).astype(np.float32)
  shape = (2, 2, 3, 84)
  sums = [{n: jnp.zeros(shape) for n in ('hits', 'values', 'positions', 'longest')}]
  sums[0]['last'] = jnp.broadcast_to(first, shape)
  bits, start = [jnp.zeros(shape, jnp.uint32)], 0.0
  for i in range(chunks):
    sums, bits = minirocket._compared(minirocket._counted(sums, bits, start), [c[i]], [biases])
    start = float(i * steps)
  (got,) = minirocket._counted(sums, bits, start)
  want = {n: np.zeros(shape) for n in ('hits', 'values', 'positions', 'longest')}
  want['last'] = np.broadcast_to(first, shape).copy()
  for t in range(chunks * steps):
    value = c[t // steps, :, t % steps]
    above, below = value > biases, value < biases
    want['hits'] += above
    want['values'] += np.where(above, value, 0.0)
    want['positions'] += np.where(above, t, 0.0)
    want['longest'] = np.where(
      below, np.maximum(want['longest'], t - want['last']), want['longest']
    )
    want['last'] = np.where(below, t, want['last'])
  for name, expected in want.items():
    np.testing.assert_array_equal(np.asarray(got[name]), expected, err_msg=name)
  assert want['longest'].max() > steps  # the case of runs longer than a chunk is in the test
