"""Export: a work directory's newest checkpoint as one self-contained `jax.export` artifact, the
whole inference (preprocessing included) with the parameters as constants, that runs with `jax`
and `numpy` alone. The library behind `dlearn.export`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from dlearn import evaluation, steps
from dlearn.data import pipeline


def exported_function(workdir: str, data_dir: str | None = None, overrides: dict | None = None):
  """(f, argument specs with a symbolic batch size, class names): f is the whole inference of the
  newest checkpoint in `workdir`, preprocessing included, parameters as constants. Images: uint8
  [batch, height, width, channels] → probabilities [batch, classes]. Sequences: raw float32
  [batch, time, channels] (time: the trained max_length; values past a case's length are
  ignored) and int32 lengths [batch] → probabilities."""
  restored = evaluation.restore_workdir(
    workdir,
    data_dir=data_dir,
    overrides={**(overrides or {}), 'partition.parts': 1},
    devices=jax.local_devices(),
  )
  config, info, graphdef = restored.config, restored.info, restored.graphdef
  # Each array to the host from the devices that hold its shards (an 'fsdp' state is never whole
  # on one device); the artifact holds them as constants.
  params, model_state = jax.device_get((restored.state.params, restored.state.model_state))
  (batch,) = jax.export.symbolic_shape('batch')

  def probabilities(*arrays):
    size = arrays[0].shape[0]
    batch = {
      'label': jnp.zeros(size, jnp.int32),
      'mask': jnp.ones(size, jnp.float32),
      'index': jnp.zeros(size, jnp.int32),
    }
    if info.kind == 'image':
      batch['image'] = arrays[0]
    else:
      sequences, lengths = arrays
      # As `pipeline.example`: standardised, then zeros past each case's end.
      valid = jnp.arange(sequences.shape[1])[None, :, None] < lengths[:, None, None]
      batch['sequence'] = jnp.where(valid, pipeline.standardize(sequences, info, valid), 0.0)
      batch['length'] = lengths
    # The parameters as values of this trace (constants of the artifact): nnx's scan over
    # time (the RNNs) refuses arrays from outside the trace it runs in.
    traced = jax.tree.map(jnp.asarray, (params, model_state))
    logits = steps.eval_logits(*traced, batch, graphdef=graphdef, config=config, info=info)
    return jax.nn.softmax(logits, -1)

  if info.kind == 'image':
    specs = (jax.ShapeDtypeStruct((batch, *info.example_shape), jnp.uint8),)
  else:
    specs = (
      jax.ShapeDtypeStruct((batch, *info.example_shape), jnp.float32),
      jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
  return probabilities, specs, info.class_names


def export(
  workdir: str,
  output: str,
  *,
  data_dir: str | None = None,
  overrides: dict | None = None,
  platforms=('cpu', 'cuda'),
) -> str:
  """Writes `output/model.bin` (the serialized `jax.export` of `exported_function`, lowered for
  `platforms`) and `output/classes.json` (class names in label order); returns `output`. An
  existing `output` is refused, before any work."""
  if os.path.exists(output):
    raise FileExistsError(f'--output={output} already exists: name a new folder.')
  function, specs, class_names = exported_function(workdir, data_dir, overrides)
  exported = jax.export.export(jax.jit(function), platforms=platforms)(*specs)
  serialized = exported.serialize()
  os.makedirs(output)
  with open(os.path.join(output, 'model.bin'), 'wb') as f:
    f.write(serialized)
  with open(os.path.join(output, 'classes.json'), 'w') as f:
    json.dump(list(class_names), f)
  return output
