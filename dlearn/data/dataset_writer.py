"""Turns an image folder (or archive) or UEA/UCR `.ts` files into a tfds dataset of ArrayRecord
files, read back with `tfds.data_source` (see pipeline.py). Neither writing nor reading needs
TensorFlow. Images go to one of two stores (`choose_store`): small images of one size decoded once
here into uint8 arrays (training never decodes), or every image's encoded bytes (JPEG and PNG as
given) in a tfds `Image` feature of any size, as tfds' own ImageNet is, decoded and cropped by the
input pipeline's workers (dlearn/data/image_codec.py), written by `_write_unshuffled` in a fixed
shuffled order (so that a slice such as train[:10%] holds every class, as tfds' shuffled records
do). Archives and folders are read one image at a time, twice: once to check every image, once to
write.

Splits come from paths named per split. Without a validation path, a validation split is carved
from train by a fixed rule: within each class, in file order (images: sorted member names; .ts:
line order), the last `validation_fraction` of the cases (rounded to the nearest whole case).
"""

from __future__ import annotations

import glob
import os
import shutil
import types

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer

from dlearn.data import image_codec, image_folder, ts_format
from dlearn.errors import ConfigError

VERSION = '1.0.0'
SPLIT_FLAGS = ('train', 'validation', 'test')


class _PreparedDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder over examples already read and checked; named per dataset by `_builder_class`."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, features, splits, metadata, description, **kwargs):
    self._features, self._splits = features, splits
    self._metadata, self._description = metadata, description
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=self._features,
      description=self._description,
      metadata=tfds.core.MetadataDict(self._metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(examples) for split, examples in self._splits.items()}

  def _generate_examples(self, examples):
    yield from examples()


def _builder_class(name: str):
  # tfds names a dataset after its builder class's `name`; one class per prepared dataset.
  return types.new_class(
    name,
    (_PreparedDataset,),
    {'skip_registration': True},
    lambda namespace: namespace.update(name=name),
  )


def _check_not_empty(cases: dict, validation_fraction: float):
  for split, examples in cases.items():
    if not examples:
      raise ConfigError(
        f'Split {split!r} would be empty (validation_fraction='
        f'{validation_fraction} of a small train split?); pass a larger '
        '--validation_fraction, 0 for none, or a --validation path.'
      )


def _carve(labels, fraction: float):
  """(train indices, validation indices): per class, the last `fraction` in the given order. Where
  that rounds to no case in every class (classes of one to four cases: UCR's Fungi, Pig*, UEA's
  StandWalkJump), the last case of the largest class (the first of them in label order), so that
  the split exists and 'train+validation' is the whole file, as for any other."""
  labels = np.asarray(labels)
  validation = []
  classes, counts = np.unique(labels, return_counts=True)
  for label in classes:
    members = np.flatnonzero(labels == label)
    count = int(len(members) * fraction + 0.5)  # to the nearest, halves up
    validation.extend(members[len(members) - count :])
  if fraction > 0 and not validation and len(labels):
    validation = [np.flatnonzero(labels == classes[counts.argmax()])[-1]]
    logging.warning(
      'validation_fraction=%s carves no case from classes this small: the validation split is '
      'the last case of class %s.', fraction, classes[counts.argmax()],
    )  # fmt: skip
  validation = set(int(i) for i in validation)
  train = [i for i in range(len(labels)) if i not in validation]
  return train, sorted(validation)


