import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlearn.models import cnn, rnn


def test_seed_dcnn_is_the_articles_network():
  model = cnn.SeedDCNN(10, (32, 32, 3), rngs=nnx.Rngs(0))
  assert model.conv1.kernel.shape == (3, 3, 3, 32)
  assert model.conv2.kernel.shape == (3, 3, 32, 64)
  assert model.dense1.kernel.shape == (4096, 512)
  assert model.dense2.kernel.shape == (512, 10)
  assert model(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


@pytest.mark.slow
def test_resnet_shapes():
  model = cnn.ResNet(7, (32, 32, 3), rngs=nnx.Rngs(0), stage_sizes=(1, 1), width=8)
  assert model(jnp.zeros((2, 32, 32, 3)), train=True).shape == (2, 7)


def test_simple_cell_is_the_elman_cell():
  model = rnn.RNNClassifier(3, 4, rngs=nnx.Rngs(0), cell='simple', hidden_size=5)
  cell = model.layers[0].cell
  x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
  h = np.zeros((2, 5), np.float32)
  for t in range(3):  # h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)
    h = np.tanh(
      h @ cell.dense_h.kernel[...] + x[:, t] @ cell.dense_i.kernel[...] + cell.dense_i.bias[...]
    )
  expected = h @ model.head.kernel[...] + model.head.bias[...]  # y = W_hy h + b_y
  np.testing.assert_allclose(
    model(jnp.asarray(x), jnp.array([3, 3])), expected, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  'cell',
  [
    'simple',
    pytest.param('lstm', marks=pytest.mark.slow),
    pytest.param('gru', marks=pytest.mark.slow),
  ],
)
@pytest.mark.parametrize('bidirectional', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_padding_never_changes_the_output(cell, bidirectional):
  model = rnn.RNNClassifier(
    5, 3, rngs=nnx.Rngs(0), cell=cell, hidden_size=8, num_layers=2, bidirectional=bidirectional
  )
  rng = np.random.default_rng(1)
  lengths = np.array([10, 3, 7, 1])
  x = rng.normal(size=(4, 10, 3)).astype(np.float32)
  for i, length in enumerate(lengths):
    x[i, length:] = 1e3 * rng.normal(size=x[i, length:].shape)  # loud garbage in the padding
  padded = model(jnp.asarray(x), jnp.asarray(lengths))
  unpadded = [
    model(jnp.asarray(x[i : i + 1, :n]), jnp.array([n]))[0] for i, n in enumerate(lengths)
  ]
  np.testing.assert_allclose(padded, np.stack(unpadded), rtol=1e-5, atol=1e-5)


def test_unknown_cell_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown RNN cell 'elman'"):
    rnn.RNNClassifier(2, 3, rngs=nnx.Rngs(0), cell='elman')


@pytest.mark.slow
def test_unrolling_the_scan_changes_nothing_but_speed():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 9, 4)), jnp.float32)
  lengths = jnp.array([9, 4, 1])
  outputs = [
    rnn.RNNClassifier(
      2, 4, rngs=nnx.Rngs(0), cell='lstm', hidden_size=6, bidirectional=True, unroll=unroll
    )(x, lengths)
    for unroll in (1, 4)
  ]
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('num_layers, bidirectional', [(1, False), (2, True)])
def test_cudnn_lstm_gives_the_scans_outputs_and_gradients(num_layers, bidirectional):
  # On a CPU the 'cudnn' path runs JAX's reference of the cuDNN kernel: this checks that the
  # parameters are packed in cuDNN's layout, which the kernel itself then uses on a GPU.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(4, 9, 3)), jnp.float32)
  lengths = jnp.array([9, 4, 1, 7])
  results = []
  for implementation in ('scan', 'cudnn'):
    model = rnn.RNNClassifier(
      5,
      3,
      rngs=nnx.Rngs(0),
      cell='lstm',
      hidden_size=6,
      num_layers=num_layers,
      bidirectional=bidirectional,
      implementation=implementation,
    )
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x, lengths)))
    results.append((nnx.merge(graphdef, params)(x, lengths), jax.grad(loss)(params)))
  (scan_logits, scan_grads), (cudnn_logits, cudnn_grads) = results
  np.testing.assert_allclose(cudnn_logits, scan_logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), cudnn_grads, scan_grads
  )


