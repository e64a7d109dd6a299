"""The fast CIFAR-10 recipe's parts (issue 14): FastCNN, its whitening and TTA, Muon and the
partitioned optimizer, the translation and alternating flips. Checked against the reference's
formulas (../shared/peers/airbench/airbench94_muon.py) written out here in numpy."""

import dataclasses
import functools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

from dlearn import checkpoint, configs, optimizers, parallel, runs, train
from dlearn import steps as steps_lib
from dlearn.data import augment
from dlearn.data.pipeline import DatasetInfo
from dlearn.models import fast_cnn
from dlearn.models.fast_cnn import FastCNN

SMALL = (8, 16, 16)  # widths for the tests that do not need the real network


def _correlated_images(rng, n, size=12):
  """Smooth images whose channels are mixed: 2x2 patches with a far-from-identity covariance,
  every eigenvalue well above the whitening's eps."""
  noise = rng.normal(size=(n, size + 1, size + 1, 3))
  smooth = noise[:, 1:, 1:] + 0.8 * noise[:, :-1, 1:] + 0.6 * noise[:, 1:, :-1]
  mix = np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.0, 0.0, 0.4]])
  return (smooth @ mix + 0.3).astype(np.float32)


def _patches(images, k=2):
  """All k x k patches, flattened in (row, column, channel) order, as written in the issue."""
  n, h, w, c = images.shape
  return np.stack(
    [images[:, i : h - k + 1 + i, j : w - k + 1 + j] for i in range(k) for j in range(k)], axis=-2
  ).reshape(-1, k * k * c)


def test_whitened_patches_have_identity_covariance():
  images = _correlated_images(np.random.default_rng(0), 64)
  eps = 5e-4
  kernel = np.asarray(fast_cnn.whitening_kernel(images, 2, eps))
  assert kernel.shape == (2, 2, 3, 24)
  np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])

  patches = _patches(images.astype(np.float64))
  covariance = patches.T @ patches / len(patches)  # uncentered, as the reference's
  eigenvalues = np.linalg.eigvalsh(covariance)
  assert eigenvalues.min() > 20 * eps  # the test's images are well conditioned
  # The whitening convolution's first half, applied to the images.
  whitened = lax.conv_general_dilated(
    jnp.asarray(images), jnp.asarray(kernel[..., :12]), (1, 1), 'VALID',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision='highest',
  )  # fmt: skip
  whitened = np.asarray(whitened, np.float64).reshape(-1, 12)
  whitened_covariance = whitened.T @ whitened / len(whitened)
  # Exactly diag(λ / (λ + eps)), so the identity within eps / λ_min.
  np.testing.assert_allclose(
    whitened_covariance, np.diag(eigenvalues / (eigenvalues + eps)), atol=2e-4
  )
  np.testing.assert_allclose(whitened_covariance, np.eye(12), atol=eps / eigenvalues.min() + 2e-4)


def test_init_whitening_sets_the_non_trainable_kernel():
  model = FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0), widths=SMALL)
  images = _correlated_images(np.random.default_rng(1), 8)
  model.init_whitening(images)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  assert isinstance(model.whitening, fast_cnn.Whitening)
  assert not isinstance(model.whitening, nnx.Param)
  np.testing.assert_allclose(
    rest['whitening'][...], fast_cnn.whitening_kernel(images), rtol=1e-6, atol=1e-6
  )
  assert 'whitening' not in params and 'whitening_bias' in params


def test_flips_alternate_by_epoch_from_a_random_start():
  n, key = 2000, jax.random.key(3)
  index = jnp.arange(n)
  # Distinct images whose flip is recognisable: a gradient left to right.
  images = jnp.broadcast_to(jnp.arange(4.0)[None, None, :, None], (n, 2, 4, 1))
  flipped = jnp.stack(
    [augment.alternating_flip(images, index, epoch, key)[:, 0, 0, 0] == 3 for epoch in range(4)]
  )
  assert bool(jnp.all(flipped[1:] != flipped[:-1]))  # each image alternates every epoch
  assert 0.45 < float(flipped[0].mean()) < 0.55  # starts: about half flipped
  # The start belongs to the example, not to its place in the batch.
  order = jax.random.permutation(jax.random.key(4), n)
  again = augment.alternating_flip(images[order], index[order], 0, key)[:, 0, 0, 0] == 3
  np.testing.assert_array_equal(again, flipped[0][order])
  # jit-able, with a traced epoch, on uint8 too.
  jitted = jax.jit(augment.alternating_flip)(images.astype(jnp.uint8), index, 1, key)
  np.testing.assert_array_equal(jitted[:, 0, 0, 0] == 3, flipped[1])


