"""Model registry: a config's `model` name → a Flax NNX module."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from dlearn.models.cnn import ResNet, SeedDCNN
from dlearn.models.rnn import CELLS, RNNClassifier

MODELS = ('seed_dcnn', 'resnet', 'rnn')
DTYPES = ('float32', 'bfloat16')


def create_model(config, *, num_classes: int, input_shape, axis_name: str | None, seed: int):
  """Builds `config.model` for one example of `input_shape` ([H, W, C] images or [T, F]
  sequences) with parameters drawn from `seed`."""
  rngs = nnx.Rngs(seed)
  dtype = config.get('dtype', 'float32')
  if dtype not in DTYPES:
    raise ValueError(f'Unknown config.dtype {dtype!r}: choose one of {DTYPES}.')
  dtype = jnp.dtype(dtype)  # of the computation; parameters are float32 either way
  if config.model == 'seed_dcnn':
    return SeedDCNN(num_classes, input_shape, rngs=rngs, dtype=dtype)
  if config.model == 'resnet':
    return ResNet(num_classes, input_shape, rngs=rngs, stage_sizes=tuple(config.resnet.stage_sizes),
                  width=config.resnet.width, axis_name=axis_name, dtype=dtype)
  if config.model == 'rnn':
    return RNNClassifier(num_classes, input_shape[-1], rngs=rngs, cell=config.rnn.cell,
                         hidden_size=config.rnn.hidden_size, num_layers=config.rnn.num_layers,
                         bidirectional=config.rnn.bidirectional, unroll=config.rnn.unroll,
                         implementation=config.rnn.get('implementation', 'scan'), dtype=dtype)
  raise ValueError(f'Unknown config.model {config.model!r}: choose one of {MODELS}.')