# ----------------------------------------------------------------------------------------------
# Sequences (.ts)
# ----------------------------------------------------------------------------------------------
def _sequence_dataset(paths: dict[str, str], validation_fraction: float):
  data = {split: ts_format.read_ts(path) for split, path in paths.items()}
  for split, split_data in data.items():
    if not split_data.class_names:
      raise ts_format.TsFormatError(
        f'{paths[split]}: @classLabel false: a dataset to train or evaluate on needs labelled '
        'cases; classify unlabelled ones with `python -m dlearn.predict`.'
      )
  class_names = data['train'].class_names
  channels = data['train'].sequences[0].shape[1]
  for split, split_data in data.items():
    if split_data.class_names != class_names:
      raise ts_format.TsFormatError(
        f'{paths[split]}: @classLabel {" ".join(split_data.class_names)} differs from the train '
        f'file {paths["train"]} ({" ".join(class_names)}); the splits must declare the same '
        'labels in the same order.'
      )
    if split_data.sequences[0].shape[1] != channels:
      raise ts_format.TsFormatError(
        f'{paths[split]}: {split_data.sequences[0].shape[1]} channels, '
        f'but the train file has {channels}.'
      )
  cases = {split: list(zip(d.sequences, d.labels, d.lines)) for split, d in data.items()}
  if 'validation' not in cases and validation_fraction > 0:
    train_index, validation_index = _carve(data['train'].labels, validation_fraction)
    cases['validation'] = [cases['train'][i] for i in validation_index]
    cases['train'] = [cases['train'][i] for i in train_index]
  _check_not_empty(cases, validation_fraction)

  train_values = np.concatenate([s for s, _, _ in cases['train']])
  metadata = {
    'kind': 'sequence',
    'source': dict(paths),
    'validation_fraction': validation_fraction,
    # Each split's longest case: a model is built for the split it trains on (a test split never
    # shapes one), and evaluation pads a split of longer cases to its own (pipeline.with_room_for).
    # max_length: the training file's (train and validation), where a split is not recorded.
    'max_length': max(len(s) for name, c in cases.items() if name != 'test' for s, _, _ in c),
    'split_max_length': {name: max(len(s) for s, _, _ in c) for name, c in cases.items()},
    # Per-channel statistics of train, for standardising inputs in the pipeline.
    'feature_mean': train_values.mean(0).tolist(),
    'feature_std': np.maximum(train_values.std(0), 1e-6).tolist(),
  }
  features = tfds.features.FeaturesDict(
    {
      'sequence': tfds.features.Tensor(shape=(None, channels), dtype=np.float32),
      'length': tfds.features.Scalar(dtype=np.int32),
      'label': tfds.features.ClassLabel(names=list(class_names)),
    }
  )

  def examples(split):
    def generate():
      for sequence, label, line in cases[split]:
        yield f'line{line}', {'sequence': sequence, 'length': len(sequence), 'label': label}

    return generate

  return features, {split: examples(split) for split in cases}, metadata


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
STORES = ('auto', 'array', 'encoded')
# store='auto': the fixed-size uint8 store when every image has one size of at most this many
# pixels (CIFAR-10's 32x32 is 1,024), where decoding once beats decoding every epoch; else encoded.
ARRAY_STORE_MAX_PIXELS = 128 * 128
# tfds' writer (the array store's) holds up to 1 GB of records and spills the rest to disk through
# TensorFlow; a dataset that would spill is refused before anything is written.
ARRAY_STORE_MAX_BYTES = 900 << 20


def choose_store(store: str, sizes: set, image_size) -> str:
  """'array' or 'encoded' for --store=`store` given the images' (height, width) `sizes`."""
  if store not in STORES:
    raise ConfigError(f'--store={store}: use one of {", ".join(STORES)}.')
  if store == 'encoded' and image_size is not None:
    raise ConfigError(
      '--image_size resizes into the fixed-size store; the encoded store keeps every image as '
      'it is (the model size is config.data.image_size): drop one of the two flags.'
    )
  if store != 'auto':
    return store
  if image_size is not None:
    return 'array'
  (height, width), *others = sorted(sizes)
  return 'array' if not others and height * width <= ARRAY_STORE_MAX_PIXELS else 'encoded'


