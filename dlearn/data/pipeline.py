"""Input pipeline: `tfds.data_source` → grain → per-device batches, with no TensorFlow.

Every process reads only its own part of a split. A training batch on one process has the shape
[local_devices, per_device_batch, ...]; the processes' batches together make the global batch.
Evaluation visits every example of a split exactly once on any number of devices and processes:
the last batch is padded with masked examples, and every process runs the same number of steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import weakref

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from dlearn.data import fetch, image_codec
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
  # Images of the encoded store: what decodes them to example_shape on the host (training's
  # random-resized crop, evaluation's centre crop); None: stored arrays, augmented on the device.
  transform: image_codec.ImageTransform | None = None


# What `tfds build` of a catalogue dataset needs beyond dlearn's own dependencies (tfds 4.9.10:
# its command line imports apache-beam and mlcroissant, its downloader importlib_resources).
TFDS_BUILD_PACKAGES = (
  'tensorflow-datasets tensorflow-cpu apache-beam mlcroissant importlib_resources array_record'
)


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def load_split(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source(name, split)`, with an error that says where it looked and how to prepare
  the dataset when it is not there. A process reads a split once while its files stay as they
  are (`_prepared`): a cross-validation's folds each load it."""
  data_dir = data_dir or default_data_dir()
  return _prepared(name, split, data_dir, _files(os.path.join(os.path.expanduser(data_dir), name)))


def _files(folder: str) -> tuple:
  """(path, size, modification time) of every file under `folder`: a prepared dataset written
  again is read again."""
  found = []
  for root, _, names in os.walk(folder):
    for n in names:
      stat = os.stat(os.path.join(root, n))
      found.append((os.path.join(root, n), stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(found))


@functools.lru_cache(maxsize=16)
def _prepared(name: str, split: str, data_dir: str, files: tuple):
  del files  # the cache's key
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    if is_encoded(source):  # the bytes, for the pipeline's workers to decode and crop
      source = tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=False,
        decoders={'image': tfds.decode.SkipDecoding()},
      )
    _LABELS[id(source)] = None  # read by `labels`, forgotten with the source
    weakref.finalize(source, _LABELS.pop, id(source), None)
    return source
  except Exception as e:  # tfds raises several types for "not prepared" and for a bad split.
    if os.path.isdir(os.path.join(os.path.expanduser(data_dir), name)):
      raise ConfigError(
        f'Cannot read split {split!r} of dataset {name!r} in {data_dir} ({type(e).__name__}: {e}). '
        'Name a split it has (--split= of evaluate and predict; --config.data.train_split= and '
        "eval_split= of a run; dlearn.prepare carves 'validation' from the training file unless "
        '--validation_fraction=0), or add one: prepare it again with --test=FILE --overwrite.'
      ) from e
    raise FileNotFoundError(
      f'Dataset {name!r} was not found in data_dir {data_dir!r} (it looked for '
      f'{os.path.join(data_dir, name)}/<version>/ with ArrayRecord files). Prepare it once, on a '
      f'machine with internet access, in an environment of its own (building needs TensorFlow; '
      f'training does not), with:\n'
      f'  python3 -m venv tfds-env && tfds-env/bin/pip install {TFDS_BUILD_PACKAGES}\n'
      f'  tfds-env/bin/tfds build {name} --file_format=array_record --data_dir={data_dir}\n'
      f'or, for your own image folder or UEA/UCR .ts files, with `python -m dlearn.prepare`; '
      f'then pass --config.data.data_dir=DIR (or set TFDS_DATA_DIR).{_fetch_hint(name)}'
    ) from e


def _fetch_hint(name: str) -> str:
  """For a name dlearn can fetch: the prepared name that training fetches by itself."""
  if fetch.archive_name(name) is None:
    return ''
  return (
    f' dlearn fetches and prepares this dataset itself, without TensorFlow, as '
    f'--config.data.name={fetch.prepared_name(name)} (or `python -m dlearn.prepare --fetch={name}`).'
  )


def is_encoded(source) -> bool:
  """Whether the images of `source` are stored encoded, of any size (dlearn.prepare's encoded
  store, tfds' imagenet2012): a tfds Image feature without a fixed height and width."""
  features = source.dataset_info.features
  image = features['image'] if 'image' in features else None
  return isinstance(image, tfds.features.Image) and None in image.shape[:2]


