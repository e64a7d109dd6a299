"""Recurrent sequence classifiers: the article's Elman cell, LSTM and GRU, stacked, optionally
bidirectional, over padded sequences with lengths; optionally beside a convolutional branch over
time (LSTM-FCN, Karim et al. 2017), or the convolutions alone (FCN, Wang et al. 2017).

Padding never changes the output: each layer's final state is taken at the sequence's own last step
(`seq_lengths`), a backward layer reverses only the valid part of each sequence, and a step past the
end of a sequence never feeds a step before it. The convolutions zero the steps past the end after
every block and leave them out of BatchNorm's statistics and of the average over time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import rnn as jax_rnn

from dlearn.errors import ConfigError
from dlearn.models.family import ModelFamily, compute_dtype, image_inputs, own_part

# 'simple' is the article's Elman cell: h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h).
CELLS = {'simple': nnx.SimpleCell, 'lstm': nnx.OptimizedLSTMCell, 'gru': nnx.GRUCell}
# 'scan': the cells stepped by lax.scan, on any device. 'cudnn': the whole LSTM stack in one call of
# JAX's cuDNN kernel (jax.experimental.rnn) on a GPU, from the same parameters; elsewhere JAX's
# reference implementation of that kernel runs instead, which is how the CPU tests check it.
IMPLEMENTATIONS = ('scan', 'cudnn')


def zero_carry(cell: str, inputs, hidden_size: int, dtype):
  # Given explicitly: the cells' own carry initialisers ask for an RNG stream, which would add RNG
  # state to a model that draws no randomness. Made `like` the inputs so that under shard_map the
  # carry varies over the device axis as the inputs do (scan needs matching carry types).
  h = jnp.zeros_like(inputs, dtype=dtype, shape=(inputs.shape[0], hidden_size))
  return (h, h) if cell == 'lstm' else h


def hidden_state(carry):
  """The hidden state h of a cell's carry (an LSTM carries (c, h))."""
  return carry[1] if isinstance(carry, tuple) else carry


class TemporalConvs(nnx.Module):
  """The FCN branch: blocks of (convolution over time, BatchNorm, ReLU), then the average over each
  sequence's valid steps. Steps past a sequence's end are zeroed after every block, which is what
  'SAME' zero padding of the unpadded sequence gives, so padding changes nothing."""

  def __init__(self, num_features, filters, kernels, *, axis_name, dtype, rngs: nnx.Rngs):
    if len(filters) != len(kernels):
      raise ConfigError(
        f'config.rnn.conv_filters={tuple(filters)} and config.rnn.conv_kernels={tuple(kernels)} '
        'need one kernel size per convolution.'
      )
    convs, norms, size = [], [], num_features
    for width, kernel in zip(filters, kernels):
      # No bias: BatchNorm's follows. Statistics over every device's batch (axis_name), as ResNet.
      convs.append(nnx.Conv(size, width, (kernel,), use_bias=False, dtype=dtype, rngs=rngs))
      norms.append(nnx.BatchNorm(width, momentum=0.9, axis_name=axis_name, dtype=dtype, rngs=rngs))
      size = width
    self.convs, self.norms, self.num_outputs = nnx.List(convs), nnx.List(norms), size

  def __call__(self, x, lengths, *, train: bool):
    valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
    x = jnp.where(valid, x, 0)  # whatever the padding holds
    for conv, norm in zip(self.convs, self.norms):
      x = norm(conv(x), use_running_average=not train, mask=valid)
      x = jnp.where(valid, jax.nn.relu(x), 0)
    return jnp.sum(x, axis=1) / lengths[:, None].astype(x.dtype)


