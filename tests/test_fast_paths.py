"""The training loop's fast paths against the plain path: several steps per dispatch (a lax.scan
on the device) and the train split resident on the devices (batches drawn inside the step)."""

import functools
import json
import os

import helpers
import jax
import numpy as np
import pytest

from dlearn import bookkeeping, checkpoint, configs, evaluation, optimizers, parallel, train
from dlearn import steps as steps_lib
from dlearn.data import on_device
from dlearn.data.pipeline import DatasetInfo

IMAGES, SEQUENCES = helpers.IMAGES, helpers.SEQUENCES


def _config(**overrides):
  config = configs.base()
  config.batch_size = 16
  config.learning_rate = 0.05
  config.data.crop_padding = 2  # augmentation on: it folds in the step, which the scan advances
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


def _dispatch(config, mesh, num_steps, layout=None, mapping='pmap', info=IMAGES):
  config = config.copy_and_resolve_references()
  config.mapping = mapping
  return helpers.mapped_step(
    config,
    info,
    mesh,
    optimizers.create(config, 100),
    body=steps_lib.train_steps,
    num_steps=num_steps,
    draw=helpers.draw(layout) if layout is not None else None,
    unroll=config.unroll_dispatch,
  )


# ---- several steps per dispatch ----------------------------------------------------------------
@pytest.mark.parametrize('unroll', [pytest.param(True, marks=pytest.mark.slow), False])
def test_k_steps_in_one_dispatch_equal_k_single_dispatches(unroll):
  config, mesh, k = _config(unroll_dispatch=unroll), parallel.make_mesh(), 3
  batches = helpers.image_batches(k)
  single, state = _dispatch(config, mesh, 1)
  single_sums = []
  for batch in batches:
    state, sums = single(state, parallel.to_global(batch, mesh))
    single_sums.append(jax.device_get(sums))
  several, scanned = _dispatch(config, mesh, k)
  stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)  # [batch, K, ...]
  scanned, sums = several(scanned, parallel.to_global(stacked, mesh))
  sums = jax.device_get(sums)

  assert int(scanned.step) == int(state.step) == k
  # XLA compiles the scan's body apart from the single step: float32 rounding may differ.
  helpers.assert_trees_close(state.params, scanned.params)
  helpers.assert_trees_close(state.opt_state, scanned.opt_state)
  assert sums['count'] == k * 16 and sums['nonfinite'] == 0 and sums['first_nonfinite_step'] == 0
  np.testing.assert_allclose(sums['loss_sum'], sum(s['loss_sum'] for s in single_sums), rtol=1e-5)
  assert sums['correct'] == sum(s['correct'] for s in single_sums)


def test_dispatch_plan_ends_a_dispatch_at_every_boundary():
  # Resumed at step 5, K=4, boundaries at multiples of 10 and 12, and at the end (30).
  plan = bookkeeping.dispatch_plan(5, 30, 4, (10, 12))
  assert plan == [
    (5, 4),
    (9, 1),
    (10, 1),
    (11, 1),
    (12, 4),
    (16, 4),
    (20, 4),
    (24, 4),
    (28, 1),
    (29, 1),
  ]
  assert bookkeeping.dispatch_plan(0, 16, 8, (8, 16)) == [(0, 8), (8, 8)]
  assert bookkeeping.dispatch_plan(16, 16, 8, (8,)) == []


# ---- data on the device --------------------------------------------------------------------------
def test_every_example_of_a_shard_is_drawn_once_per_epoch():
  mesh = parallel.make_mesh()
  layout = on_device.Layout(num_examples=101, num_devices=8, per_device_batch=4)
  assert (layout.shard_size, layout.dropped, layout.steps_per_epoch) == (12, 5, 3)
  records = helpers.image_records(101)
  info = DatasetInfo('synthetic', 'image', (4, 4, 3), 5, tuple('abcde'))
  data = on_device.load(records, info, layout, mesh, seed=0)
  assert data['image'].shape == (96, 4, 4, 3) and data['image'].dtype == np.uint8
  assert [s.data.shape for s in data['image'].addressable_shards] == [(12, 4, 4, 3)] * 8

  # Each device's shard, as example indices (found from the pixels, which are unique).
  by_pixels = {r['image'].tobytes(): r['index'] for r in records}
  shards = [
    [by_pixels[image.tobytes()] for image in np.asarray(block.data)]
    for block in data['image'].addressable_shards
  ]
  assert len({i for shard in shards for i in shard}) == 96  # disjoint; 5 dropped

  base = jax.random.key_data(jax.random.key(7))
  draw = jax.pmap(
    lambda shard, step: on_device.draw(shard, base, step, layout)['image'],
    axis_name=parallel.AXIS,
    in_axes=(0, None),
  )
  data = jax.tree.map(lambda x: np.asarray(x).reshape(8, 12, *x.shape[1:]), data)
  epochs = []
  for epoch in range(2):
    drawn = [
      np.asarray(draw(data, np.int32(step))) for step in range(epoch * 3, epoch * 3 + 3)
    ]  # [devices, batch, ...] per step
    epochs.append(
      [
        [by_pixels[image.tobytes()] for step in drawn for image in step[device]]
        for device in range(8)
      ]
    )
  for device in range(8):
    for epoch in epochs:
      assert sorted(epoch[device]) == sorted(shards[device])  # each example once
    assert epochs[0][device] != epochs[1][device]  # a new order each epoch