def test_random_translation_is_a_crop_of_the_reflect_padded_image():
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, size=(300, 6, 7, 3), dtype=np.uint8)
  out = np.asarray(
    jax.jit(augment.random_translate, static_argnums=2)(jax.random.key(0), images, 2)
  )
  assert out.dtype == np.uint8 and out.shape == images.shape
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
  seen = set()
  for image, crop in zip(padded, out):
    matches = [
      (i, j)
      for i in range(5)
      for j in range(5)
      if np.array_equal(image[i : i + 6, j : j + 7], crop)
    ]
    assert matches, 'the output is no crop of the reflect-padded image'
    seen.update(matches)
  assert len(seen) == 25  # every shift of up to 2 pixels each way occurs


def test_tta_logits_are_the_weighted_views():
  rng = np.random.default_rng(6)
  images = rng.normal(size=(3, 5, 6, 2)).astype(np.float32)
  weights = rng.normal(size=(5 * 6 * 2, 4)).astype(np.float32)

  def model_fn(x):  # neither flip nor translation invariant
    return jnp.tanh(jnp.reshape(x, (x.shape[0], -1)) @ weights)

  f = lambda x: np.asarray(model_fn(x), np.float64)
  flip = lambda x: x[:, :, ::-1]
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  up_left, down_right = padded[:, :5, :6], padded[:, 2:, 2:]
  expected = {
    0: f(images),
    1: 0.5 * f(images) + 0.5 * f(flip(images)),
    2: 0.25 * f(images)
    + 0.25 * f(flip(images))
    + 0.125 * (f(up_left) + f(flip(up_left)) + f(down_right) + f(flip(down_right))),
  }
  for level, logits in expected.items():
    np.testing.assert_allclose(fast_cnn.tta_logits(model_fn, images, level), logits, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Muon
# ------------------------------------------------------------------------------------------------
def _numpy_newton_schulz(G, steps=3, eps=1e-7):
  """The reference's zeropower_via_newtonschulz5, in float64."""
  a, b, c = 3.4445, -4.7750, 2.0315
  X = G / (np.linalg.norm(G) + eps)
  if G.shape[0] > G.shape[1]:
    X = X.T
  for _ in range(steps):
    A = X @ X.T
    X = a * X + (b * A + c * A @ A) @ X
  return X.T if G.shape[0] > G.shape[1] else X


def _numpy_muon_steps(p, grads, lr, momentum):
  """The reference's Muon.step on a torch-layout [out, in, kh, kw] weight, step after step."""
  buf = np.zeros_like(p)
  for g in grads:
    buf = momentum * buf + g
    g = g + momentum * buf
    p = p * (np.sqrt(len(p)) / np.linalg.norm(p))
    p = p - lr * _numpy_newton_schulz(g.reshape(len(g), -1)).reshape(g.shape)
  return p


@pytest.mark.parametrize('shape', [(3, 3, 4, 6), (1, 1, 2, 8), (3, 3, 8, 8)])  # wide, tall, square
def test_muon_equals_the_reference_over_two_steps(shape):
  rng = np.random.default_rng(7)
  p = rng.normal(size=shape).astype(np.float32)
  grads = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
  to_torch = lambda x: np.transpose(x, (3, 2, 0, 1)).astype(np.float64)  # HWIO → OIHW
  expected = _numpy_muon_steps(to_torch(p), [to_torch(g) for g in grads], 0.24, 0.6)

  tx = optimizers.muon(0.24, 0.6)
  params = {'kernel': jnp.asarray(p)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({'kernel': jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(to_torch(np.asarray(params['kernel'])), expected, atol=2e-5)


def test_newton_schulz_in_bfloat16_is_close_to_float32():
  G = jnp.asarray(np.random.default_rng(8).normal(size=(16, 72)), jnp.float32)
  ortho = optimizers.newton_schulz(G, 3, dtype=jnp.bfloat16)
  assert ortho.dtype == jnp.bfloat16
  np.testing.assert_allclose(ortho.astype(jnp.float32), _numpy_newton_schulz(G), atol=0.03)


# ------------------------------------------------------------------------------------------------
# The recipe's optimizer
# ------------------------------------------------------------------------------------------------
def test_optimizer_groups_and_schedules():
  model = FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0), widths=SMALL)
  _, params, _ = nnx.split(model, nnx.Param, ...)
  labels = {
    '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path[:-1]): label
    for path, label in jax.tree_util.tree_flatten_with_path(optimizers.fast_cnn_labels(params))[0]
  }
  expected = {'whitening_bias': 'whitening_bias', 'head/kernel': 'head'}
  for g in range(3):
    expected |= {f'groups/{g}/conv{i}/kernel': 'filters' for i in (1, 2)}
    expected |= {f'groups/{g}/norm{i}/bias': 'norm_biases' for i in (1, 2)}
  assert labels == expected  # and the whitening kernel is no Param at all

  batch, total, whiten = 50, 10, 3
  tx = optimizers.fast_cnn_optimizer(
    params, total_steps=total, whiten_bias_steps=whiten, batch_size=batch
  )
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.1), params)
  # The head, by the reference's torch SGD: g + (wd / lr0) p, Nesterov momentum, lr0 (1 - t / T).
  head = np.asarray(params['head']['kernel'][...], np.float64)
  buf, wd, lr0 = 0.0, 2e-6 * batch, 0.67
  step = jax.jit(tx.update)
  for t in range(whiten + 1):
    bias_before = params['whitening_bias'][...]
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    d = 0.1 + wd / lr0 * head
    buf = 0.85 * buf + d
    head = head - lr0 * (1 - t / total) * (d + 0.85 * buf)
    np.testing.assert_allclose(params['head']['kernel'][...], head, rtol=1e-5, atol=1e-6)
    moved = not np.array_equal(params['whitening_bias'][...], bias_before)
    assert moved == (t < whiten)  # trained for the first `whiten` steps only