class RNNClassifier(nnx.Module):
  """Stacked (bi)directional RNN; the classifier reads the last layer's final hidden state:
  y = W_hy h + b_y. With `conv_filters`, the FCN branch's features are concatenated with h (no
  recurrent layers at all when `num_layers` is 0)."""

  def __init__(
    self,
    num_classes: int,
    num_features: int,
    *,
    rngs: nnx.Rngs,
    cell: str = 'lstm',
    hidden_size: int = 128,
    num_layers: int = 1,
    bidirectional: bool = False,
    unroll: int = 1,
    implementation: str = 'scan',
    conv_filters=(),
    conv_kernels=(),
    axis_name=None,
    dtype=jnp.float32,
  ):
    if not num_layers and not conv_filters:
      raise ConfigError(
        'config.rnn.num_layers=0 needs config.rnn.conv_filters (a model needs a layer).'
      )
    if cell not in CELLS:
      raise ConfigError(f'Unknown RNN cell {cell!r}: choose one of {sorted(CELLS)}.')
    if implementation not in IMPLEMENTATIONS:
      raise ConfigError(
        f'Unknown config.rnn.implementation {implementation!r}: choose one of {IMPLEMENTATIONS}.'
      )
    if implementation == 'cudnn' and (cell != 'lstm' or jnp.dtype(dtype) != jnp.float32):
      raise ConfigError(
        f"config.rnn.implementation='cudnn' runs LSTMs in float32 only (JAX's cuDNN "
        f'kernel); got cell={cell!r}, dtype={jnp.dtype(dtype).name}. Use '
        "implementation='scan'."
      )
    make_cell = lambda size: CELLS[cell](size, hidden_size, dtype=dtype, rngs=rngs)
    directions = 2 if bidirectional else 1
    layers = []
    for layer in range(num_layers):
      size = num_features if layer == 0 else hidden_size * directions
      # rngs=False: these layers draw no randomness, so they keep no RNG state.
      forward = nnx.RNN(make_cell(size), return_carry=True, unroll=unroll, rngs=False)
      if bidirectional:
        backward = nnx.RNN(
          make_cell(size),
          return_carry=True,
          reverse=True,
          keep_order=True,
          unroll=unroll,
          rngs=False,
        )
        layers.append(nnx.Bidirectional(forward, backward, return_carry=True, rngs=False))
      else:
        layers.append(forward)
    self.layers = nnx.List(layers)
    self.cell, self.hidden_size, self.bidirectional, self.dtype = (
      cell,
      hidden_size,
      bidirectional,
      dtype,
    )
    self.num_features, self.implementation = num_features, implementation
    self.convs = (
      TemporalConvs(
        num_features, conv_filters, conv_kernels, axis_name=axis_name, dtype=dtype, rngs=rngs
      )
      if conv_filters
      else None
    )
    head_inputs = (hidden_size * directions if num_layers else 0) + (
      self.convs.num_outputs if self.convs else 0
    )
    self.head = nnx.Linear(head_inputs, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, lengths, *, train: bool = False):
    """x: [batch, time, features]; lengths: [batch] number of valid steps (≥ 1)."""
    features = []
    if len(self.layers):
      rnn = self._cudnn_lstm if self.implementation == 'cudnn' else self._rnn
      features.append(rnn(x, lengths))
    if self.convs is not None:
      features.append(self.convs(x, lengths, train=train).astype(self.dtype))
    return self.head(jnp.concatenate(features, axis=-1))

  def _rnn(self, x, lengths):
    """The last layer's final hidden state (both directions'), by lax.scan."""
    initial_carry = zero_carry(self.cell, x, self.hidden_size, self.dtype)
    if self.bidirectional:
      initial_carry = (initial_carry, initial_carry)
    for layer in self.layers:
      carry, x = layer(x, initial_carry=initial_carry, seq_lengths=lengths)
    if self.bidirectional:
      forward_carry, backward_carry = carry
      return jnp.concatenate([hidden_state(forward_carry), hidden_state(backward_carry)], -1)
    return hidden_state(carry)

  def _cudnn_lstm(self, x, lengths):
    """The final hidden state of the LSTM stack, by JAX's cuDNN kernel. The cells' parameters are
    packed into cuDNN's flat weight vector (gates i, f, g, o in both; flax keeps one bias, cuDNN
    two, so its input bias is zero) on every call, so gradients reach the same parameters."""
    cells = []
    for layer in self.layers:
      cells += (
        [layer.forward_rnn.cell, layer.backward_rnn.cell] if self.bidirectional else [layer.cell]
      )
    hidden = self.hidden_size
    kernels = [
      m for cell in cells for m in (cell.dense_i.kernel[...].T, cell.dense_h.kernel[...].T)
    ]
    biases = [
      b for cell in cells for b in (jnp.zeros((4 * hidden,), jnp.float32), cell.dense_h.bias[...])
    ]
    weights = jnp.concatenate([w.reshape(-1) for w in kernels + biases])
    zeros = jnp.zeros((len(cells), x.shape[0], hidden), jnp.float32)
    shape = dict(
      input_size=self.num_features,
      hidden_size=hidden,
      num_layers=len(self.layers),
      dropout=0.0,
      bidirectional=self.bidirectional,
    )
    lengths = lengths.astype(jnp.int32)
    if jax.default_backend() == 'gpu':
      _, h_n, _ = jax_rnn.lstm(x, zeros, zeros, weights, lengths, **shape)
    else:
      unpacked = jax_rnn.unpack_lstm_weights(
        weights, shape['input_size'], hidden, shape['num_layers'], self.bidirectional
      )
      _, h_n, _ = jax_rnn.lstm_ref(x, zeros, zeros, *unpacked, lengths, *shape.values())
    return jnp.concatenate([h_n[-2], h_n[-1]], -1) if self.bidirectional else h_n[-1]


