"""Model registry: a config's `model` name → its `ModelFamily` (dlearn/models/family.py).

Register a new model with `register(name, family)`; the trainer, evaluation and the commands then
take `--config.model=name` with no other change.
"""

from __future__ import annotations

from flax import nnx

from dlearn.models import cnn, fast_cnn, rnn
from dlearn.models.family import ModelFamily

_FAMILIES: dict[str, ModelFamily] = {
  'seed_dcnn': cnn.SeedDCNNFamily(),
  'resnet': cnn.ResNetFamily(),
  'rnn': rnn.RNNFamily(),
  'fast_cnn': fast_cnn.FastCNNFamily(),
}


def register(name: str, family: ModelFamily) -> None:
  """Makes `config.model=name` build and train `family`'s model."""
  _FAMILIES[name] = family


def names() -> tuple[str, ...]:
  return tuple(_FAMILIES)


def family_of(config) -> ModelFamily:
  """The family of `config.model`, or a ValueError naming the known ones."""
  if config.model not in _FAMILIES:
    raise ValueError(f'Unknown config.model {config.model!r}: choose one of {names()}.')
  return _FAMILIES[config.model]


def create_model(
  config, *, num_classes: int, input_shape, axis_name: str | None, seed: int, space_axis=None
) -> nnx.Module:
  """`config.model` for one example of `input_shape` (as `family_of(config).input_shape` gives
  it), with parameters drawn from `seed`. With `space_axis` (config.partition.parts > 1) the model
  takes its part of every example over that mesh axis; call `check_partition` first. The
  parameters are the same either way."""
  return family_of(config).create(
    config,
    num_classes=num_classes,
    input_shape=tuple(input_shape),
    rngs=nnx.Rngs(seed),
    axis_name=axis_name,
    part_axis=space_axis,
  )