# ------------------------------------------------------------------------------------------------
# FastCNN
# ------------------------------------------------------------------------------------------------
def test_parameter_count_matches_the_reference_network():
  model = nnx.eval_shape(lambda: FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0)))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  count = sum(x.size for x in jax.tree.leaves(params))
  # The reference's trainable tensors: whitening bias (its kernel is frozen); per group two 3x3
  # convolutions without bias and two BatchNorm biases (the scales are frozen); the head.
  widths, whitening = (64, 256, 256), 2 * 3 * 2 * 2
  expected, c_in = whitening, whitening
  for w in widths:
    expected += 9 * c_in * w + 9 * w * w + 2 * w
    c_in = w
  expected += widths[-1] * 10
  assert count == expected == 1_971_352
  assert rest['whitening'].shape == (2, 2, 3, 24)


def test_forward_shape_dirac_init_and_batch_norm():
  model = FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0), widths=SMALL)
  x = jnp.asarray(np.random.default_rng(9).normal(size=(4, 32, 32, 3)), jnp.float32)
  assert model(x, train=False).shape == (4, 10)

  group = model.groups[0]
  assert group.norm1.scale is None and group.norm1.bias is not None  # no trained scale
  features = jnp.asarray(np.random.default_rng(10).normal(size=(2, 7, 7, 24)), jnp.float32)
  # conv1 (24 → 8): its first 8 filters of 24 inputs are the identity... of the first 8 channels.
  np.testing.assert_allclose(group.conv1(features), features[..., :8], atol=1e-6)
  # conv2 (8 → 8): every filter is the identity.
  np.testing.assert_allclose(group.conv2(features[..., :8]), features[..., :8], atol=1e-6)
  conv = model.groups[1].conv1  # 8 → 16: the first 8 outputs pass the input through
  np.testing.assert_allclose(conv(features[..., :8])[..., :8], features[..., :8], atol=1e-6)

  head = model.head.kernel[...]
  np.testing.assert_allclose(jnp.std(head, ddof=1), 1.0, rtol=1e-5)

  # Running averages keep 0.6 of the old value (torch momentum 0.4), from mean 0 and variance 1.
  norm = group.norm2
  batch = jnp.asarray(np.random.default_rng(11).normal(2.0, 3.0, size=(16, 4, 4, 8)), jnp.float32)
  norm(batch, use_running_average=False)
  np.testing.assert_allclose(norm.mean[...], 0.4 * batch.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(norm.var[...], 0.6 + 0.4 * batch.var(axis=(0, 1, 2)), rtol=1e-5)
  assert norm.epsilon == 1e-12


@pytest.mark.slow
def test_batch_norm_statistics_synchronised_over_the_axis():
  """With `axis_name`, two halves of a batch mapped over the axis train like the whole batch."""
  x = jnp.asarray(np.random.default_rng(12).normal(size=(8, 32, 32, 3)), jnp.float32)
  whole = FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0), widths=SMALL)
  synced = FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0), widths=SMALL, axis_name='batch')
  graphdef, state = nnx.split(synced)

  def halves(state, x):
    model = nnx.merge(graphdef, state)
    logits = model(x, train=True)
    return logits, nnx.state(model, nnx.BatchStat)

  logits, stats = jax.vmap(halves, in_axes=(None, 0), out_axes=(0, None), axis_name='batch')(
    state, x.reshape(2, 4, 32, 32, 3)
  )
  np.testing.assert_allclose(logits.reshape(8, 10), whole(x, train=True), atol=1e-5)
  np.testing.assert_allclose(
    stats['groups'][2]['norm2']['var'][...], whole.groups[2].norm2.var[...], rtol=1e-4
  )