@pytest.mark.slow
def test_the_shuffle_is_a_permutation_of_any_size():
  permute = jax.jit(on_device.permuted, static_argnums=2)
  for size in (1, 2, 3, 13, 64, 100, 45000):
    orders = [np.asarray(permute(jax.random.key(seed), np.arange(size), size)) for seed in (0, 1)]
    for order in orders:
      np.testing.assert_array_equal(np.sort(order), np.arange(size))
    if size > 2:
      assert (orders[0] != orders[1]).any() and (orders[0] != np.arange(size)).any()
  # Displacement looks random: no long runs of consecutive positions.
  order = np.asarray(permute(jax.random.key(0), np.arange(45000), 45000))
  assert np.mean(np.diff(order) == 1) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize('model', ['seed_dcnn', 'rnn'])
def test_on_device_data_pmap_equals_shard_map_and_k_steps_equal_single_steps(model):
  # seed_dcnn on images (augmented in the step); an RNN on padded sequences of several lengths.
  config = _config(model=model)
  config.rnn.hidden_size = 16
  mesh = parallel.make_mesh()
  layout = on_device.Layout(num_examples=200, num_devices=8, per_device_batch=2)
  if model == 'rnn':
    info = SEQUENCES
    data = on_device.load(helpers.sequence_records(200), info, layout, mesh, seed=0)
    assert set(data) == {'sequence', 'length', 'label', 'index'}
    assert data['sequence'].shape == (200, 8, 2)
  else:
    info = IMAGES
    data = on_device.load(helpers.image_records(200, (16, 16, 3), 10), info, layout, mesh, seed=0)
  results = {}
  for mapping, k in (('pmap', 2), ('shard_map', 2), ('jit', 2), ('pmap', 1)):
    step, state = _dispatch(config, mesh, k, layout, mapping, info)
    state, _ = step(state, data)  # compiles
    with jax.transfer_guard('disallow'):  # no data crosses from the host per step
      for _ in range(4 // k - 1):
        state, sums = step(state, data)
    assert int(state.step) == 4
    results[mapping, k] = state
  helpers.assert_trees_close(
    results['pmap', 2].params, results['shard_map', 2].params, rtol=1e-6, atol=1e-7
  )
  helpers.assert_trees_close(results['pmap', 2].params, results['jit', 2].params)
  helpers.assert_trees_close(results['pmap', 2].params, results['pmap', 1].params)


@pytest.mark.slow
def test_on_device_data_with_examples_split_over_devices():
  # 8 devices in 4 groups of 2 (each image in 2 bands of rows) hold 4 shards, one per group, and
  # train what 4 devices with whole images do.
  config = _config(mapping='shard_map')
  layout = on_device.Layout(num_examples=120, num_devices=4, per_device_batch=4)
  records = helpers.image_records(120, (16, 16, 3), 10)
  results = []
  for devices, parts in ((4, 1), (8, 2)):
    config.partition.parts = parts
    mesh = parallel.make_mesh(jax.devices()[:devices], parts)
    data = on_device.load(records, IMAGES, layout, mesh, seed=0)
    assert data['image'].shape == (120, 16, 16, 3)
    step, state = _dispatch(config, mesh, 2, layout, 'shard_map')
    for _ in range(2):
      state, _ = step(state, data)
    results.append(state)
  helpers.assert_trees_close(results[0].params, results[1].params)


# ---- through train_and_evaluate ------------------------------------------------------------------
@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return helpers.prepared_images(tmp_path_factory.mktemp('data'))  # 108 train, 12 validation


def _loop_config(data_dir, **overrides):
  config = _config(
    **{
      'data.name': 'toy_images',
      'data.data_dir': data_dir,
      'data.train_split': 'train',
      'data.eval_split': 'validation',
      'data.augment': False,
      'eval_batch_size': 16,
      'learning_rate': 0.01,
      'log_every_steps': 6,
      'checkpoint_every_steps': 6,
      'eval_every_steps': 1000,
      'write_plots': False,
    }
  )
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


def _params(result):
  return jax.tree.leaves(jax.device_get(result['state'].params))


def _train_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [(r['step'], r['train/loss']) for r in records if 'train/loss' in r]


@pytest.mark.slow
@pytest.mark.parametrize('on_device,k', [(True, 2), (False, 4)])
def test_stopped_and_resumed_run_equals_a_straight_one(tmp_path, data_dir, on_device, k):
  # Host pipeline, K=4: the steps before the boundaries at 6 and 12 run one per dispatch.
  config = functools.partial(
    _loop_config, data_dir, **{'data.on_device': on_device, 'steps_per_dispatch': k}
  )
  straight = train.train_and_evaluate(config(num_train_steps=12), str(tmp_path / 'straight'))
  resumed_dir = str(tmp_path / 'resumed')
  train.train_and_evaluate(config(num_train_steps=6), resumed_dir)
  resumed = train.train_and_evaluate(config(num_train_steps=12), resumed_dir)
  for a, b in zip(_params(straight), _params(resumed), strict=True):
    np.testing.assert_array_equal(a, b)  # bitwise
  losses = _train_losses(resumed_dir)
  assert [step for step, _ in losses] == [6, 12]  # each logged once
  assert losses == _train_losses(str(tmp_path / 'straight'))
  assert losses[1][1] < 0.8 * losses[0][1]  # it learns
  if on_device:
    with open(os.path.join(checkpoint.directory(resumed_dir), '12', 'data', 'metadata')) as f:
      assert json.load(f) == {'on_device': True, 'shards': 8, 'seed': 0}


@pytest.mark.slow
@pytest.mark.parametrize('mapping', ['jit', 'pmap', 'shard_map'])
def test_evaluation_kept_on_devices_equals_streamed(tmp_path, data_dir, mapping):
  # With on-device data the loop keeps the evaluation split on the devices and compiles its step
  # ahead; `evaluate_workdir` streams it from the host through the step compiled on first call.
  workdir = str(tmp_path / mapping)
  config = _loop_config(data_dir, num_train_steps=2, **{'data.on_device': True, 'mapping': mapping})
  result = train.train_and_evaluate(config, workdir)
  assert result['timing']['eval_compile_seconds'] > 0
  streamed, *_ = evaluation.evaluate_workdir(workdir)
  assert result['eval']['count'] == streamed['count']
  np.testing.assert_allclose(result['eval']['loss'], streamed['loss'], rtol=1e-5)
  assert result['eval']['accuracy'] == streamed['accuracy']


@pytest.mark.slow
def test_non_finite_step_in_a_dispatch_is_named_and_stops(tmp_path, data_dir):
  workdir = str(tmp_path / 'workdir')
  config = functools.partial(
    _loop_config,
    data_dir,
    **{'data.on_device': True, 'steps_per_dispatch': 2, 'checkpoint_every_steps': 2},
  )
  train.train_and_evaluate(config(num_train_steps=2), workdir)
  with pytest.raises(
    train.NonFiniteError,
    match=r'at step 3 \(steps 3-4 ran as one dispatch\); '
    r'.*last good checkpoint, step 2',
  ):
    train.train_and_evaluate(config(num_train_steps=6, learning_rate=float('inf')), workdir)


@pytest.mark.slow
def test_clear_errors_before_anything_is_read_or_compiled(tmp_path, data_dir, monkeypatch):
  def no_loading(*args, **kwargs):
    raise AssertionError('the data should not be read')

  monkeypatch.setattr(on_device, 'load', no_loading)
  workdir = str(tmp_path / 'workdir')
  with pytest.raises(ValueError, match=r'config.steps_per_dispatch=0 must be .* 1 or more'):
    train.train_and_evaluate(_loop_config(data_dir, steps_per_dispatch=0), workdir)
  with pytest.raises(
    ValueError,
    match=r'gives each of the 8 devices 13 examples, fewer than its '
    r'batch of 16.*config.data.on_device=False',
  ):
    train.train_and_evaluate(
      _loop_config(data_dir, **{'data.on_device': True, 'batch_size': 128}), workdir
    )
  monkeypatch.setattr(on_device, 'device_memory_limit', lambda device: 2000)  # bytes
  with pytest.raises(
    ValueError,
    match=r"split 'train' needs 2.5 KiB on each device \(13 examples "
    r'of 200 bytes\), more than 50% of the 2.0 KiB of .*set '
    r'config.data.on_device=False',
  ):
    train.train_and_evaluate(_loop_config(data_dir, **{'data.on_device': True}), workdir)
