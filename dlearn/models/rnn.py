"""Recurrent sequence classifiers: the article's Elman cell, LSTM and GRU, stacked, optionally
bidirectional, over padded sequences with lengths.

Padding never changes the output: each layer's final state is taken at the sequence's own last step
(`seq_lengths`), a backward layer reverses only the valid part of each sequence, and a step past the
end of a sequence never feeds a step before it.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

# 'simple' is the article's Elman cell: h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h).
CELLS = {'simple': nnx.SimpleCell, 'lstm': nnx.OptimizedLSTMCell, 'gru': nnx.GRUCell}


def _zero_carry(cell: str, inputs, hidden_size: int, dtype):
  # Given explicitly: the cells' own carry initialisers ask for an RNG stream, which would add RNG
  # state to a model that draws no randomness. Made `like` the inputs so that under shard_map the
  # carry varies over the device axis as the inputs do (scan needs matching carry types).
  h = jnp.zeros_like(inputs, dtype=dtype, shape=(inputs.shape[0], hidden_size))
  return (h, h) if cell == 'lstm' else h


def _hidden_state(carry):
  """The hidden state h of a cell's carry (an LSTM carries (c, h))."""
  return carry[1] if isinstance(carry, tuple) else carry


class RNNClassifier(nnx.Module):
  """Stacked (bi)directional RNN; the classifier reads the last layer's final hidden state:
  y = W_hy h + b_y."""

  def __init__(self, num_classes: int, num_features: int, *, rngs: nnx.Rngs, cell: str = 'lstm',
               hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False,
               unroll: int = 1, dtype=jnp.float32):
    if cell not in CELLS:
      raise ValueError(f'Unknown RNN cell {cell!r}: choose one of {sorted(CELLS)}.')
    make_cell = lambda size: CELLS[cell](size, hidden_size, dtype=dtype, rngs=rngs)
    directions = 2 if bidirectional else 1
    layers = []
    for layer in range(num_layers):
      size = num_features if layer == 0 else hidden_size * directions
      # rngs=False: these layers draw no randomness, so they keep no RNG state.
      forward = nnx.RNN(make_cell(size), return_carry=True, unroll=unroll, rngs=False)
      if bidirectional:
        backward = nnx.RNN(make_cell(size), return_carry=True, reverse=True, keep_order=True,
                           unroll=unroll, rngs=False)
        layers.append(nnx.Bidirectional(forward, backward, return_carry=True, rngs=False))
      else:
        layers.append(forward)
    self.layers = nnx.List(layers)
    self.cell, self.hidden_size, self.bidirectional, self.dtype = (
        cell, hidden_size, bidirectional, dtype)
    self.head = nnx.Linear(hidden_size * directions, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, lengths, *, train: bool = False):
    """x: [batch, time, features]; lengths: [batch] number of valid steps (≥ 1)."""
    del train
    initial_carry = _zero_carry(self.cell, x, self.hidden_size, self.dtype)
    if self.bidirectional:
      initial_carry = (initial_carry, initial_carry)
    for layer in self.layers:
      carry, x = layer(x, initial_carry=initial_carry, seq_lengths=lengths)
    if self.bidirectional:
      forward_carry, backward_carry = carry
      hidden = jnp.concatenate([_hidden_state(forward_carry), _hidden_state(backward_carry)], -1)
    else:
      hidden = _hidden_state(carry)
    return self.head(hidden)
