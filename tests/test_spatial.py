"""Spatially partitioned CNNs (dlearn/models/cnn.py, `space_axis`) on 8 CPU devices: images split
into bands of rows over a 'space' mesh axis give the unpartitioned model's logits, gradients,
BatchNorm statistics and training step, within float32 tolerance."""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dlearn import configs, models
from dlearn.models import cnn

DATA, SPACE = 'batch', 'space'
NUM_CLASSES = 5
RESNET_STAGES = (1, 1)  # one stride-2 stage: bands must keep an even number of rows
TOLERANCE = dict(rtol=2e-4, atol=2e-5)


def build(name, shape, *, space_axis=None, axis_name=None):
  if name == 'seed_dcnn':
    return cnn.SeedDCNN(NUM_CLASSES, shape, rngs=nnx.Rngs(0), space_axis=space_axis)
  return cnn.ResNet(
    NUM_CLASSES,
    shape,
    rngs=nnx.Rngs(0),
    stage_sizes=RESNET_STAGES,
    width=4,
    axis_name=axis_name,
    space_axis=space_axis,
  )


@functools.cache
def reference(name, shape):
  """(unpartitioned model, images, labels). Every parameter and running statistic is drawn here
  (no zero-initialised scale hides a gradient; no random-init kernels to compile)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build(name, shape)))
  rng = np.random.default_rng(0)

  def draw(path, x):
    key = jax.tree_util.keystr(path)
    normal = rng.normal(size=x.shape).astype(np.float32)
    if "['kernel']" in key:  # variance-preserving, like the real initialisers
      return normal / np.sqrt(np.prod(x.shape[:-1]))
    if "['var']" in key:
      return 1 + 0.3 * np.abs(normal)
    return ("['scale']" in key) + 0.2 * normal  # biases, BatchNorm scales and means

  model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))
  images = rng.normal(size=(8, *shape)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, 8).astype(np.int32)
  return model, images, labels


def loss_and_outputs(model, images, labels):
  """The train-mode loss with (logits, updated BatchNorm statistics), and eval-mode logits."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(images, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, nnx.state(model, nnx.BatchStat))

  (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  eval_logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=False)
  return loss, logits, eval_logits, grads, stats


@functools.cache
def unpartitioned(name, shape):
  model, images, labels = reference(name, shape)
  return jax.jit(loss_and_outputs)(model, images, labels)


def partitioned_model(name, shape):
  """The partitioned model, loaded with the reference model's state: the same tree, as a
  checkpoint would be."""
  graphdef, abstract = nnx.split(
    nnx.eval_shape(lambda: build(name, shape, space_axis=SPACE, axis_name=DATA))
  )
  state = nnx.state(reference(name, shape)[0])
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  return nnx.merge(graphdef, state)


def mesh_of(data, space):
  return Mesh(np.asarray(jax.devices()[: data * space]).reshape(data, space), (DATA, SPACE))


def split_batch(images, labels, data):
  """The trainer's layout: [data devices, per-device batch, H, W, C]."""
  return (images.reshape(data, -1, *images.shape[1:]), labels.reshape(data, -1))


IMAGE_SPEC = P(DATA, None, SPACE)  # the images' H split over the space axis
STACKED = P(DATA, SPACE)  # a per-device result, kept per device to check they agree


@pytest.mark.parametrize('parts', [2, 4, pytest.param(8, marks=pytest.mark.slow)])
@pytest.mark.parametrize('name', ['seed_dcnn', pytest.param('resnet', marks=pytest.mark.slow)])
def test_forward_gradients_and_statistics_equal_unpartitioned(name, parts):
  # H a multiple of 8 parts x the downsampling (4 for SeedDCNN, 2 here for the ResNet: 8 bands of
  # 2 rows, 1 row after the stride-2 stage); W is never split.
  shape = (32, 8, 3) if name == 'seed_dcnn' else (16, 8, 3)
  data = 8 // parts
  mesh = mesh_of(data, parts)
  model = partitioned_model(name, shape)
  _, images, labels = reference(name, shape)

  def body(model, images, labels):
    loss, logits, eval_logits, grads, stats = loss_and_outputs(model, images[0], labels[0])
    grads = lax.pmean(grads, (DATA, SPACE))  # the rule the trainer uses
    per_device = lambda tree: jax.tree.map(lambda x: x[None, None], tree)
    return per_device((loss, logits, eval_logits, stats)), grads

  mapped = jax.jit(
    jax.shard_map(
      body,
      mesh=mesh,
      in_specs=(P(), IMAGE_SPEC, P(DATA)),
      out_specs=(STACKED, P()),
      check_vma=False,
    )
  )
  (loss, logits, eval_logits, stats), grads = mapped(model, *split_batch(images, labels, data))
  want_loss, want_logits, want_eval, want_grads, want_stats = unpartitioned(name, shape)

  # [data, space, per-device batch, classes]: every band's device holds its images' full logits.
  per_image = lambda x: np.moveaxis(np.asarray(x), 1, 0).reshape(parts, 8, -1)
  for got, want in [(logits, want_logits), (eval_logits, want_eval)]:
    for band in per_image(got):
      np.testing.assert_allclose(band, want, **TOLERANCE)
  np.testing.assert_allclose(np.asarray(loss).mean(), want_loss, **TOLERANCE)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **TOLERANCE), grads, want_grads)
  assert jax.tree.leaves(want_stats) or name == 'seed_dcnn'
  stats = dict(nnx.to_flat_state(stats))
  for path, want in nnx.to_flat_state(want_stats):  # the same running statistics on every device
    for copy in np.asarray(stats[path][...]).reshape(-1, *want.shape):
      np.testing.assert_allclose(copy, want[...], **TOLERANCE)


