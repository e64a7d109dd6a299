"""Model registry: a config's `model` name → a Flax NNX module."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from dlearn.models import cnn
from dlearn.models.cnn import ResNet, SeedDCNN
from dlearn.models.rnn import RNNClassifier

MODELS = ('seed_dcnn', 'resnet', 'rnn')
DTYPES = ('float32', 'bfloat16')


def create_model(
  config,
  *,
  num_classes: int,
  input_shape,
  axis_name: str | None,
  seed: int,
  space_axis: str | None = None,
):
  """Builds `config.model` for one example of `input_shape` ([H, W, C] images or [T, F]
  sequences) with parameters drawn from `seed`. With `space_axis` (CNNs only), the model takes
  bands of image rows split over that mesh axis (see dlearn/models/cnn.py); call
  `check_spatial_parts` first. The parameters are the same either way."""
  rngs = nnx.Rngs(seed)
  dtype = config.get('dtype', 'float32')
  if dtype not in DTYPES:
    raise ValueError(f'Unknown config.dtype {dtype!r}: choose one of {DTYPES}.')
  dtype = jnp.dtype(dtype)  # of the computation; parameters are float32 either way
  if space_axis is not None and config.model not in ('seed_dcnn', 'resnet'):
    raise ValueError(
      f'Spatial partitioning is for the CNNs (seed_dcnn, resnet), not {config.model!r}.'
    )
  if config.model == 'seed_dcnn':
    return SeedDCNN(num_classes, input_shape, rngs=rngs, dtype=dtype, space_axis=space_axis)
  if config.model == 'resnet':
    return ResNet(
      num_classes,
      input_shape,
      rngs=rngs,
      stage_sizes=tuple(config.resnet.stage_sizes),
      width=config.resnet.width,
      axis_name=axis_name,
      dtype=dtype,
      space_axis=space_axis,
    )
  if config.model == 'rnn':
    return RNNClassifier(
      num_classes,
      input_shape[-1],
      rngs=rngs,
      cell=config.rnn.cell,
      hidden_size=config.rnn.hidden_size,
      num_layers=config.rnn.num_layers,
      bidirectional=config.rnn.bidirectional,
      unroll=config.rnn.unroll,
      implementation=config.rnn.get('implementation', 'scan'),
      dtype=dtype,
    )
  raise ValueError(f'Unknown config.model {config.model!r}: choose one of {MODELS}.')


def check_spatial_parts(config, input_shape, parts: int):
  """Raises a clear ValueError, before anything is compiled, unless `config.model` can split
  images of `input_shape` ([H, W, C]) into `parts` bands of rows (H a multiple of parts × the
  network's downsampling). One part is always fine."""
  if parts == 1:
    return
  stage_sizes = tuple(config.resnet.stage_sizes) if config.model == 'resnet' else ()
  cnn.check_spatial_parts(
    input_shape[0], parts, cnn.spatial_downsampling(config.model, stage_sizes), config.model
  )
