"""Input pipeline: `tfds.data_source` → grain → per-device batches, with no TensorFlow.

Every process reads only its own part of a split. A training batch on one process has the shape
[local_devices, per_device_batch, ...]; the processes' batches together make the global batch.
Evaluation visits every example of a split exactly once on any number of devices and processes:
the last batch is padded with masked examples, and every process runs the same number of steps.
"""

from __future__ import annotations

import dataclasses
import math
import os

import grain
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from dlearn.errors import ConfigError

# How many records grain reads ahead in threads; enough to hide JPEG-free numpy decoding.
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=256)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the loop need to know about a dataset."""

  name: str
  kind: str  # 'image' or 'sequence'
  example_shape: tuple[int, ...]  # [H, W, C] for images; [max_length, features] for sequences
  num_classes: int
  class_names: tuple[str, ...]
  # Sequences: per-channel statistics of the train split (recorded by dlearn.prepare) used to
  # standardise inputs; None leaves values as they are.
  feature_mean: tuple[float, ...] | None = None
  feature_std: tuple[float, ...] | None = None
  standardize: str = 'train_split'  # config.data.standardize, 'auto' resolved


# What `tfds build` of a catalogue dataset needs beyond dlearn's own dependencies (tfds 4.9.10:
# its command line imports apache-beam and mlcroissant, its downloader importlib_resources).
TFDS_BUILD_PACKAGES = (
  'tensorflow-datasets tensorflow-cpu apache-beam mlcroissant importlib_resources array_record'
)


def _default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def load_split(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source(name, split)`, with an error that says where it looked and how to prepare
  the dataset when it is not there."""
  data_dir = data_dir or _default_data_dir()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for "not prepared" and for a bad split.
    if os.path.isdir(os.path.join(os.path.expanduser(data_dir), name)):
      raise ConfigError(
        f'Cannot read split {split!r} of dataset {name!r} in {data_dir} ({type(e).__name__}: {e}).'
      ) from e
    raise FileNotFoundError(
      f'Dataset {name!r} was not found in data_dir {data_dir!r} (it looked for '
      f'{os.path.join(data_dir, name)}/<version>/ with ArrayRecord files). Prepare it once, on a '
      f'machine with internet access, in an environment of its own (building needs TensorFlow; '
      f'training does not), with:\n'
      f'  python3 -m venv tfds-env && tfds-env/bin/pip install {TFDS_BUILD_PACKAGES}\n'
      f'  tfds-env/bin/tfds build {name} --file_format=array_record --data_dir={data_dir}\n'
      f'or, for your own image folder or UEA/UCR .ts files, with `python -m dlearn.prepare`; '
      f'then pass --config.data.data_dir=DIR (or set TFDS_DATA_DIR).'
    ) from e


class Subset:
  """The examples of a data source at `indices`, in that order, as a data source itself (what the
  pipeline asks of one: `len`, `[i]` and `dataset_info`). Neither tfds nor grain selects by a list
  of indices: tfds split strings take ranges, grain's MapDataset slices."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  @property
  def dataset_info(self):
    return self.source.dataset_info


def labels(source) -> np.ndarray:
  """Every example's label, in order (reads every record once)."""
  return np.array([source[i]['label'] for i in range(len(source))], np.int64)


def stratified_folds(
  labels: np.ndarray, folds: int, seed: int, flag: str = 'config.data.folds'
) -> list[np.ndarray]:
  """`folds` disjoint lists of positions in `labels` that together hold each position once, each
  with about 1/folds of every class: each class's positions shuffled by numpy's
  default_rng(seed), the classes one after another, dealt round-robin (so fold sizes differ by at
  most one as well). Each list sorted: storage order reads faster, and training shuffles anyway.
  A count of folds that leaves a fold without some class is a ValueError naming `flag`."""
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  if not 2 <= folds <= counts.min():
    smallest, count = classes[counts.argmin()], counts.min()
    remedy = f'use from 2 to {count} folds' if count >= 2 else 'no number of folds works'
    raise ConfigError(
      f'{flag}={folds}: {remedy}: every fold needs an example of every class, and the smallest '
      f'class (label {smallest}) has {count} example{"s" if count > 1 else ""}.'
    )
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in classes])
  return [np.sort(order[fold::folds]) for fold in range(folds)]


def fold_sources(source, folds: int, fold: int, seed: int) -> tuple[Subset, Subset]:
  """(train, eval) of fold `fold` of `source` cut into `folds` stratified folds: the other folds,
  and that fold."""
  if not 0 <= fold < folds:
    raise ConfigError(f'config.data.fold={fold}: the folds are 0 to {folds - 1}.')
  parts = stratified_folds(labels(source), folds, seed)
  held_out = parts.pop(fold)
  return Subset(source, np.sort(np.concatenate(parts))), Subset(source, held_out)


def run_sources(config) -> tuple:
  """A run's (train, eval) data sources: config.data.train_split and eval_split, or, with
  config.data.folds = k > 0 (cross-validation), train_split without its fold config.data.fold,
  and that fold."""
  data = config.data
  train_source = load_split(data.name, data.train_split, data.data_dir)
  if data.folds:
    return fold_sources(train_source, data.folds, data.fold, config.seed)
  return train_source, load_split(data.name, data.eval_split, data.data_dir)


STANDARDIZE = ('train_split', 'each_case', 'auto')