def sgd_step(model_graphdef, params, model_state, images, labels, axes):
  """One SGD-with-momentum step, as in dlearn.steps.train_step, with gradients, loss and
  BatchNorm statistics averaged over `axes` (none: one device, the whole batch)."""
  tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))

  def loss_fn(params):
    model = nnx.merge(model_graphdef, params, model_state, copy=True)
    logits = model(images, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, nnx.split(model, nnx.Param, ...)[2]

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  if axes:
    loss, grads, new_model_state = lax.pmean((loss, grads, new_model_state), axes)
  updates, _ = tx.update(grads, tx.init(params), params)
  return loss, optax.apply_updates(params, updates), new_model_state


@pytest.mark.parametrize(
  'name, data, parts, height',
  [
    ('seed_dcnn', 4, 2, 24),  # 24 rows: 2 parts divide it pool-aligned (24 = 2 x 4 x 3)
    pytest.param('resnet', 2, 4, 24, marks=pytest.mark.slow),
  ],
)
def test_one_training_step_on_a_data_by_space_mesh(name, data, parts, height):
  shape = (height, 8, 3)
  reference_model, images, labels = reference(name, shape)
  graphdef, params, model_state = nnx.split(reference_model, nnx.Param, ...)
  want = jax.jit(functools.partial(sgd_step, graphdef, axes=()))(
    params, model_state, images, labels
  )

  space_graphdef, *_ = nnx.split(partitioned_model(name, shape), nnx.Param, ...)

  def body(params, model_state, images, labels):
    return sgd_step(space_graphdef, params, model_state, images[0], labels[0], axes=(DATA, SPACE))

  mapped = jax.jit(
    jax.shard_map(
      body,
      mesh=mesh_of(data, parts),
      in_specs=(P(), P(), IMAGE_SPEC, P(DATA)),
      out_specs=P(),
      check_vma=False,
    )
  )
  got = mapped(params, model_state, *split_batch(images, labels, data))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **TOLERANCE), got, want)
  assert not jax.tree.leaves(model_state) or not all(  # the running statistics did move
    np.allclose(a, b) for a, b in zip(jax.tree.leaves(model_state), jax.tree.leaves(got[2]))
  )


@pytest.mark.parametrize(
  'model, stages, height, parts, message',
  [
    (
      'seed_dcnn',
      (),
      24,
      4,
      r'image height 24 cannot be split into 4 bands.*4 x 4 = 16.*'
      r'spatial parts in \[1, 2, 3, 6\].*height 16 or 32 for 4 parts',
    ),
    (
      'seed_dcnn',
      (),
      30,
      2,
      r'image height 30 cannot be split into 2 bands.*spatial parts in '
      r'\[1\].*height 24 or 32',
    ),
    (
      'resnet',
      (2, 2, 2, 2),
      32,
      8,
      r'image height 32 cannot be split into 8 bands.*8 x 8 = 64.*'
      r'spatial parts in \[1, 2, 4\]',
    ),
  ],
)
def test_heights_the_parts_cannot_split_are_a_clear_error(model, stages, height, parts, message):
  config = configs.base()
  config.model = model
  if stages:
    config.resnet.stage_sizes = stages
  family = models.family_of(config)
  with pytest.raises(ValueError, match=message):
    family.check_partition(config, (height, height, 3), parts, {})
  family.check_partition(config, (height, height, 3), 1, {})  # unpartitioned: always fine


def test_the_model_raises_the_same_error_while_tracing():
  shape = (24, 8, 3)
  model = nnx.eval_shape(lambda: build('seed_dcnn', shape, space_axis=SPACE))
  mapped = jax.jit(
    jax.shard_map(
      lambda m, x: m(x[0]),
      mesh=mesh_of(1, 4),
      in_specs=(P(), IMAGE_SPEC),
      out_specs=P(),
      check_vma=False,
    )
  )
  with pytest.raises(ValueError, match='image height 24 cannot be split into 4 bands'):
    mapped.trace(model, np.zeros((1, 2, *shape), np.float32))


def test_create_model_option_keeps_the_parameter_tree():
  config = configs.base()
  config.resnet.stage_sizes, config.resnet.width = (1, 1), 4
  for name in ('seed_dcnn', 'resnet'):
    config.model = name
    plain, spatial = (
      nnx.eval_shape(
        functools.partial(
          models.create_model,
          config,
          num_classes=10,
          input_shape=(16, 8, 3),
          axis_name=DATA,
          seed=0,
          space_axis=space,
        )
      )
      for space in (None, SPACE)
    )
    assert spatial.space_axis == SPACE and plain.space_axis is None
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(spatial))
    assert jax.tree.map(lambda x: x.shape, jax.tree.leaves(nnx.state(plain))) == (
      jax.tree.map(lambda x: x.shape, jax.tree.leaves(nnx.state(spatial)))
    )
  # The RNN runs partitioned as a pipeline of its unpartitioned module (pipelined_rnn.py).
  config.model = 'rnn'
  plain, partitioned = (
    nnx.eval_shape(
      functools.partial(
        models.create_model,
        config,
        num_classes=10,
        input_shape=(32, 96),
        axis_name=DATA,
        seed=0,
        space_axis=space,
      )
    )
    for space in (None, SPACE)
  )
  assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(partitioned))