def _image_dataset(
  paths: dict[str, str],
  validation_fraction: float,
  channels: int,
  image_size: tuple[int, int] | None,
  store: str,
  skip_bad_inputs: bool,
  skipped: list,
):
  folders = {split: image_folder.read_split(path, split) for split, path in paths.items()}
  class_names = sorted(folders['train'][1])
  for split, (_, classes) in folders.items():
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
      raise image_folder.ImageFolderError(
        f'{paths[split]}: class folders {unknown} are not in the train split {paths["train"]}.'
      )
  cases = {
    split: [
      (class_names.index(cls), name, files, position)
      for cls, members in classes.items()
      for name, position in members
    ]
    for split, (files, classes) in folders.items()
  }
  if 'validation' not in cases and validation_fraction > 0:
    train_index, validation_index = _carve([c[0] for c in cases['train']], validation_fraction)
    cases['validation'] = [cases['train'][i] for i in validation_index]
    cases['train'] = [cases['train'][i] for i in train_index]
    paths = {**paths, 'validation': paths['train']}  # for messages: where its images came from

  # Every image is read and decoded once before anything is written: a bad one stops the run
  # here (or is left out, with skip_bad_inputs), and the store is chosen from every image's size.
  sizes = set()
  for split in cases:
    usable = []
    for case in cases[split]:
      try:
        _, height, width = image_codec.checked(case[2].read(case[3]), channels)
      except ValueError as e:
        if not skip_bad_inputs:
          raise image_folder.ImageFolderError(
            f'{paths[split]}: {case[1]}: {e}; remove it, or pass --skip_bad_inputs to leave '
            'out every such file.'
          ) from e
        skipped.append((f'{paths[split]}: {case[1]}', str(e)))
        continue
      sizes.add((height, width))
      usable.append(case)
    cases[split] = usable
  _check_not_empty(cases, validation_fraction)
  store = choose_store(store, sizes, image_size)
  metadata = {
    'kind': 'image',
    'store': store,
    'source': dict(paths),
    'validation_fraction': validation_fraction,
    'skipped_inputs': [name for name, _ in skipped],
  }
  if store == 'encoded':
    image_feature = tfds.features.Image(shape=(None, None, channels), encoding_format='jpeg')
    metadata['image_sizes'] = {'min': list(min(sizes)), 'max': list(max(sizes))}
  else:
    shape = (*image_size, channels) if image_size else (*next(iter(sizes)), channels)
    if len(sizes) > 1 and image_size is None:
      (h0, w0), (h1, w1) = sorted(sizes)[:2]
      raise image_folder.ImageFolderError(
        f'{paths["train"]}: images of {len(sizes)} sizes ({h0}x{w0}, {h1}x{w1}, ...): the '
        'fixed-size store (--store=array) needs --image_size=H,W to resize all; '
        '--store=encoded (the default for these) keeps them as they are.'
      )
    image_feature = tfds.features.Tensor(shape=shape, dtype=np.uint8)
    nbytes = sum(len(split_cases) for split_cases in cases.values()) * int(np.prod(shape))
    if nbytes > ARRAY_STORE_MAX_BYTES:
      raise ConfigError(
        f'{paths["train"]}: {nbytes / 2**30:.1f} GiB of decoded {shape[0]}x{shape[1]} images is '
        'more than the fixed-size store can be written without TensorFlow (tfds spills beyond '
        f'{ARRAY_STORE_MAX_BYTES / 2**20:.0f} MiB through it): use --store=encoded, or a smaller '
        '--image_size.'
      )
  features = {'image': image_feature, 'label': tfds.features.ClassLabel(names=class_names)}
  if store == 'encoded':  # each image's size: the crop is drawn before the image is decoded
    features['height'] = features['width'] = tfds.features.Scalar(dtype=np.int32)
  features = tfds.features.FeaturesDict(features)

  def examples(split):
    def generate():
      order = range(len(cases[split]))
      if store == 'encoded':  # a fixed shuffle, as tfds shuffles the array store's records
        order = np.random.default_rng(0).permutation(len(cases[split]))
      for label, name, files, position in (cases[split][i] for i in order):
        content = files.read(position)
        if store == 'encoded':
          image, height, width = image_codec.checked(content, channels)
          yield name, {'image': image, 'label': label, 'height': height, 'width': width}
        else:
          image = image_folder.decode(
            paths[split], name, content, channels=channels, size=shape[:2]
          )
          yield name, {'image': image, 'label': label}

    return generate

  return features, {split: examples(split) for split in cases}, metadata


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
SHARD_BYTES = 256 << 20  # ArrayRecord files of about this size


def _write_unshuffled(name, target, features, splits, metadata, description):
  """Writes the splits into `target` as tfds does (ArrayRecord shards, dataset_info.json), in the
  order given, one example at a time. tfds' own writer keeps up to 1 GB of records in memory and
  needs TensorFlow to spill the rest to disk; this one needs neither."""
  os.makedirs(target)
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  split_infos = []
  for split, examples in splits.items():
    shards, lengths, total, shard_bytes = [], [], 0, 0
    writer = None
    for _, example in examples():
      record = serializer.serialize_example(features.encode_example(example))
      if writer is None or shard_bytes > SHARD_BYTES:
        if writer is not None:
          writer.close()
        shards.append(os.path.join(target, f'{name}-{split}.array_record-shard{len(shards)}'))
        writer = array_record_module.ArrayRecordWriter(shards[-1], 'group_size:1')
        lengths.append(0)
        shard_bytes = 0
      writer.write(record)
      lengths[-1] += 1
      shard_bytes += len(record)
      total += len(record)
    if writer is not None:
      writer.close()
    for i, shard in enumerate(shards):  # tfds' names, once the count is known
      os.rename(shard, f'{shard.rsplit("-", 1)[0]}-{i:05d}-of-{len(shards):05d}')
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=total))
  tfds.folder_dataset.write_metadata(
    data_dir=target,
    features=features,
    split_infos=split_infos,
    check_data=False,  # tfds' check reads through TensorFlow
    description=description,
    metadata=tfds.core.MetadataDict(metadata),
    disable_shuffling=True,
  )