class RNNFamily(ModelFamily):
  """`RNNClassifier` on sequences, or on images read as sequences of rows (32x32x3 → 32 steps of
  96 features). Splits sequences into time chunks run as a pipeline (dlearn/models/
  pipelined_rnn.py, imported where used: it builds on this module)."""

  kinds = ('image', 'sequence')

  def input_shape(self, config, info):
    shape = super().input_shape(config, info)
    if info.kind == 'image':
      height, width, channels = shape
      return (height, width * channels)
    return shape

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del part_axis  # the pipeline runs the unpartitioned module
    return RNNClassifier(
      num_classes,
      input_shape[-1],
      rngs=rngs,
      cell=config.rnn.cell,
      hidden_size=config.rnn.hidden_size,
      num_layers=config.rnn.num_layers,
      bidirectional=config.rnn.bidirectional,
      unroll=config.rnn.unroll,
      implementation=config.rnn.implementation,
      conv_filters=tuple(config.rnn.conv_filters),
      conv_kernels=tuple(config.rnn.conv_kernels),
      axis_name=axis_name,
      dtype=compute_dtype(config),
    )

  def inputs(self, batch, config, info, *, rng, run_rng, train: bool, epoch):
    if info.kind == 'sequence':
      return super().inputs(batch, config, info, rng=rng, run_rng=run_rng, train=train, epoch=epoch)
    images = image_inputs(batch['image'], config, info, rng, train)
    batch_size, height = images.shape[:2]
    return images.reshape(batch_size, height, -1), jnp.full((batch_size,), height, jnp.int32)

  def check_partition(self, config, input_shape, parts: int, per_device_batches: dict) -> None:
    if parts == 1:
      return
    if config.rnn.conv_filters or not config.rnn.num_layers:
      raise ConfigError(
        f'config.partition.parts={parts} pipelines the recurrent layers over time chunks; the '
        f'convolutional branch (config.rnn.conv_filters={tuple(config.rnn.conv_filters)}) needs '
        'the whole sequence: use config.partition.parts=1, or no convolutions.'
      )
    from dlearn.models import pipelined_rnn

    micro_batches = config.partition.micro_batches
    for what, per_device_batch in per_device_batches.items():
      try:
        pipelined_rnn.check_time_parts(input_shape[0], parts, micro_batches, per_device_batch)
      except ValueError as e:
        raise ConfigError(
          f'config.partition (parts={parts}, micro_batches={micro_batches}), '
          f'config.{what}={config[what]}: {e}'
        ) from e

  def logits(self, model, inputs, config, *, train: bool):
    parts = config.partition.parts
    if parts == 1:
      return model(*inputs, train=train)
    from dlearn.models import pipelined_rnn
    from dlearn.parallel import PART_AXIS

    x, lengths = inputs
    return pipelined_rnn.pipelined_logits(
      model,
      own_part(x, parts),
      lengths,
      time_axis=PART_AXIS,
      micro_batches=config.partition.micro_batches,
    )