@pytest.mark.slow
def test_bfloat16_computation():
  model = FastCNN(10, (32, 32, 3), rngs=nnx.Rngs(0), widths=SMALL, dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(13).normal(size=(2, 32, 32, 3)), jnp.float32)
  logits = model(x, train=True)
  assert logits.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(logits)))
  assert model.head.kernel[...].dtype == jnp.float32  # parameters stay float32


# ---- the recipe in the trainer ------------------------------------------------------------------
CIFAR_SHAPED = DatasetInfo('synthetic', 'image', (32, 32, 3), 10, tuple('abcdefghij'))


def _recipe_config(**overrides):
  config = configs.base()
  config.model, config.optimizer = 'fast_cnn', 'fast_cnn'
  config.fast_cnn.widths = SMALL
  config.loss_reduction, config.label_smoothing = 'sum', 0.2
  config.batch_size = 16
  config.update(overrides)
  return config


def _recipe_steps(num_devices, config, steps=3):
  """The recipe's train step on `num_devices` devices over the same global batches, with the
  on-device draw's epoch-dependent flips replaced by host batches that carry example indices."""
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  tx = optimizers.create(config, total_steps=10, steps_per_epoch=2)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), np.uint8)
  step, state = helpers.mapped_step(
    config,
    CIFAR_SHAPED,
    mesh,
    tx,
    source=[{'image': image} for image in images],
    steps_per_epoch=2,
  )
  sums = None
  for s in range(steps):
    batch = {
      'image': images[16 * s : 16 * s + 16],
      'label': rng.integers(0, 10, 16).astype(np.int32),
      'mask': np.ones(16, np.float32),
      'index': np.arange(16 * s, 16 * s + 16, dtype=np.int32),
    }
    state, sums = step(state, parallel.to_global(batch, mesh))
  return state, jax.device_get(sums)