def test_cudnn_implementation_is_for_float32_lstms_only():
  with pytest.raises(ValueError, match="runs LSTMs in float32 only.*cell='gru'"):
    rnn.RNNClassifier(2, 3, rngs=nnx.Rngs(0), cell='gru', implementation='cudnn')


def _loud_padding(lengths, steps, features, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(lengths), steps, features)).astype(np.float32)
  for i, length in enumerate(lengths):
    x[i, length:] = 1e3 * rng.normal(size=x[i, length:].shape)
  return x


@pytest.mark.parametrize('num_layers', [0, 1])
def test_the_convolutional_branch_ignores_padding(num_layers):
  # LSTM-FCN (num_layers=1) and FCN (0): in evaluation each sequence alone, unpadded, gives what
  # the padded batch gives; in training (BatchNorm on the batch's statistics) more padding
  # changes nothing either, as the statistics count valid steps only.
  model = rnn.RNNClassifier(
    4, 3, rngs=nnx.Rngs(0), hidden_size=6, num_layers=num_layers, conv_filters=(5, 7),
    conv_kernels=(4, 3),
  )  # fmt: skip
  lengths = np.array([10, 3, 7, 1])
  x = _loud_padding(lengths, 10, 3)
  padded = model(jnp.asarray(x), jnp.asarray(lengths), train=False)
  unpadded = [
    model(jnp.asarray(x[i : i + 1, :n]), jnp.array([n]), train=False)[0]
    for i, n in enumerate(lengths)
  ]
  np.testing.assert_allclose(padded, np.stack(unpadded), rtol=1e-5, atol=1e-5)
  longer = np.concatenate([x, 1e3 * np.ones((4, 6, 3), np.float32)], axis=1)
  train_a = model(jnp.asarray(x), jnp.asarray(lengths), train=True)
  train_b = model(jnp.asarray(longer), jnp.asarray(lengths), train=True)
  np.testing.assert_allclose(train_a, train_b, rtol=1e-5, atol=1e-5)
  assert model.convs.norms[0].mean[...].shape == (5,)


def test_a_model_needs_a_layer():
  with pytest.raises(ValueError, match='num_layers=0 needs config.rnn.conv_filters'):
    rnn.RNNClassifier(2, 3, rngs=nnx.Rngs(0), num_layers=0)


def test_sequence_augmentations_keep_the_padding_empty():
  from dlearn.data import augment

  lengths = jnp.array([10, 4, 1])
  x = jnp.asarray(_loud_padding(np.asarray(lengths), 10, 2) * 0 + 1)  # ones
  x = jnp.where((jnp.arange(10)[None, :] < lengths[:, None])[..., None], x, 0)
  keys = jax.random.split(jax.random.key(0), 3)
  jittered = augment.jitter(keys[0], x, lengths, 0.1)
  assert float(jnp.abs(jittered[1, 4:]).max()) == 0.0 and float(jnp.std(jittered[0])) > 0.01
  scaled = augment.scaling(keys[1], x, 0.2)
  np.testing.assert_allclose(scaled[0, 0], scaled[0, 9])  # one factor per channel and sequence
  assert float(jnp.abs(scaled[1, 4:]).max()) == 0.0
  ramp = jnp.where(x > 0, jnp.arange(10, dtype=jnp.float32)[None, :, None] + 1, 0)
  windows, new_lengths = augment.window_slice(keys[2], ramp, lengths, 0.5)
  np.testing.assert_array_equal(new_lengths, [5, 2, 1])
  for i, n in enumerate(np.asarray(new_lengths)):
    values = np.asarray(windows[i, :, 0])
    start = values[0] - 1  # a contiguous window of the original steps, inside the sequence
    np.testing.assert_array_equal(values[:n], start + 1 + np.arange(n))
    assert 0 <= start and start + n <= int(lengths[i]) and not values[n:].any()


def test_the_time_pipeline_refuses_the_convolutional_branch():
  from dlearn import configs
  from dlearn.models import family_of

  config = configs.base()
  config.model, config.rnn.conv_filters = 'rnn', (4,)
  with pytest.raises(ValueError, match='needs the whole sequence'):
    family_of(config).check_partition(config, (8, 3), 2, {'batch_size': 8})


