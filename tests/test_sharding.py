"""Where the train state lives: the rules, a state created already placed, and checkpoints that
restore exactly under any rule and device count."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dlearn import (
  checkpoint,
  configs,
  evaluation,
  exporting,
  optimizers,
  parallel,
  prediction,
  sharding,
  steps,
  train,
)
from dlearn.data import pipeline
from dlearn.parallel import AXIS

IMAGES = helpers.IMAGES


def _config(rule='fsdp', model='resnet'):
  config = configs.base()
  config.model, config.optimizer = model, 'adamw'
  config.resnet.stage_sizes, config.resnet.width = (1, 1), 8
  config.sharding, config.fsdp_min_size_mib = rule, 0.0
  return config


def _mesh(devices):
  return parallel.make_mesh(jax.devices()[:devices])


def test_fsdp_splits_the_largest_dimension_the_devices_divide():
  config, mesh = _config(), _mesh(8)
  spec = lambda shape, dtype=jnp.float32: sharding.specs(
    jax.ShapeDtypeStruct(shape, dtype), mesh, config
  )
  assert spec((3, 3, 16, 64)) == P(None, None, None, AXIS)
  assert spec((64, 16)) == P(AXIS, None)
  assert spec((16, 16)) == P(None, AXIS)  # equal sizes: the later one
  assert spec((3, 5, 7)) == P()  # no dimension 8 divides
  assert spec(()) == P()
  config.fsdp_min_size_mib = 1.0
  assert spec((512, 512)) == P(None, AXIS)  # 1 MiB: split
  assert spec((512, 511)) == P()  # below 1 MiB: replicated
  assert sharding.specs(jax.ShapeDtypeStruct((64, 16), jnp.float32), _mesh(1), config) == P()
  config.sharding = 'replicate'
  assert spec((64, 16)) == P()


def test_the_state_is_created_where_the_rule_puts_it():
  config, mesh = _config(), _mesh(8)
  tx = optimizers.create(config, 10)
  _, abstract, shardings = steps.state_shardings(config, IMAGES, tx, mesh)
  _, state = steps.create_train_state(config, IMAGES, tx, mesh)
  for leaf, wanted in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
    assert leaf.sharding.is_equivalent_to(wanted, leaf.ndim)
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  per_device = sharding.bytes_per_device(abstract, shardings)
  # Only the few arrays no dimension of which 8 divides (the 10-class head's bias, scalars) are
  # whole on every device.
  assert per_device < 1.05 * total / 8
  # ...and the same values as a replicated state.
  config.sharding = 'replicate'
  _, replicated = steps.create_train_state(config, IMAGES, tx, mesh)
  helpers.assert_trees_close(state, replicated, rtol=0, atol=0)


def _trained(config, mesh, steps_count=2):
  step, state = helpers.mapped_step(config, IMAGES, mesh, optimizers.create(config, 10))
  for batch in helpers.image_batches(steps_count):
    state, _ = step(state, parallel.to_global(batch, mesh))
  return state


@pytest.mark.parametrize('written', ['fsdp', 'replicate'])
def test_a_checkpoint_restores_exactly_under_any_rule_and_device_count(tmp_path, written):
  config = _config(written)
  state = _trained(config, _mesh(8))
  saver = checkpoint.Checkpointer(str(tmp_path))
  saver.save(2, state, {'position': 2}, wait=True)
  saver.close()
  expected = jax.tree.leaves(jax.device_get(state))
  reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  tx = optimizers.create(config, 10)
  for devices, rule in ((4, 'fsdp'), (1, 'fsdp'), (8, 'replicate'), (8, 'fsdp'), (2, 'fsdp')):
    config.sharding = rule
    _, abstract, shardings = steps.state_shardings(config, IMAGES, tx, _mesh(devices))
    restored, position = reader.restore(2, abstract, shardings)
    assert position == {'position': 2}
    for a, b, wanted in zip(
      expected, jax.tree.leaves(restored), jax.tree.leaves(shardings), strict=True
    ):
      np.testing.assert_array_equal(a, np.asarray(jax.device_get(b)))  # exact
      assert b.sharding == wanted
  reader.close()


def test_a_restore_of_other_shapes_names_them(tmp_path):
  config = _config('fsdp')
  state = _trained(config, _mesh(8), steps_count=0)
  saver = checkpoint.Checkpointer(str(tmp_path))
  saver.save(0, state, {}, wait=True)
  saver.close()
  config.resnet.width = 16
  tx = optimizers.create(config, 10)
  _, abstract, shardings = steps.state_shardings(config, IMAGES, tx, _mesh(8))
  reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(checkpoint.IncompatibleStateError, match=r'other shapes.*\n.*\(8,\).*\(16,\)'):
    reader.restore(0, abstract, shardings)
  reader.close()


@pytest.mark.slow
def test_an_fsdp_run_evaluates_predicts_and_exports_with_its_state_split(tmp_path):
  data_dir = helpers.prepared_images(tmp_path)  # 108 train, 12 validation images of 8x8
  config = _config('fsdp')
  config.data.name, config.data.data_dir = 'toy_images', data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.batch_size, config.eval_batch_size, config.num_train_steps = 16, 16, 3
  config.write_plots = False
  workdir = str(tmp_path / 'fsdp')
  trained = train.train_and_evaluate(config, workdir)['eval']

  restored = evaluation.restore_workdir(workdir)
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(restored.state.params)]
  assert any(AXIS in spec for spec in specs), 'evaluation restores the state split, as trained'
  for overrides in ({}, {'sharding': 'replicate'}):
    summary, *_ = evaluation.evaluate_workdir(workdir, overrides=overrides)
    assert summary['count'] == trained['count'] == 12
    assert summary['accuracy'] == trained['accuracy']
    np.testing.assert_allclose(summary['loss'], trained['loss'], rtol=1e-5)
  predicted = prediction.predict(workdir, None, str(tmp_path / 'p.csv'), split='validation')
  assert predicted['count'] == 12
  assert predicted['summary']['accuracy'] == trained['accuracy']
  np.testing.assert_allclose(predicted['summary']['loss'], trained['loss'], rtol=1e-5)

  function, _, _ = exporting.exported_function(workdir)
  source = pipeline.load_split('toy_images', 'validation', data_dir)
  images = np.stack([np.asarray(source[i]['image']) for i in range(len(source))])
  labels = np.asarray([int(source[i]['label']) for i in range(len(source))])
  probabilities = np.asarray(jax.jit(function)(images))
  loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
  assert np.mean(probabilities.argmax(-1) == labels) == trained['accuracy']
  np.testing.assert_allclose(loss, trained['loss'], rtol=1e-5)
