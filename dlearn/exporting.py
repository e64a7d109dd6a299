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
from dlearn.data import image_codec, pipeline


def exported_function(workdir: str, data_dir: str | None = None, overrides: dict | None = None):
  """(f, argument specs with a symbolic batch size, class names): f is the whole inference of the
  newest checkpoint in `workdir`, preprocessing included, parameters as constants. Images: uint8
  [batch, height, width, channels] → probabilities [batch, classes], at the trained size or, for a
  model trained on encoded images, at any one size per call (evaluation's centre crop inside). Sequences: raw float32
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
  # One scope for every symbolic size: the batch, and the image sides of encoded-store models.
  batch, height, width = jax.export.symbolic_shape('batch, height, width')

  def probabilities(*arrays):
    size = arrays[0].shape[0]
    batch = {
      'label': jnp.zeros(size, jnp.int32),
      'mask': jnp.ones(size, jnp.float32),
      'index': jnp.zeros(size, jnp.int32),
    }
    if info.kind == 'image':
      batch['image'] = arrays[0] if info.transform is None else center_crop(arrays[0], info)
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

  if info.kind == 'image' and info.transform is not None:
    specs = (jax.ShapeDtypeStruct((batch, height, width, info.example_shape[-1]), jnp.uint8),)
  elif info.kind == 'image':
    specs = (jax.ShapeDtypeStruct((batch, *info.example_shape), jnp.uint8),)
  else:
    specs = (
      jax.ShapeDtypeStruct((batch, *info.example_shape), jnp.float32),
      jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
  return probabilities, specs, info.class_names


def center_crop(images, info):
  """Evaluation's transform of encoded images (`image_codec.ImageTransform.evaluate`) on decoded
  uint8 images [batch, height, width, channels] of any one size: the centre box, resized by area
  interpolation to the model's size, as matrices over each axis."""
  size = info.transform.size
  height, width = (jnp.asarray(d, jnp.float32) for d in images.shape[1:3])
  box = image_codec.center_box(height, width, size, info.transform.center_fraction, jnp)
  top, left, bottom, right = image_codec.pixel_box(box, height, width, jnp)
  rows = image_codec.resize_weights(jnp, images.shape[1], size[0], top, bottom)
  columns = image_codec.resize_weights(jnp, images.shape[2], size[1], left, right)
  resized = jnp.einsum('oh,bhwc,pw->bopc', rows, images.astype(jnp.float32), columns)
  return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


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
