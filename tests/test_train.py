"""The parallel step: the same global batch gives the same model on 1 and on 8 devices, under jit,
pmap and shard_map, with the state replicated or split ('fsdp'), and BatchNorm statistics end
identical on every device."""

import helpers
import jax
import ml_collections
import numpy as np
import pytest

from dlearn import configs, optimizers, parallel, train
from dlearn import steps as steps_lib

IMAGES = helpers.IMAGES
GLOBAL_BATCH = 16


def _config(model):
  config = configs.base()
  config.model = model
  config.resnet.stage_sizes, config.resnet.width = (1, 1), 8
  config.rnn.hidden_size = 16
  config.vit = ml_collections.ConfigDict({'size': 'Ti', 'patch': 8})
  config.data.augment = False  # augmentation folds in the device index: it differs by design
  config.batch_size = GLOBAL_BATCH
  config.learning_rate = 0.05
  return config


def _train(model, num_devices, mapping='pmap', steps=3, config=None, parts=1, rule='replicate'):
  config = config or _config(model)
  config.mapping, config.sharding = mapping, rule
  config.fsdp_min_size_mib = 0  # tiny models: split every array the devices divide
  mesh = parallel.make_mesh(jax.devices()[:num_devices], parts)
  step, state = helpers.mapped_step(config, IMAGES, mesh, optimizers.create(config, steps))
  for batch in helpers.image_batches(steps, GLOBAL_BATCH):
    state, sums = step(state, parallel.to_global(batch, mesh))
  return state, jax.device_get(sums)


@pytest.mark.parametrize(
  'model',
  [
    'seed_dcnn',
    pytest.param('resnet', marks=pytest.mark.slow),
    pytest.param('rnn', marks=pytest.mark.slow),
    pytest.param('vit', marks=pytest.mark.slow),  # no dropout yet: nothing random in the step
  ],
)
def test_one_and_eight_devices_give_the_same_parameters(model):
  one, one_sums = _train(model, 1)
  eight, eight_sums = _train(model, 8)
  helpers.assert_trees_close(one.params, eight.params)
  helpers.assert_trees_close(one.model_state, eight.model_state)
  assert one_sums['count'] == eight_sums['count'] == GLOBAL_BATCH
  np.testing.assert_allclose(one_sums['loss_sum'], eight_sums['loss_sum'], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('ensemble_size', [1, 2])
def test_lstm_fcn_and_its_ensembles_agree_on_one_and_eight_devices(ensemble_size):
  # The convolutional branch's BatchNorm statistics are the global batch's (synchronised), inside
  # the ensemble's vmap too.
  config = _config('rnn')
  config.rnn.hidden_size, config.rnn.conv_filters, config.rnn.conv_kernels = 8, (8,), (3,)
  config.ensemble_size = ensemble_size
  one, _ = _train('rnn', 1, config=config)
  eight, _ = _train('rnn', 8, config=config)
  helpers.assert_trees_close(one.params, eight.params)
  helpers.assert_trees_close(one.model_state, eight.model_state)


def test_training_changes_the_parameters():
  # Guards the tests above: equal parameters must not come from steps that do nothing.
  config = _config('seed_dcnn')
  _, initial = steps_lib.create_train_state(
    config, IMAGES, optimizers.create(config, 1), parallel.make_mesh(jax.devices()[:1])
  )
  trained, _ = _train('seed_dcnn', 8)
  assert not np.allclose(
    initial.params['dense2']['kernel'][...], trained.params['dense2']['kernel']
  )


@pytest.mark.parametrize('model', [pytest.param('resnet', marks=pytest.mark.slow), 'rnn'])
def test_pmap_and_shard_map_give_the_same_parameters(model):
  with_pmap, _ = _train(model, 8, 'pmap')
  with_shard_map, _ = _train(model, 8, 'shard_map')
  helpers.assert_trees_close(with_pmap.params, with_shard_map.params, rtol=1e-6, atol=1e-7)
  helpers.assert_trees_close(
    with_pmap.model_state, with_shard_map.model_state, rtol=1e-6, atol=1e-7
  )


@pytest.mark.parametrize(
  'model', ['seed_dcnn', 'rnn', pytest.param('resnet', marks=pytest.mark.slow)]
)
def test_jit_over_global_arrays_equals_pmap(model):
  # Augmentation on: under jit each device's share draws from that device's stream, as in pmap.
  config = _config(model)
  config.data.augment = model != 'rnn'
  with_pmap, pmap_sums = _train(model, 8, 'pmap', config=config)
  with_jit, jit_sums = _train(model, 8, 'jit', config=config)
  helpers.assert_trees_close(with_pmap.params, with_jit.params, rtol=1e-5, atol=1e-6)
  helpers.assert_trees_close(with_pmap.model_state, with_jit.model_state, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pmap_sums['loss_sum'], jit_sums['loss_sum'], rtol=1e-5)


@pytest.mark.parametrize(
  'model', ['seed_dcnn', 'resnet', pytest.param('rnn', marks=pytest.mark.slow)]
)
def test_fsdp_gives_the_parameters_of_replicate(model):
  config = _config(model)
  config.optimizer = 'adamw'  # optimizer state of the parameters' shapes, split with them
  replicated, _ = _train(model, 8, 'jit', steps=4, config=config)
  split, _ = _train(model, 8, 'jit', steps=4, config=config, rule='fsdp')
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves((split.params, split.opt_state))]
  assert any(parallel.AXIS in spec for spec in specs), 'fsdp should split some arrays'
  helpers.assert_trees_close(replicated.params, split.params)
  helpers.assert_trees_close(replicated.opt_state, split.opt_state)
  helpers.assert_trees_close(replicated.model_state, split.model_state)