def dataset_info(
  source, name: str, max_length: int | None, standardize: str = 'train_split'
) -> DatasetInfo:
  features = source.dataset_info.features
  label = features['label']
  class_names = tuple(label.names)
  if 'image' in features:
    return DatasetInfo(
      name, 'image', tuple(features['image'].shape), label.num_classes, class_names
    )
  if 'sequence' in features:
    metadata = source.dataset_info.metadata or {}
    max_length = max_length or metadata.get('max_length')
    if not max_length:
      raise ConfigError(
        f'Dataset {name!r} holds sequences: set config.data.max_length (the length '
        'every sequence is padded to, so that batches keep one shape).'
      )
    num_features = features['sequence'].shape[-1]
    mean, std = metadata.get('feature_mean'), metadata.get('feature_std')
    if standardize not in STANDARDIZE:
      raise ConfigError(
        f'config.data.standardize={standardize!r}: use one of {", ".join(STANDARDIZE)}.'
      )
    if standardize == 'auto':
      standardize = 'each_case' if num_features == 1 else 'train_split'
    return DatasetInfo(
      name,
      'sequence',
      (max_length, num_features),
      label.num_classes,
      class_names,
      tuple(mean) if mean else None,
      tuple(std) if std else None,
      standardize,
    )
  raise ConfigError(
    f'Dataset {name!r} has features {sorted(features)}: dlearn reads datasets with '
    "an 'image' or a 'sequence' feature and a 'label'."
  )


def standardize(sequence, info: DatasetInfo, valid=None):
  """Each channel of `sequence` [..., time, channels] (numpy or jax) standardised as
  `info.standardize` says: with the train split's statistics (unchanged where the dataset has
  none), or by each case's own mean and std over its steps, those where `valid` [..., time, 1] is
  true (default: all). A constant channel becomes zeros."""
  if info.standardize == 'each_case':
    xp = np if isinstance(sequence, np.ndarray) else jnp
    if valid is None:
      valid = xp.ones((*sequence.shape[:-1], 1), bool)
    steps = xp.maximum(valid.sum(-2, keepdims=True), 1).astype(sequence.dtype)
    mean = xp.where(valid, sequence, 0).sum(-2, keepdims=True) / steps
    std = xp.sqrt(xp.where(valid, (sequence - mean) ** 2, 0).sum(-2, keepdims=True) / steps)
    return (sequence - mean) / xp.where(std > 1e-6, std, 1).astype(sequence.dtype)
  if info.feature_mean is None:
    return sequence
  return (sequence - np.float32(info.feature_mean)) / np.float32(info.feature_std)


def example(record, info: DatasetInfo) -> dict[str, np.ndarray]:
  """One record as fixed-shape numpy arrays. Images stay uint8: normalisation and augmentation run
  on the device inside the step, which moves 4x fewer bytes to it."""
  label = np.int32(record['label'])
  if info.kind == 'image':
    return {'image': np.asarray(record['image'], np.uint8), 'label': label}
  sequence = standardize(np.asarray(record['sequence'], np.float32), info)
  max_length = info.example_shape[0]
  if len(sequence) > max_length:
    raise ConfigError(
      f'A sequence of {info.name!r} has {len(sequence)} steps, more than '
      f'config.data.max_length={max_length}: set --config.data.max_length='
      f'{len(sequence)} or more.'
    )
  padded = np.zeros(info.example_shape, np.float32)
  padded[: len(sequence)] = sequence
  return {'sequence': padded, 'length': np.int32(len(sequence)), 'label': label}


def train_iterator(
  source,
  info: DatasetInfo,
  *,
  local_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
):
  """Endless, shuffled (a new order each epoch), checkpointable iterator of this process's
  training batches, [local_batch_size, ...] each (`parallel.to_global` splits them over the
  devices).

  Every process shuffles the whole split with the same seed, so the sequence of global batches
  does not depend on how many processes share it: global batch s is the s-th run of
  `local_batch_size * process_count` examples, and process p reads only its p-th slice of it.
  So 2 processes x 4 devices train on exactly what 1 process x 8 devices does, and an iterator
  position (a count of global batches) means the same on any number of processes.
  """
  dataset = (
    grain.MapDataset.range(len(source))
    .seed(seed)
    .shuffle()
    .repeat(None)
    .map(lambda i: {**example(source[i], info), 'index': np.int32(i), 'mask': np.float32(1)})
    .batch(local_batch_size, drop_remainder=True)[process_index::process_count]
  )
  return iter(dataset.to_iter_dataset(READ_OPTIONS))


def eval_steps(num_examples: int, global_batch_size: int) -> int:
  return math.ceil(num_examples / global_batch_size)


def eval_iterator(
  source,
  info: DatasetInfo,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
):
  """This process's share of every evaluation batch, [global_batch_size / processes, ...], in
  order. Global batch s holds examples
  [s*G, (s+1)*G); process p takes its contiguous slice of it. Positions past the end of the split
  repeat example 0 with mask 0, so they count for nothing."""
  num_examples = len(source)
  local_batch_size = global_batch_size // process_count
  steps = eval_steps(num_examples, global_batch_size)

  def load(position):
    step, offset = divmod(position, local_batch_size)
    index = step * global_batch_size + process_index * local_batch_size + offset
    valid = index < num_examples
    index = index if valid else 0
    return {**example(source[index], info), 'index': np.int32(index), 'mask': np.float32(valid)}

  dataset = grain.MapDataset.range(steps * local_batch_size).map(load).batch(local_batch_size)
  return iter(dataset.to_iter_dataset(READ_OPTIONS))