def write_dataset(
  name: str,
  paths: dict[str, str],
  data_dir: str,
  *,
  validation_fraction: float = 0.1,
  channels: int = 3,
  image_size: tuple[int, int] | None = None,
  store: str = 'auto',
  skip_bad_inputs: bool = False,
  skipped: list | None = None,
  overwrite: bool = False,
  metadata: dict | None = None,
) -> str:
  """Writes dataset `name` to `data_dir/name/VERSION` from `paths` ({split: file or folder},
  train required) and returns that directory. Every input is read and checked before anything is
  written; a failure while writing leaves no dataset behind. Images: `store` (`choose_store`);
  with `skip_bad_inputs` an image that cannot be used is left out and appended to `skipped` as
  (file, reason) instead of stopping the run. `metadata` is added to the dataset's own."""
  if 'train' not in paths:
    raise ConfigError('A train split is required (--train).')
  target = _target(name, data_dir, overwrite)
  if paths['train'].endswith('.ts'):
    features, splits, own = _sequence_dataset(paths, validation_fraction)
  else:
    features, splits, own = _image_dataset(
      paths,
      validation_fraction,
      channels,
      image_size,
      store,
      skip_bad_inputs,
      skipped if skipped is not None else [],
    )
  _write(name, data_dir, target, features, splits, {**own, **(metadata or {})}, paths)
  return target


def write_arrays(
  name: str,
  arrays: dict[str, tuple[np.ndarray, np.ndarray]],
  class_names,
  data_dir: str,
  *,
  validation_fraction: float = 0.1,
  source: dict | None = None,
) -> str:
  """Writes images already decoded, {split: (uint8 images NHWC, labels)} with train required,
  as the array store (validation carved from train by the same rule); returns its directory."""
  target = _target(name, data_dir, overwrite=False, catalogue_ok=True)
  arrays = dict(arrays)
  if 'validation' not in arrays and validation_fraction > 0:
    images, labels = arrays['train']
    train_index, validation_index = _carve(labels, validation_fraction)
    arrays['validation'] = images[validation_index], labels[validation_index]
    arrays['train'] = images[train_index], labels[train_index]
  _check_not_empty({split: range(len(y)) for split, (_, y) in arrays.items()}, validation_fraction)
  shape = arrays['train'][0].shape[1:]
  features = tfds.features.FeaturesDict(
    {
      'image': tfds.features.Tensor(shape=shape, dtype=np.uint8),
      'label': tfds.features.ClassLabel(names=list(class_names)),
    }
  )
  metadata = {
    'kind': 'image',
    'store': 'array',
    'source': source or {},
    'validation_fraction': validation_fraction,
    'skipped_inputs': [],
  }

  def examples(split):
    def generate():
      images, labels = arrays[split]
      for i in range(len(labels)):
        yield f'{split}{i}', {'image': images[i], 'label': int(labels[i])}

    return generate

  splits = {split: examples(split) for split in arrays}
  _write(name, data_dir, target, features, splits, metadata, source)
  return target


def _target(name: str, data_dir: str, overwrite: bool, catalogue_ok: bool = False) -> str:
  """data_dir/name/VERSION, checked: a lower_case name, not tfds' (unless `catalogue_ok`: fetch's
  names end in _fetched), not there yet unless `overwrite`."""
  if not name.isidentifier() or name != name.lower():
    raise ConfigError(f'Dataset name {name!r}: use lower_case letters, digits and underscores.')
  if not catalogue_ok and name in tfds.list_builders(with_community_datasets=False):
    raise ConfigError(
      f'{name!r} is a tfds catalogue dataset; pick another --name (e.g. '
      f'{name}_local) so that the two never mix.'
    )
  target = os.path.join(data_dir, name, VERSION)
  if os.path.exists(target):
    if not overwrite:
      raise FileExistsError(
        f'{target} already exists: pass --overwrite to replace it, or a new --name.'
      )
    shutil.rmtree(target)
  return target


def _write(name, data_dir, target, features, splits, metadata, source) -> None:
  description = f'Prepared by dlearn from {source}.'
  try:
    if metadata.get('store') == 'encoded':
      _write_unshuffled(name, target, features, splits, metadata, description)
    else:
      builder = _builder_class(name)(
        features=features,
        splits=splits,
        metadata=metadata,
        description=description,
        data_dir=data_dir,
        file_format='array_record',
      )
      builder.download_and_prepare()
  except BaseException:
    # tfds writes into a temporary folder and renames it when complete; make sure nothing of a
    # failed run stays that could look like a dataset.
    for leftover in glob.glob(os.path.join(data_dir, name, f'incomplete.*{VERSION}')) + [target]:
      shutil.rmtree(leftover, ignore_errors=True)
    if os.path.isdir(os.path.join(data_dir, name)) and not os.listdir(os.path.join(data_dir, name)):
      os.rmdir(os.path.join(data_dir, name))
    raise