def image_transform(data, channels: int) -> image_codec.ImageTransform:
  """The host transform config.data (`data`) sets for encoded images of `channels` channels."""
  if data.train_crop not in image_codec.TRAIN_CROPS:
    raise ConfigError(
      f'config.data.train_crop={data.train_crop!r}: use one of {", ".join(image_codec.TRAIN_CROPS)}.'
    )
  if not (isinstance(data.image_size, int) and data.image_size > 0):
    raise ConfigError(
      f'config.data.image_size={data.image_size!r}: the side in pixels of the square the model '
      'takes (e.g. 224).'
    )
  scale, ratio = tuple(data.crop_scale), tuple(data.crop_ratio)
  if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
    raise ConfigError(
      f'config.data.crop_scale={scale} and crop_ratio={ratio}: give (low, high) ranges, the '
      'scale within (0, 1] (e.g. (0.08, 1.0) and (0.75, 1.333)).'
    )
  if not 0 < data.center_crop_fraction <= 1:
    raise ConfigError(
      f'config.data.center_crop_fraction={data.center_crop_fraction}: a fraction in (0, 1] '
      '(0.875: the references).'
    )
  return image_codec.ImageTransform(
    size=(data.image_size, data.image_size),
    channels=channels,
    train_crop=data.train_crop if data.augment else 'center',
    scale=scale,
    ratio=ratio,
    center_fraction=data.center_crop_fraction,
    flip=bool(data.augment),
  )


def worker_count(config_value: int, info: DatasetInfo) -> int:
  """Processes decoding examples (config.data.worker_count): -1, one per CPU core for encoded
  images (decoding is the work) and none for arrays (grain's threads keep up)."""
  if config_value >= 0:
    return config_value
  return (os.cpu_count() or 1) if info.transform is not None else 0


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
  """Every example's label, in order (reads every record once; of a split `load_split` read,
  once a process: a cross-validation's folds each cut their folds from them)."""
  if isinstance(source, Subset):
    return labels(source.source)[source.indices]
  found = _LABELS.get(id(source))
  if found is not None:
    return found
  found = np.array([source[i]['label'] for i in range(len(source))], np.int64)
  found.flags.writeable = False
  if id(source) in _LABELS:
    _LABELS[id(source)] = found
  return found


# id(source) -> its labels (None until read), for the splits `load_split` holds (`_prepared`'s
# cache): an entry leaves when its source is collected, before its id can be another's
_LABELS = {}


def stratified_folds(
  labels: np.ndarray, folds: int, seed: int, flag: str = 'config.data.folds'
) -> list[np.ndarray]:
  """`folds` disjoint lists of positions in `labels` that together hold each position once, each
  with about 1/folds of every class: each class's positions shuffled by numpy's
  default_rng(seed), the classes one after another, dealt round-robin (so fold sizes differ by at
  most one as well). Each list sorted: storage order reads faster, and training shuffles anyway.
  A class of fewer examples than folds is held out by as many folds as it has examples (as
  scikit-learn's StratifiedKFold deals it; `small_classes` says which), so that data whose
  classes have few examples each (UCR's Fungi: one) can still be cross-validated. Fewer than 2
  folds, or more than the examples, is a ValueError naming `flag`."""
  labels = np.asarray(labels)
  classes = np.unique(labels)
  if not 2 <= folds <= len(labels):
    remedy = f'use from 2 to {len(labels)} folds' if len(labels) >= 2 else 'no number of folds works'  # fmt: skip
    raise ConfigError(
      f"{flag}={folds}: {remedy}: every fold holds out at least one of the split's "
      f'{len(labels)} example{"s" if len(labels) != 1 else ""}.'
    )
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in classes])
  return [np.sort(order[fold::folds]) for fold in range(folds)]