def test_fsdp_needs_the_jit_step_and_a_known_rule(tmp_path):
  config = _config('seed_dcnn')
  config.data.name = 'a_dataset_that_does_not_exist'
  config.mapping, config.sharding = 'pmap', 'fsdp'
  with pytest.raises(ValueError, match="only config.mapping='jit' runs"):
    train.train_and_evaluate(config, str(tmp_path))
  config.mapping, config.sharding = 'jit', 'zero3'
  with pytest.raises(ValueError, match=r"Unknown config.sharding 'zero3'.*'replicate', 'fsdp'"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize(
  'mapping', ['pmap', 'jit', pytest.param('shard_map', marks=pytest.mark.slow)]
)
def test_batchnorm_statistics_are_identical_on_every_device(mapping):
  state, _ = _train('resnet', 8, mapping, steps=2)
  leaves = jax.tree.leaves(state.model_state)
  assert leaves, 'the ResNet should hold BatchNorm statistics'
  for leaf in leaves:
    shards = [np.asarray(shard.data) for shard in leaf.addressable_shards]
    assert len(shards) == 8
    for shard in shards[1:]:
      np.testing.assert_array_equal(shard, shards[0])
  # ...and they are the statistics of the whole global batch, as on one device.
  one, _ = _train('resnet', 1, mapping, steps=2)
  helpers.assert_trees_close(one.model_state, state.model_state)


def test_a_batch_the_devices_do_not_divide_fails_before_any_work(tmp_path):
  config = _config('seed_dcnn')
  config.batch_size = 12
  config.data.name = 'a_dataset_that_does_not_exist'
  with pytest.raises(
    ValueError, match=r'config.batch_size=12 .* multiple of the 8 devices.*8 or 16'
  ):
    train.train_and_evaluate(config, str(tmp_path))


def test_randomness_differs_per_device_and_per_step():
  base = jax.random.key_data(jax.random.key(0))

  def keys(step):
    mapped = jax.pmap(
      lambda _: jax.random.key_data(steps_lib.device_rng(base, step)), axis_name=parallel.AXIS
    )
    return {tuple(np.asarray(k).ravel()) for k in mapped(np.zeros(8))}

  step0, step1 = keys(0), keys(1)
  assert len(step0) == 8 and len(step1) == 8
  assert not step0 & step1
  assert keys(0) == step0  # and reproducible


@pytest.mark.parametrize(
  'model, parts, micro_batches',
  [
    ('seed_dcnn', 4, 1),
    pytest.param('resnet', 2, 1, marks=pytest.mark.slow),
    pytest.param('rnn', 4, 2, marks=pytest.mark.slow),
  ],
)
def test_examples_split_over_devices_train_as_data_parallel_groups(model, parts, micro_batches):
  # 8 devices in groups of `parts` (images in bands of rows, or sequences in time chunks) end where
  # as many plain data-parallel devices as groups do, augmentation included: a group augments its
  # whole images once (its parts share the group's random key) before each device takes its part.
  config = _config(model)
  config.data.augment = model != 'rnn'
  config.mapping = 'shard_map'
  plain, plain_sums = _train(model, 8 // parts, 'shard_map', config=config)
  config.partition.parts, config.partition.micro_batches = parts, micro_batches
  train.check_partition(config, IMAGES, parallel.make_mesh(jax.devices(), parts))
  split, split_sums = _train(model, 8, 'shard_map', config=config, parts=parts)
  helpers.assert_trees_close(split.params, plain.params, rtol=1e-4, atol=1e-5)
  helpers.assert_trees_close(split.model_state, plain.model_state, rtol=1e-4, atol=1e-5)
  assert split_sums['count'] == plain_sums['count'] == GLOBAL_BATCH
  np.testing.assert_allclose(split_sums['loss_sum'], plain_sums['loss_sum'], rtol=1e-5)


def test_a_partition_the_model_cannot_run_is_refused_before_compiling():
  config = _config('seed_dcnn')
  config.mapping, config.partition.parts = 'shard_map', 8  # 16 rows: not 8 bands of 4 rows
  with pytest.raises(ValueError, match='image height 16 cannot be split into 8 bands'):
    train.check_partition(config, IMAGES, parallel.make_mesh(jax.devices(), 8))
  config.model, config.partition.micro_batches = 'rnn', 3
  config.partition.parts = 4
  with pytest.raises(ValueError, match='config.batch_size=16.*not a multiple of the 3 micro'):
    train.check_partition(config, IMAGES, parallel.make_mesh(jax.devices(), 4))
  config.mapping = 'pmap'
  with pytest.raises(ValueError, match='add --config.mapping=shard_map'):
    train.check_partition(config, IMAGES, parallel.make_mesh(jax.devices(), 4))


def test_image_statistics_must_match_the_channels():
  config = configs.base()
  config.data.mean = (0.5, 0.5)
  with pytest.raises(ValueError, match=r'config.data.mean has 2 values for images of 3 channels'):
    train.check_data(config, IMAGES)
  train.check_data(configs.base(), IMAGES)
