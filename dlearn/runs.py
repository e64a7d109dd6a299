"""Run management: the work directory, whether its checkpoints fit this config, and the train state
to start from (the newest checkpoint, `config.init_from`, or a fresh one), with the data position.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import jax
import numpy as np
from flax import nnx

from dlearn import checkpoint as checkpoint_lib
from dlearn import configs, models, optimizers, steps


class IncompatibleConfigError(checkpoint_lib.IncompatibleStateError):
  """The config gives the train state other arrays or shapes than the checkpoint's."""


def prepare(config, workdir: str):
  """Checks the work directory can be written, before any work that could be lost; with
  config.fresh, removes its checkpoints and metrics."""
  try:
    os.makedirs(os.path.join(workdir, 'checkpoints'), exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise checkpoint_lib.CheckpointWriteError(
      f'The work directory {workdir!r} cannot be written ({e}); choose a writable --workdir.'
    ) from e
  if config.fresh:
    for name in ('checkpoints', 'metrics.jsonl', 'tensorboard', 'final_metrics.json'):
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
    logging.warning('config.fresh: removed the checkpoints and metrics in %s.', workdir)


def write_config(config, workdir: str):
  """The resolved config as `workdir/config.json` (process 0), with an absolute data_dir so that
  evaluation from another folder finds the data."""
  if jax.process_index() != 0:
    return
  resolved = json.loads(config.to_json_best_effort())
  if config.data.data_dir:
    resolved['data']['data_dir'] = os.path.abspath(os.path.expanduser(config.data.data_dir))
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(resolved, f, indent=2)


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, (list, tuple)) else value
  return flat


def check_compatible(config, workdir: str, checkpointer, abstract_state):
  """Refuses to resume when the newest checkpoint's train state has other arrays or shapes than
  this config's (`abstract_state`), naming them and the config fields that differ from the run's
  config.json, or when the run trained on other examples (`SAME_DATA`). Nothing is read but
  metadata, and nothing is written."""
  shown = checkpoint_lib.shape_differences(
    checkpointer.state_shapes(checkpointer.latest_step()),
    checkpoint_lib.tree_shapes(abstract_state),
  )
  if not shown:
    check_same_examples(config, workdir)
    return
  fields = _differences(config, workdir)
  raise IncompatibleConfigError(
    f'{workdir} holds checkpoints of a differently shaped run; refusing to resume. Arrays of the '
    'train state (shape, dtype):\n'
    + '\n'.join(shown)
    + ('\nConfig fields that differ:\n' + '\n'.join(fields) if fields else '')
    + '\nUse another --workdir, or --config.fresh=True to discard its checkpoints.'
  )


# The fields that say which examples a run trains on: a checkpoint resumed with one of them
# changed would go on training on other examples (a cross-validation fold's model on cases it
# now holds out, a final model fitted on part of what it is asked to fit), so it is refused.
SAME_DATA = ('data.name', 'data.train_split', 'data.folds', 'data.fold', 'seed')


def check_same_examples(config, workdir: str) -> None:
  """Refuses when `workdir` holds checkpoints of a run on other examples than `config`'s
  (`SAME_DATA`), before any work (nothing where config.fresh discards them)."""
  directory = checkpoint_lib.directory(workdir)
  if config.fresh or not os.path.isdir(directory):
    return
  if not any(name.isdigit() for name in os.listdir(directory)):
    return
  if other := _differences(config, workdir, SAME_DATA):
    raise IncompatibleConfigError(
      f'{workdir} holds checkpoints of a run on other examples; refusing to resume it on '
      'these:\n' + '\n'.join(other) + '\nUse another --workdir, or --config.fresh=True to '
      'discard its checkpoints.'
    )