def small_classes(labels, folds: int) -> str | None:
  """None, or a sentence naming the classes of fewer examples than `folds`."""
  classes, counts = np.unique(np.asarray(labels), return_counts=True)
  small = [f'{c} ({n})' for c, n in zip(classes, counts) if n < folds]
  if not small:
    return None
  return (
    f'classes with fewer examples than the {folds} folds: {", ".join(small[:8])}'
    f'{" ..." if len(small) > 8 else ""}; they are held out by fewer folds, and a class of one '
    "example is missing from its own fold's training data (its accuracy counts it wrong)."
  )


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
  source, name: str, max_length: int | None, standardize: str = 'train_split', data=None
) -> DatasetInfo:
  """What the model and the loop need to know of `source`; `data` (config.data) sets the host
  transform of encoded images (default: `configs.base()`'s). Sequences are padded to
  `max_length`, or to the longest of `source` (`longest_sequence`)."""
  features = source.dataset_info.features
  label = features['label']
  class_names = tuple(label.names)
  if 'image' in features:
    shape = tuple(features['image'].shape)
    if not is_encoded(source):
      return DatasetInfo(name, 'image', shape, label.num_classes, class_names)
    if data is None:
      from dlearn import configs  # the defaults; configs imports nothing of the pipeline

      data = configs.base().data
    transform = image_transform(data, shape[-1])
    return DatasetInfo(
      name,
      'image',
      (*transform.size, shape[-1]),
      label.num_classes,
      class_names,
      transform=transform,
    )
  if 'sequence' in features:
    metadata = source.dataset_info.metadata or {}
    # the longest case of the split itself: the model is shaped by what it trains on alone
    max_length = max_length or longest_sequence(source)
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
    return DatasetInfo(
      name,
      'sequence',
      (max_length, num_features),
      label.num_classes,
      class_names,
      tuple(mean) if mean else None,
      tuple(std) if std else None,
      resolved_standardize(standardize, num_features),
    )
  raise ConfigError(
    f'Dataset {name!r} has features {sorted(features)}: dlearn reads datasets with '
    "an 'image' or a 'sequence' feature and a 'label'."
  )