@pytest.mark.parametrize('in_turn', [True, False], ids=['members_in_turn', 'members_vmapped'])
def test_an_ensemble_trains_each_member_as_if_alone(in_turn, monkeypatch):
  # Two LSTM-FCNs trained at once: after two steps each member's parameters and BatchNorm
  # statistics are those of the same model trained alone from the member's initial parameters;
  # evaluation averages probabilities. Both ways of running the members (in turn, as on CPUs, or
  # vmapped, as elsewhere).
  import functools

  from dlearn import configs, optimizers, parallel
  from dlearn import steps as steps_lib
  from dlearn.data.pipeline import DatasetInfo
  from dlearn.models import Ensemble, average_probabilities

  monkeypatch.setattr(Ensemble, 'in_turn_backends', (jax.default_backend(),) if in_turn else ())

  info = DatasetInfo('toy', 'sequence', (6, 2), 3, ('a', 'b', 'c'))
  rng = np.random.default_rng(0)
  batch = {
    'sequence': rng.normal(size=(1, 8, 6, 2)).astype(np.float32),
    'length': rng.integers(1, 7, (1, 8)).astype(np.int32),
    'label': rng.integers(0, 3, (1, 8)).astype(np.int32),
    'mask': np.ones((1, 8), np.float32),
    'index': np.arange(8, dtype=np.int32)[None],
  }

  def trained(config, state=None):
    tx = optimizers.create(config, total_steps=10)
    mesh = parallel.make_mesh(jax.devices()[:1])
    graphdef, fresh = steps_lib.create_train_state(config, info, tx, mesh)
    state = fresh if state is None else state.replace(opt_state=tx.init(state.params))
    step = functools.partial(
      steps_lib.train_step,
      graphdef=graphdef,
      tx=tx,
      config=config,
      info=info,
      axis=parallel.DataAxis(1),
    )
    mapped = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(None, 0), out_axes=None)
    for _ in range(2):
      state, sums = mapped(state, batch)
    return graphdef, fresh, state, sums

  config = configs.base()
  config.model, config.optimizer, config.learning_rate = 'rnn', 'adamw', 0.01
  config.mapping = 'pmap'  # the step below is pmapped by hand
  config.rnn.hidden_size, config.rnn.conv_filters, config.rnn.conv_kernels = 4, (5,), (3,)
  config.data.augment = False
  config.ensemble_size = 2
  graphdef, initial, together, sums = trained(config)
  assert sums['count'] == 8 and 0 <= sums['correct'] <= 8  # the ensemble's own prediction
  alone_config = config.copy_and_resolve_references()
  alone_config.ensemble_size = 1
  x, lengths = jnp.asarray(batch['sequence'][0]), jnp.asarray(batch['length'][0])
  alone_logits = []
  for member in range(2):
    own = lambda tree: jax.tree.map(lambda x: x[member], tree['members'])  # noqa: B023
    first = initial.replace(params=own(initial.params), model_state=own(initial.model_state))
    alone_graphdef, _, alone, _ = trained(alone_config, first)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a[member], b, rtol=2e-5, atol=2e-6),
      together.params['members'],
      alone.params,
    )
    assert jax.tree.leaves(alone.model_state)  # BatchNorm's statistics
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a[member], b, rtol=2e-5, atol=2e-6),
      together.model_state['members'],
      alone.model_state,
    )
    model = nnx.merge(alone_graphdef, alone.params, alone.model_state)
    alone_logits.append(model(x, lengths, train=False))
  ensemble = nnx.merge(graphdef, together.params, together.model_state)
  np.testing.assert_allclose(
    ensemble(x, lengths, train=False),
    average_probabilities(jnp.stack(alone_logits)),
    rtol=1e-4,
    atol=1e-5,
  )


def test_families_that_reach_into_the_model_refuse_ensembles():
  from dlearn import configs
  from dlearn.models import create_model

  config = configs.base()
  config.model, config.ensemble_size = 'fast_cnn', 2
  with pytest.raises(ValueError, match='trains no ensembles'):
    create_model(config, num_classes=10, input_shape=(32, 32, 3), axis_name=None, seed=0)
