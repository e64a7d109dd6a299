"""What the trainer asks of a model: the `ModelFamily` plug-in.

The trainer never names a model. It looks up `config.model` in the registry
(`dlearn.models.family_of`) and asks the family everything specific to it: the shape of one
example as the model sees it, the module itself, how a device's batch becomes the model's inputs
(augmentation included), which partition of examples over devices it can run and the checks before
compiling, how it runs partitioned, an initialisation computed from training data, and how it is
evaluated (test-time augmentation, ensembles). Adding a model is one module in `dlearn/models/`
with a `ModelFamily` subclass, one registry entry (`dlearn.models.register`) and one config.

Every method has the default that plain data parallelism on whole examples needs, so a family
overrides only what differs. Methods that run inside the compiled step (`inputs`, `logits`) are
traced once, for one device's batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from dlearn.data import augment
from dlearn.errors import ConfigError
from dlearn.parallel import PART_AXIS

DTYPES = ('float32', 'bfloat16')


def compute_dtype(config):
  """The dtype the model computes in (`config.dtype`); parameters stay float32 either way."""
  if config.dtype not in DTYPES:
    raise ConfigError(f'Unknown config.dtype {config.dtype!r}: choose one of {DTYPES}.')
  return jnp.dtype(config.dtype)


def image_inputs(images, config, info, rng, train: bool):
  """uint8 images [B, H, W, C] → normalised float32, randomly cropped and flipped when training
  with `config.data.augment` (the standard CIFAR augmentation, `dlearn.data.augment`) unless the
  host has augmented them already (encoded images: `info.transform`)."""
  if train and config.data.augment and info.transform is None:
    images = augment.random_crop_and_flip(rng, images, config.data.crop_padding)
  return augment.normalize(images, config.data.mean, config.data.std)


def sequence_inputs(sequences, lengths, config, rng, train: bool):
  """(sequences [B, T, C], lengths [B]), jittered, scaled and window-sliced when training with
  `config.data.augment` and the amounts `config.data.jitter`, `scaling`, `window_slice` set."""
  if train and config.data.augment:
    slice_key, scale_key, jitter_key = jax.random.split(rng, 3)
    if config.data.window_slice < 1:
      sequences, lengths = augment.window_slice(
        slice_key, sequences, lengths, config.data.window_slice
      )
    if config.data.scaling:
      sequences = augment.scaling(scale_key, sequences, config.data.scaling)
    if config.data.jitter:
      sequences = augment.jitter(jitter_key, sequences, lengths, config.data.jitter)
  return sequences, lengths


def section(config, name: str, defaults):
  """A plug-in model's config section `config.<name>` over its `defaults` (the section may be
  absent, as in a config written before it, or partial)."""
  merged = defaults.copy_and_resolve_references()
  merged.update(dict(config.get(name, {})))
  return merged


def own_part(x, parts: int):
  """This device's contiguous part of every example along axis 1 (rows of an image, time steps of
  a sequence), under config.partition.parts > 1."""
  size = x.shape[1] // parts
  return lax.dynamic_slice_in_dim(x, lax.axis_index(PART_AXIS) * size, size, axis=1)


class ModelFamily:
  """A kind of model, as the trainer sees it. Subclass, override what differs, register."""

  # The dataset kinds (`DatasetInfo.kind`) the family takes.
  kinds: tuple[str, ...] = ('image',)
  # Whether config.ensemble_size > 1 may wrap the model in `dlearn.models.Ensemble` (which calls
  # only the model itself: a family whose other methods reach into the model says False).
  ensembles: bool = True

  def input_shape(self, config, info) -> tuple[int, ...]:
    """One example's shape as the model takes it; refuses a dataset of another kind."""
    if info.kind not in self.kinds:
      raise ConfigError(
        f'config.model={config.model!r} takes {" or ".join(self.kinds)} datasets, but '
        f'{info.name!r} holds {info.kind}s: choose a model for {info.kind}s.'
      )
    return tuple(info.example_shape)

  def create(
    self, config, *, num_classes: int, input_shape, rngs: nnx.Rngs, axis_name, part_axis
  ) -> nnx.Module:
    """The model, with parameters drawn from `rngs`. `axis_name` is the data-parallel axis (for
    BatchNorm statistics); `part_axis` is set when examples are split over devices and the family
    supports it (`check_partition`)."""
    raise NotImplementedError

  def inputs(self, batch, config, info, *, rng, run_rng, train: bool, epoch):
    """The model's positional inputs from one device's batch ({'image' uint8 [B, H, W, C] or
    'sequence' [B, T, F] and 'length', 'label', 'mask', 'index': the example's position in its
    split}). `rng` is this device's key for this step; `run_rng` the run's key, the same at every
    step and on every device (both traced, so runs with other seeds share compiled programs; None
    at evaluation); `epoch` the training epoch (a traced integer; 0 at evaluation)."""
    del run_rng, epoch
    if info.kind == 'sequence':
      return sequence_inputs(batch['sequence'], batch['length'], config, rng, train)
    return (image_inputs(batch['image'], config, info, rng, train),)

  def check_partition(self, config, input_shape, parts: int, per_device_batches: dict) -> None:
    """Refuses, before anything is compiled, a partition (`parts` > 1 devices per example) the
    model cannot run. `per_device_batches`: {'batch_size': ..., 'eval_batch_size': ...} per
    data-parallel group."""
    del input_shape, per_device_batches
    if parts > 1:
      raise ConfigError(
        f'config.model={config.model!r} cannot split examples over devices: set '
        'config.partition.parts=1.'
      )

  def logits(self, model, inputs, config, *, train: bool):
    """The logits of this device's whole examples. Under config.partition.parts > 1 a family that
    supports it keeps only this device's part of each example (`own_part`) and combines the parts
    over PART_AXIS."""
    return model(*inputs, train=train)

  def probabilities(self, model, inputs, config):
    """Class probabilities [B, classes] of whole examples at evaluation, as an ensemble of
    different models combines them (dlearn/models/weighted_ensemble.py)."""
    return jax.nn.softmax(self.logits(model, inputs, config, train=False).astype(jnp.float32), -1)

  def load_torch_state_dict(self, model, state_dict: dict, config) -> None:
    """Sets `model`'s parameters from a PyTorch reference's `state_dict` (numpy arrays), for
    `config.init_from=WEIGHTS.npz`; families with a reference implementation override it."""
    del model, state_dict
    raise ConfigError(
      f'config.model={config.model!r} cannot read PyTorch weights: config.init_from=*.npz is for '
      'models with a PyTorch reference (resnet50); give a work directory instead.'
    )

  def init_from_data(self, model, config, source, info) -> None:
    """Sets what the model computes from training data (e.g. a whitening layer) on a freshly
    created model; `source` is the train split. Not called when resuming: such values are in the
    checkpoint."""
    del model, config, source, info
