"""Trained models of different kinds as one model (`config.model='weighted_ensemble'`, section
`config.weighted_ensemble`): HIVE-COTE 2's way of combining its members (CAWPE, Large, Lines and
Bagnall 2019): each member's class probabilities weighted by its cross-validated accuracy on the
training data raised to a power (4), summed and normalised.

`dlearn.ensemble` trains the members, cross-validates them and writes the config: per member its
name, its whole config (as config.json holds it), its work directory and its weight. The members'
trained state is read from their work directories when the ensemble's run starts
(`init_from_data`) and is then in the ensemble's own checkpoint, so evaluate, predict and export
read the ensemble's work directory alone.

The members read one input: sequences standardised by the train split's statistics (the
ensemble's config.data.standardize='train_split'). A member trained on each case standardised by
its own mean and deviation gets exactly that here, since standardising each case undoes any
per-channel scale and shift first.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dlearn import configs
from dlearn.data import pipeline
from dlearn.errors import ConfigError
from dlearn.models import family
from dlearn.models.family import ModelFamily

DEFAULTS = ml_collections.ConfigDict(
  {'names': (), 'members': (), 'workdirs': (), 'weights': (), 'power': 4.0}
)


def settings(config) -> ml_collections.ConfigDict:
  s = family.section(config, 'weighted_ensemble', DEFAULTS)
  if not s.members or not (len(s.names) == len(s.members) == len(s.workdirs) == len(s.weights)):
    raise ConfigError(
      'config.weighted_ensemble needs one name, config, work directory and weight per member: '
      'make the ensemble with `python -m dlearn.ensemble`.'
    )
  return s


def member_configs(config) -> list[ml_collections.ConfigDict]:
  return [configs.from_dict(json.loads(text)) for text in settings(config).members]


def cawpe_weights(accuracies, power: float = 4.0) -> np.ndarray:
  """Each member's weight: its cross-validated accuracy to the `power` (CAWPE's alpha); all
  alike where every member's is 0 (one example a class: no fold's training saw the class it held
  out), which tells no member above another."""
  weights = np.asarray(accuracies, np.float64) ** power
  return weights if weights.sum() > 0 else np.ones_like(weights)


def combined(weights, probabilities):
  """The ensemble's class probabilities: its members' (NumPy or JAX arrays, one per member)
  weighted by `weights` (`cawpe_weights`), summing to 1 as each member's do."""
  return sum(w * p for w, p in zip(weights, probabilities)) / sum(weights)


class WeightedEnsemble(nnx.Module):
  def __init__(self, members, member_settings, weights, each_case):
    self.members = nnx.List(members)
    self.member_settings = member_settings  # (family, config) per member: static
    self.weights = tuple(float(w) for w in weights)
    self.each_case = tuple(each_case)  # per member: standardise each case on its own

  def __call__(self, sequences, lengths, train: bool = False):
    del train  # the members are trained already
    valid = jnp.arange(sequences.shape[1])[None, :, None] < lengths[:, None, None]
    own = pipeline.DatasetInfo('', 'sequence', sequences.shape[1:], 0, (), standardize='each_case')
    members = []
    for member, (member_family, member_config), each_case in zip(
      self.members, self.member_settings, self.each_case
    ):
      x = jnp.where(valid, pipeline.standardize(sequences, own, valid), 0.0) if each_case else sequences  # fmt: skip
      members.append(member_family.probabilities(member, (x, lengths), member_config))
    probabilities = combined(self.weights, members)
    return jnp.log(jnp.maximum(probabilities, jnp.finfo(jnp.float32).tiny))


class WeightedEnsembleFamily(ModelFamily):
  kinds = ('sequence',)
  ensembles = False

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del part_axis
    from dlearn import models  # the registry imports this module

    s = settings(config)
    members, member_settings, each_case = [], [], []
    for member_config in member_configs(config):
      members.append(
        models.create_model(
          member_config,
          num_classes=num_classes,
          input_shape=input_shape,
          axis_name=axis_name,
          seed=member_config.seed,
        )
      )
      # frozen: a module's static attributes are hashed with its structure
      member_settings.append((models.family_of(member_config), ml_collections.FrozenConfigDict(member_config)))  # fmt: skip
      standardize = pipeline.resolved_standardize(member_config.data.standardize, input_shape[-1])
      each_case.append(standardize == 'each_case')
    del rngs  # every parameter comes from the members' checkpoints
    return WeightedEnsemble(members, tuple(member_settings), s.weights, each_case)

  def init_from_data(self, model, config, source, info) -> None:
    """Each member's trained state, from its work directory's newest checkpoint."""
    del source
    from dlearn import parallel, runs

    s = settings(config)
    mesh = parallel.make_mesh()
    for member, member_config, workdir in zip(model.members, member_configs(config), s.workdirs):
      graphdef, state = runs.restore_for_evaluation(workdir, member_config, info, mesh)
      trained = nnx.merge(graphdef, state.params, state.model_state)
      nnx.update(member, jax.device_get(nnx.state(trained)))