def with_room_for(info: DatasetInfo, longest: int, multiple: int = 1) -> DatasetInfo:
  """`info` whose sequences are padded to `longest` steps (rounded up to a multiple of `multiple`:
  a time-partitioned model's parts) where that is more than the model was trained on: a test
  split whose cases are longer than the training file's (UEA's JapaneseVowels: 7-26 steps in
  training, up to 29 in test), whose length shapes no model. The model keeps its trained shape:
  the sequence models read any number of steps (their convolutions and pooling, or their
  recurrence, run to each case's own length). Images, and shorter sequences: `info` as it is."""
  if info.kind != 'sequence' or longest <= info.example_shape[0]:
    return info
  longest = -(-longest // multiple) * multiple
  return dataclasses.replace(info, example_shape=(longest, *info.example_shape[1:]))


def longest_sequence(source) -> int:
  """The longest sequence of `source`, a prepared split (`train+validation`: the longer of the
  two) or a fold of one, as dlearn.prepare recorded each split's; where that is not recorded,
  the longest of every split (0 if none)."""
  while isinstance(source, Subset):
    source = source.source
  metadata = getattr(getattr(source, 'dataset_info', None), 'metadata', None) or {}
  lengths = dict(metadata.get('split_max_length') or {})
  names = str(getattr(source, 'split', '')).split('+')
  if all(name in lengths for name in names):
    return int(max(lengths[name] for name in names))
  return int(max([*lengths.values(), metadata.get('max_length') or 0]))


def resolved_standardize(standardize: str, num_features: int) -> str:
  """config.data.standardize with 'auto' resolved: each case on its own for univariate series,
  the train split's statistics for multivariate ones."""
  if standardize == 'auto':
    return 'each_case' if num_features == 1 else 'train_split'
  return standardize


def standardize(sequence, info: DatasetInfo, valid=None):
  """Each channel of `sequence` [..., time, channels] (numpy or jax) standardised as
  `info.standardize` says: with the train split's statistics (unchanged where the dataset has
  none), or by each case's own mean and std over its steps, those where `valid` [..., time, 1] is
  true (default: all). A constant channel becomes zeros."""
  if info.standardize == 'each_case':
    if isinstance(sequence, np.ndarray):
      xp = np
    else:
      import jax.numpy as xp  # here: the pipeline's worker processes never import jax
    if valid is None:
      valid = xp.ones((*sequence.shape[:-1], 1), bool)
    steps = xp.maximum(valid.sum(-2, keepdims=True), 1).astype(sequence.dtype)
    mean = xp.where(valid, sequence, 0).sum(-2, keepdims=True) / steps
    std = xp.sqrt(xp.where(valid, (sequence - mean) ** 2, 0).sum(-2, keepdims=True) / steps)
    return (sequence - mean) / xp.where(std > 1e-6, std, 1).astype(sequence.dtype)
  if info.feature_mean is None:
    return sequence
  return (sequence - np.float32(info.feature_mean)) / np.float32(info.feature_std)


def example(record, info: DatasetInfo, rng: np.random.Generator | None = None):
  """One record as fixed-shape numpy arrays. Images stay uint8: normalisation (and the
  augmentation of stored arrays) runs on the device inside the step, which moves 4x fewer bytes
  to it. An encoded image is decoded here by `info.transform`: training's with `rng` (its
  random stream), evaluation's without."""
  label = np.int32(record['label'])
  if info.kind == 'image':
    image = record['image']
    if isinstance(image, bytes):
      image = (
        info.transform.train(image, rng) if rng is not None else info.transform.evaluate(image)
      )
    return {'image': np.asarray(image, np.uint8), 'label': label}
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


def _indexed_example(index, rng=None, *, source, info):
  return {**example(source[index], info, rng), 'index': np.int32(index), 'mask': np.float32(1)}


def _iterate(dataset: grain.MapDataset, workers: int):
  """An iterator over `dataset`, computed in `workers` processes (grain's mp_prefetch: each
  worker makes whole batches, and the iterator's state holds every worker's position, so that
  resume is exact) or, with 0, in this process's threads."""
  dataset = dataset.to_iter_dataset(READ_OPTIONS)
  if workers:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; a program that is not an absl app (a notebook, a test)
      # has none to parse.
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(dataset)


def train_iterator(
  source,
  info: DatasetInfo,
  *,
  local_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = 0,
):
  """Endless, shuffled (a new order each epoch), checkpointable iterator of this process's
  training batches, [local_batch_size, ...] each (`parallel.to_global` splits them over the
  devices), made in `workers` processes (0: threads).

  Every process shuffles the whole split with the same seed, so the sequence of global batches
  does not depend on how many processes share it: global batch s is the s-th run of
  `local_batch_size * process_count` examples, and process p reads only its p-th slice of it.
  So 2 processes x 4 devices train on exactly what 1 process x 8 devices does, and an iterator
  position (a count of global batches) means the same on any number of processes. An encoded
  image's crop and flip are drawn from grain's random stream for its position in the endless
  sequence (seeded by `seed`): a new crop every epoch, the same on resume and on any number of
  processes or workers.
  """
  records = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
  load = functools.partial(_indexed_example, source=source, info=info)
  examples = records.map(load) if info.transform is None else records.random_map(load)
  batches = examples.batch(local_batch_size, drop_remainder=True)[process_index::process_count]
  return _iterate(batches, workers)


def eval_steps(num_examples: int, global_batch_size: int) -> int:
  return math.ceil(num_examples / global_batch_size)


def _eval_example(position, *, source, info, local_batch_size, global_batch_size, process_index):
  step, offset = divmod(position, local_batch_size)
  index = step * global_batch_size + process_index * local_batch_size + offset
  valid = index < len(source)
  index = index if valid else 0
  return {**example(source[index], info), 'index': np.int32(index), 'mask': np.float32(valid)}


def eval_iterator(
  source,
  info: DatasetInfo,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = 0,
):
  """This process's share of every evaluation batch, [global_batch_size / processes, ...], in
  order, made in `workers` processes (0: threads). Global batch s holds examples
  [s*G, (s+1)*G); process p takes its contiguous slice of it. Positions past the end of the split
  repeat example 0 with mask 0, so they count for nothing."""
  local_batch_size = global_batch_size // process_count
  steps = eval_steps(len(source), global_batch_size)
  load = functools.partial(
    _eval_example,
    source=source,
    info=info,
    local_batch_size=local_batch_size,
    global_batch_size=global_batch_size,
    process_index=process_index,
  )
  dataset = grain.MapDataset.range(steps * local_batch_size).map(load).batch(local_batch_size)
  return _iterate(dataset, workers)
