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
