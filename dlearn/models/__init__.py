"""Model registry: a config's `model` name → its `ModelFamily` (dlearn/models/family.py).

Register a new model with `register(name, family)`; the trainer, evaluation and the commands then
take `--config.model=name` with no other change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dlearn.errors import ConfigError
from dlearn.models import cnn, fast_cnn, imagenet_resnet, rnn, rocket, vit, weighted_ensemble
from dlearn.models.family import ModelFamily

_FAMILIES: dict[str, ModelFamily] = {
  'seed_dcnn': cnn.SeedDCNNFamily(),
  'resnet': cnn.ResNetFamily(),
  'rnn': rnn.RNNFamily(),
  'fast_cnn': fast_cnn.FastCNNFamily(),
  'resnet50': imagenet_resnet.ImageNetResNetFamily(),
  'vit': vit.ViTFamily(),
  'rocket': rocket.RocketFamily(),
  'weighted_ensemble': weighted_ensemble.WeightedEnsembleFamily(),
}


def register(name: str, family: ModelFamily) -> None:
  """Makes `config.model=name` build and train `family`'s model."""
  _FAMILIES[name] = family


def names() -> tuple[str, ...]:
  return tuple(_FAMILIES)


def family_of(config) -> ModelFamily:
  """The family of `config.model`, or a ValueError naming the known ones."""
  if config.model not in _FAMILIES:
    raise ConfigError(f'Unknown config.model {config.model!r}: choose one of {names()}.')
  return _FAMILIES[config.model]


def create_model(
  config, *, num_classes: int, input_shape, axis_name: str | None, seed: int, space_axis=None
) -> nnx.Module:
  """`config.model` for one example of `input_shape` (as `family_of(config).input_shape` gives
  it), with parameters drawn from `seed`. With `space_axis` (config.partition.parts > 1) the model
  takes its part of every example over that mesh axis; call `check_partition` first. The
  parameters are the same either way."""
  family = family_of(config)

  def make(rngs):
    return family.create(
      config,
      num_classes=num_classes,
      input_shape=tuple(input_shape),
      rngs=rngs,
      axis_name=axis_name,
      part_axis=space_axis,
    )

  if config.ensemble_size <= 1:
    return make(nnx.Rngs(seed))
  if not family.ensembles or space_axis is not None:
    raise ConfigError(
      f'config.ensemble_size={config.ensemble_size}: config.model={config.model!r} '
      + ('trains no ensembles' if not family.ensembles else 'with config.partition.parts > 1')
      + '; set config.ensemble_size=1.'
    )
  return Ensemble(make, config.ensemble_size, nnx.Rngs(seed))


class Ensemble(nnx.Module):
  """`size` models of one architecture, each from its own draw of parameters, trained at once: one
  compiled step runs all of them (their parameters and statistics stacked on a leading axis).
  Training returns every member's logits, [size, batch, classes], and each member minimises its own
  loss (the losses are summed: no member's gradient touches another's parameters). Evaluation
  returns the log of the members' averaged probabilities, [batch, classes]."""

  def __init__(self, make, size: int, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=size)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def members(rngs):
      return make(rngs)

    self.members, self.size = members(rngs), size

  # Backends that run the members one after another in the compiled step rather than vmapped. On
  # XLA's CPU backend vmap makes each convolution after the first a grouped one, which it runs
  # slowly (experiments/benchmarks/ensemble_step.py measures both; README, "Results"). The
  # results are the same either way.
  in_turn_backends = ('cpu',)

  def __call__(self, *inputs, train: bool = False):
    if jax.default_backend() in self.in_turn_backends:
      logits = self._in_turn(inputs, train)
    else:

      @nnx.vmap(in_axes=(0,) + (None,) * len(inputs), out_axes=0)
      def each(member, *inputs):
        return member(*inputs, train=train)

      logits = each(self.members, *inputs)
    if train:
      return logits
    return average_probabilities(logits)

  def _in_turn(self, inputs, train):
    """Every member's logits [size, ...], one member at a time (a Python loop: lax.map's loop
    was slower still), each member's updated statistics written back to its slice."""
    graphdef, stacked = nnx.split(self.members)
    logits, states = [], []
    for i in range(self.size):
      member = nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf[i], stacked))
      logits.append(member(*inputs, train=train))
      states.append(nnx.state(member))
    nnx.update(self.members, jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))
    return jnp.stack(logits)


def average_probabilities(member_logits):
  """log of the mean over the leading (member) axis of the softmax probabilities."""
  probabilities = jax.nn.softmax(member_logits.astype(jnp.float32), axis=-1)
  return jnp.log(jnp.mean(probabilities, axis=0))
