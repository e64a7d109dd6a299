"""The time-partitioned, pipelined RNN equals the unpartitioned model: logits (on every device of the
time axis) and gradients, on 8 forced CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dlearn.models import rnn
from dlearn.models.pipelined_rnn import check_time_parts, pipelined_logits

T, F, CLASSES = 16, 3, 5


def _data(batch, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, T, F)).astype(np.float32)
  lengths = rng.integers(1, T + 1, size=batch)
  lengths[:3] = [1, T, T // 2 + 1]  # a length-1 sequence, a full one, one ending inside a chunk
  for i, n in enumerate(lengths):
    x[i, n:] = 1e3 * rng.normal(size=x[i, n:].shape)  # loud garbage in the padding
  labels = rng.integers(0, CLASSES, size=batch)
  return jnp.asarray(x), jnp.asarray(lengths), jnp.asarray(labels)


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _reference(model, x, lengths, labels):
  """The unpartitioned model's logits and gradients, on one device (jitted: faster than eager)."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(x, lengths)
      return _loss(logits, labels), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return logits, grads

  return run(params)


def _pipelined(model, x, lengths, labels, *, data, parts, micro_batches):
  """Runs on a (data × time) mesh as the trainer would: batches laid out [data devices,
  per-device batch, ...], sequences split over 'batch' and 'time', lengths and labels over 'batch',
  parameters replicated; gradients pmean-ed over both axes. Returns every time device's copy of the
  logits [parts, batch, classes] and the gradients."""
  mesh = Mesh(np.asarray(jax.devices()[: data * parts]).reshape(data, parts), ('batch', 'time'))
  graphdef, params = nnx.split(model)
  x, lengths, labels = (a.reshape((data, -1) + a.shape[1:]) for a in (x, lengths, labels))

  def body(params, x, lengths, labels):
    x, lengths, labels = x[0], lengths[0], labels[0]  # this device's [1, ...] block

    def loss_fn(params):
      logits = pipelined_logits(
        nnx.merge(graphdef, params), x, lengths, time_axis='time', micro_batches=micro_batches
      )
      return _loss(logits, labels), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return logits[None], jax.lax.pmean(grads, ('batch', 'time'))

  mapped = jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P(), P('batch', None, 'time', None), P('batch', None), P('batch', None)),
    out_specs=(P('time', 'batch'), P()),
    check_vma=False,
  )
  return jax.jit(mapped)(params, x, lengths, labels)


def _assert_grads_close(grads, expected):
  for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize(
  'cell, parts, micro_batches, data, num_layers, bidirectional',
  [
    ('simple', 2, 1, 1, 1, False),
    ('lstm', 4, 2, 1, 1, False),
    pytest.param('gru', 8, 4, 1, 1, False, marks=pytest.mark.slow),
    pytest.param('lstm', 4, 3, 1, 1, False, marks=pytest.mark.slow),
    ('simple', 1, 2, 1, 1, False),  # one part: no pipeline, micro-batches in turn
    pytest.param(
      'gru', 4, 2, 2, 2, False, marks=pytest.mark.slow
    ),  # data × time mesh, stacked layers
    pytest.param('lstm', 4, 2, 2, 2, True, marks=pytest.mark.slow),  # bidirectional, stacked
    ('simple', 8, 3, 1, 1, True),
  ],
)
def test_equals_unpartitioned(cell, parts, micro_batches, data, num_layers, bidirectional):
  model = rnn.RNNClassifier(
    CLASSES,
    F,
    rngs=nnx.Rngs(0),
    cell=cell,
    hidden_size=6,
    num_layers=num_layers,
    bidirectional=bidirectional,
  )
  x, lengths, labels = _data(data * micro_batches * (2 if micro_batches > 1 else 4))
  expected_logits, expected_grads = _reference(model, x, lengths, labels)
  logits, grads = _pipelined(
    model, x, lengths, labels, data=data, parts=parts, micro_batches=micro_batches
  )
  assert logits.shape == (parts,) + expected_logits.shape
  for copy in logits:  # the same logits on every device of the time axis
    np.testing.assert_allclose(copy, expected_logits, rtol=1e-5, atol=1e-5)
  _assert_grads_close(grads, expected_grads)


def test_sequence_length_must_divide():
  with pytest.raises(
    ValueError,
    match=r'sequence length 30 is not a multiple of the 4 time parts'
    r'.*config.data.max_length, e.g. 32',
  ):
    check_time_parts(30, 4, 1, 8)


def test_batch_must_divide_into_micro_batches():
  with pytest.raises(ValueError, match='per-device batch 8 is not a multiple of the 3 micro'):
    check_time_parts(32, 4, 3, 8)
  with pytest.raises(ValueError, match='must be ≥ 1'):
    check_time_parts(32, 0, 1, 8)


def test_pipelined_logits_checks_when_traced():
  model = rnn.RNNClassifier(CLASSES, F, rngs=nnx.Rngs(0), cell='simple', hidden_size=4)
  x, lengths, labels = _data(4)
  with pytest.raises(ValueError, match='per-device batch 4 is not a multiple of the 3 micro'):
    _pipelined(model, x, lengths, labels, data=1, parts=2, micro_batches=3)