def _differences(config, workdir: str, keys=None) -> list[str]:
  """Lines naming the fields (all, or `keys`) of `config` that differ from the run's
  config.json (none without one)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    before = _flatten(json.loads(configs.from_dict(json.load(f)).to_json_best_effort()))
  current = _flatten(json.loads(config.to_json_best_effort()))
  return [
    f"  {key}: {before[key]!r} in the checkpoint's config, {current.get(key)!r} now"
    for key in (before if keys is None else keys)
    if key in before and before[key] != current.get(key)
  ]


def checkpointer(config, workdir: str, info, tx):
  """The work directory's Checkpointer, after checking that its newest checkpoint (if any) has
  the train state this config makes."""
  manager = checkpoint_lib.Checkpointer(
    workdir,
    max_to_keep=config.max_checkpoints_to_keep,
    best_metric=config.best_checkpoint_metric or None,
    best_mode='min' if config.best_checkpoint_metric == 'eval/loss' else 'max',
  )
  if manager.latest_step() is not None:
    _, abstract_state = steps.abstract_train_state(config, info, tx)
    check_compatible(config, workdir, manager, abstract_state)
  return manager


def restore_or_create(config, info, tx, mesh, checkpointer, data, source):
  """(graphdef, state) from the newest checkpoint in the work directory (with the data position
  restored), else from `config.init_from` (parameters only), else freshly initialised (with the
  family's data-dependent initialisation from the train split `source`); placed on `mesh` by
  config.sharding in every case."""
  latest = checkpointer.latest_step()
  if latest is not None:
    graphdef, abstract_state, shardings = steps.state_shardings(config, info, tx, mesh)
    state, position = checkpointer.restore(latest, abstract_state, shardings)
    data.restore(position)
    logging.info('Resumed from the checkpoint of step %d in %s.', latest, checkpointer.directory)
    return graphdef, state
  graphdef, state = steps.create_train_state(config, info, tx, mesh, source)
  if config.init_from.endswith('.npz'):
    return graphdef, _from_torch_weights(config, graphdef, state, info, tx, mesh)
  if config.init_from:
    initial = checkpoint_lib.Checkpointer(config.init_from, read_only=True)
    step = initial.latest_step()
    if step is None:
      raise FileNotFoundError(
        f'config.init_from={config.init_from!r} has no checkpoint: name the work directory of a '
        'finished run.'
      )
    _, abstract_state, shardings = steps.state_shardings(config, info, tx, mesh)
    restored, _ = initial.restore(step, abstract_state, shardings)
    initial.close()
    state = state.replace(params=restored.params, model_state=restored.model_state)
    logging.info('Initialised parameters from step %d of %s.', step, config.init_from)
  return graphdef, state


def _from_torch_weights(config, graphdef, state, info, tx, mesh):
  """The state with its parameters and statistics from the PyTorch state_dict in the .npz file
  config.init_from (`np.savez(path, **{k: v.numpy() for k, v in state_dict.items()})`), read by
  the family's `load_torch_state_dict`."""
  if not os.path.isfile(config.init_from):
    raise FileNotFoundError(
      f'config.init_from={config.init_from!r}: no such file; name a .npz of a PyTorch '
      'state_dict, or a work directory.'
    )
  with np.load(config.init_from) as arrays:
    state_dict = dict(arrays)
  # Writable host copies: the loader assigns into the model's arrays.
  model = nnx.merge(graphdef, *jax.tree.map(np.array, (state.params, state.model_state)))
  models.family_of(config).load_torch_state_dict(model, state_dict, config)
  _, _, shardings = steps.state_shardings(config, info, tx, mesh)
  params, model_state = nnx.state(model, nnx.Param, ...)
  logging.info('Initialised parameters from the PyTorch weights in %s.', config.init_from)
  return state.replace(
    params=jax.device_put(params, shardings.params),
    model_state=jax.device_put(model_state, shardings.model_state),
  )


def restore_for_evaluation(workdir: str, config, info, mesh):
  """(graphdef, state) of the newest checkpoint in `workdir`, placed on `mesh` by
  config.sharding (an 'fsdp' state stays split: nothing gathers it on one device)."""
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(
      f'No checkpoint in {checkpoint_lib.directory(workdir)}: train first, or name the work '
      'directory of a finished run (a cross-validation fold of a model fitted without steps, '
      "such as ROCKET's ridge, keeps none: its held-out probabilities are in held_out.npz)."
    )
  tx = optimizers.create(config, 1)
  graphdef, abstract_state, shardings = steps.state_shardings(config, info, tx, mesh)
  state, _ = checkpointer.restore(step, abstract_state, shardings)
  checkpointer.close()
  return graphdef, state