@pytest.mark.slow
def test_fsdp_gives_the_parameters_of_replicate_with_muon():
  # Muon orthogonalises each whole filter: under 'fsdp' a filter is split over the devices, and
  # the jit step's Newton-Schulz matmuls over it are partitioned by XLA (partial products
  # all-reduced), so the update is the whole filter's, as replicated.
  config = _recipe_config(fsdp_min_size_mib=0.0)
  replicated, _ = _recipe_steps(8, config)
  config.sharding = 'fsdp'
  split, _ = _recipe_steps(8, config)
  split_filters = [
    leaf
    for leaf in jax.tree.leaves(split.params)
    if leaf.ndim == 4 and parallel.AXIS in leaf.sharding.spec
  ]
  assert split_filters, 'fsdp should split the convolution filters'
  helpers.assert_trees_close(replicated.params, split.params, rtol=1e-4, atol=1e-5)
  helpers.assert_trees_close(replicated.model_state, split.model_state, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_one_and_eight_devices_agree_with_the_summed_loss():
  # Augmentation off: it folds in the device index by design. BatchNorm synchronised: per-device
  # statistics differ from the global batch's by design.
  config = _recipe_config()
  config.data.augment, config.fast_cnn.sync_batch_norm = False, True
  # One step agrees to float32 rounding. Later steps drift apart faster than plain SGD's (which
  # agree to 2e-7 after 3 steps here): Newton-Schulz amplifies the small singular directions of a
  # gradient, so float32 differences in the order of the reduction over devices grow.
  one, _ = _recipe_steps(1, config, steps=1)
  eight, _ = _recipe_steps(8, config, steps=1)
  helpers.assert_trees_close(one.params, eight.params, rtol=1e-5, atol=1e-6)
  one, one_sums = _recipe_steps(1, config)
  eight, eight_sums = _recipe_steps(8, config)
  helpers.assert_trees_close(one.params, eight.params, rtol=1e-2, atol=1e-3)
  helpers.assert_trees_close(one.model_state, eight.model_state, rtol=1e-3, atol=1e-4)
  # The whitening kernel, computed from the data, is state (not a parameter) and not trained.
  assert 'whitening' in one.model_state and 'whitening' not in one.params


@pytest.mark.slow
def test_summed_loss_gradient_is_the_sum_over_devices():
  # The same step with the loss averaged takes a step 16 times smaller in the SGD groups' first
  # update (Nesterov SGD is linear in the gradient; Muon normalises it away).
  summed = _recipe_config()
  summed.data.augment, summed.fast_cnn.weight_decay = False, 0.0
  averaged = _recipe_config(loss_reduction='mean')
  averaged.data.augment, averaged.fast_cnn.weight_decay = False, 0.0
  initial, _ = _recipe_steps(8, summed, steps=0)
  after_sum, _ = _recipe_steps(8, summed, steps=1)
  after_mean, _ = _recipe_steps(8, averaged, steps=1)
  head = lambda state: np.asarray(jax.device_get(state.params['head']['kernel'][...]))
  step_sum = head(after_sum) - head(initial)
  step_mean = head(after_mean) - head(initial)
  np.testing.assert_allclose(step_sum, 16 * step_mean, rtol=2e-3, atol=1e-5)


@pytest.fixture(scope='module')
def cifar_shaped_dir(tmp_path_factory):
  return helpers.prepared_images(tmp_path_factory.mktemp('data'), per_class=40, size=(32, 32))


@pytest.mark.slow
def test_the_recipe_resumes_exactly_with_its_whitening_in_the_checkpoint(
  tmp_path, cifar_shaped_dir, monkeypatch
):
  def config():
    c = _recipe_config(num_train_steps=6, steps_per_dispatch=2, write_plots=False)
    c.data.name, c.data.data_dir = 'toy_images', cifar_shaped_dir
    c.data.train_split, c.data.eval_split = 'train', 'validation'
    c.data.on_device, c.eval_batch_size, c.log_every_steps = True, 16, 2
    c.fast_cnn.whitening_images = 50
    return c

  straight = train.train_and_evaluate(config(), str(tmp_path / 'straight'))
  resumed_dir = str(tmp_path / 'resumed')
  # The same run stopped after its first dispatch (as by SIGTERM: a checkpoint at step 2, then
  # exit), then rerun: the schedules depend on the run's total steps, which stay 6.
  stop_after_first = lambda signals, checkpointer, dispatch, *_: (
    'SIGTERM' if dispatch == 0 else None
  )
  with monkeypatch.context() as patch:
    patch.setattr(checkpoint.StopSignals, 'stop_reason', stop_after_first)
    stopped = train.train_and_evaluate(config(), resumed_dir)
  assert stopped['preempted'] and int(stopped['state'].step) == 2
  resumed = train.train_and_evaluate(config(), resumed_dir)
  for a, b in zip(
    jax.tree.leaves(jax.device_get(straight['state'])),
    jax.tree.leaves(jax.device_get(resumed['state'])),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)  # bitwise, whitening and BatchNorm statistics included
  whitening = np.asarray(jax.device_get(resumed['state'].model_state['whitening'][...]))
  restored = runs.restore_for_evaluation(
    resumed_dir,
    configs.load(resumed_dir),
    dataclasses.replace(CIFAR_SHAPED, num_classes=3),
    parallel.make_mesh(),
  )[1]
  np.testing.assert_array_equal(
    np.asarray(jax.device_get(restored.model_state['whitening'][...])), whitening
  )
  assert straight['eval']['count'] == 12


def test_runs_with_other_seeds_share_the_compiled_train_step():
  # The seed reaches the step only through the state's key (a traced value), so a second run,
  # with another seed, finds its programs in JAX's compilation cache (the benchmark's timed runs).
  texts = []
  for seed in (0, 1):
    config = _recipe_config(seed=seed)
    tx = optimizers.create(config, total_steps=10, steps_per_epoch=2)
    graphdef, state = steps_lib.create_train_state(
      config, CIFAR_SHAPED, tx, parallel.make_mesh(jax.devices()[:1])
    )
    step = functools.partial(
      steps_lib.train_step, graphdef=graphdef, tx=tx, config=config, info=CIFAR_SHAPED
    )
    batch = {
      'image': np.zeros((4, 32, 32, 3), np.uint8),
      'label': np.zeros(4, np.int32),
      'mask': np.ones(4, np.float32),
      'index': np.zeros(4, np.int32),
    }
    mapped = jax.jit(functools.partial(step, axis=parallel.DataAxis(1, per_device=False)))
    texts.append(mapped.lower(state, batch).as_text())
  assert texts[0] == texts[1]
