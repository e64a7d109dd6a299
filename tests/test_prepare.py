"""Preparing image folders and UEA/UCR .ts files as tfds datasets, and the errors for bad input."""

import gc
import os
import tarfile

import helpers
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dlearn import configs, train
from dlearn.data import dataset_writer, image_folder, pipeline, ts_format

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data')


def _tar(folder, path):
  with tarfile.open(path, 'w:gz') as archive:
    archive.add(folder, arcname='.')
  return str(path)


def _read_all(name, split, data_dir):
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return source, [source[i] for i in range(len(source))]


@pytest.mark.parametrize('as_archive', [False, True])
def test_image_folder_becomes_a_dataset(tmp_path, as_archive):
  folder = helpers.image_folder(tmp_path / 'images')
  path = _tar(folder, tmp_path / 'images.tar.gz') if as_archive else folder
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset('pets', {'train': path}, data_dir, validation_fraction=0.2)
  source, train_records = _read_all('pets', 'train', data_dir)
  _, validation_records = _read_all('pets', 'validation', data_dir)
  assert len(train_records) == 8 and len(validation_records) == 2  # the last 1 of 5 per class
  assert source.dataset_info.features['label'].names == ['cat', 'dog']  # sorted into ids
  for record in train_records + validation_records:
    assert record['image'].shape == (6, 5, 3) and record['image'].dtype == np.uint8
    assert abs(int(record['image'].mean()) - (40 + 100 * record['label'])) <= 2  # JPEG rounding
  assert sorted(r['label'] for r in validation_records) == [0, 1]


def test_image_size_resizes_every_image(tmp_path):
  folder = helpers.image_folder(tmp_path / 'images')
  dataset_writer.write_dataset('pets', {'train': folder}, str(tmp_path / 'tfds'), image_size=(4, 4))
  _, records = _read_all('pets', 'train', str(tmp_path / 'tfds'))
  assert {r['image'].shape for r in records} == {(4, 4, 3)}


TS_LINES = [
  '1,2,3:4,5,6:a',
  '1,2:3,4:b',
  '7,8,9,10:1,2,3,4:c',
  '1,?,3:4,5,NaN:a',
  '1,2,3,?:4,5,6,?:b',
  '2,2:2,2:c',
]


def test_ts_file_becomes_a_dataset_of_sequences(tmp_path):
  path = helpers.ts_file(tmp_path / 'toy_TRAIN.ts', TS_LINES)
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset(
    'toy', {'train': path, 'test': path}, data_dir, validation_fraction=0
  )
  source, records = _read_all('toy', 'test', data_dir)
  assert source.dataset_info.features['label'].names == ['a', 'b', 'c']  # declared order
  by_length = sorted((int(r['length']), int(r['label'])) for r in records)
  assert by_length == [(2, 1), (2, 2), (3, 0), (3, 0), (3, 1), (4, 2)]
  for r in records:
    assert r['sequence'].shape == (r['length'], 2)
  info = pipeline.dataset_info(source, 'toy', None)
  assert info.example_shape == (4, 2)  # the longest case, recorded at preparation
  with pytest.raises(ValueError, match="config.data.standardize='per_case': use one of"):
    pipeline.dataset_info(source, 'toy', None, 'per_case')
  # 'auto': a multivariate dataset keeps the train split's statistics, a univariate one (the
  # first channel alone) standardises each case.
  assert pipeline.dataset_info(source, 'toy', None, 'auto').standardize == 'train_split'
  header = ['@problemName uni', '@missing true', '@univariate true', '@equalLength false']
  univariate = helpers.ts_file(
    tmp_path / 'uni_TRAIN.ts',
    [line.split(':', 1)[1] for line in TS_LINES],
    [*header, '@classLabel true a b c', '@data'],
  )
  dataset_writer.write_dataset('uni', {'train': univariate}, data_dir, validation_fraction=0)
  source = pipeline.load_split('uni', 'train', data_dir)
  assert pipeline.dataset_info(source, 'uni', None, 'auto').standardize == 'each_case'


def test_missing_values_follow_the_documented_rule(tmp_path):
  data = ts_format.read_ts(
    helpers.ts_file(tmp_path / 'm.ts', ['1,?,3:4,5,NaN:a', '1,2,3,?:4,5,6,?:b', '?,?,?:1,?,3:c'])
  )
  np.testing.assert_allclose(data.sequences[0], [[1, 4], [2, 5], [3, 5]])  # interpolate, hold
  assert data.sequences[1].shape == (3, 2)  # a trailing step missing everywhere ends the case
  np.testing.assert_allclose(data.sequences[2], [[0, 1], [0, 2], [0, 3]])  # empty channel: zeros


def test_a_file_with_windows_line_ends_and_a_byte_order_mark_reads_as_without(tmp_path):
  path = helpers.ts_file(tmp_path / 'plain.ts', ['1,2:3,4:a', '5,6,7:8,9,10:b'])
  with open(path, 'rb') as f:
    text = f.read()
  windows = tmp_path / 'windows.ts'
  windows.write_bytes(b'\xef\xbb\xbf' + text.replace(b'\n', b'\r\n'))
  plain, other = ts_format.read_ts(path), ts_format.read_ts(str(windows))
  assert other.class_names == plain.class_names and other.labels == plain.labels
  for a, b in zip(plain.sequences, other.sequences):
    np.testing.assert_array_equal(a, b)


def test_carved_validation_is_the_last_fraction_of_each_class(tmp_path):
  lines = [f'{i},{i}:{i},{i}:{"ab"[i % 2]}' for i in range(20)]
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset(
    'toy', {'train': helpers.ts_file(tmp_path / 't.ts', lines)}, data_dir, validation_fraction=0.2
  )
  _, validation = _read_all('toy', 'validation', data_dir)
  firsts = sorted(int(r['sequence'][0, 0]) for r in validation)
  assert firsts == [16, 17, 18, 19]  # class a: 16, 18; class b: 17, 19


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['image', 'sequence'])
def test_a_prepared_dataset_trains_and_evaluates(tmp_path, kind):
  data_dir = str(tmp_path / 'tfds')
  config = configs.base()
  if kind == 'image':
    dataset_writer.write_dataset(
      'pets', {'train': helpers.image_folder(tmp_path / 'images', per_class=10)}, data_dir
    )
    config.data.name, config.model = 'pets', 'seed_dcnn'
  else:
    lines = [
      f'{",".join(["1"] * (2 + i % 3))}:{",".join(["2"] * (2 + i % 3))}:{"abc"[i % 3]}'
      for i in range(30)
    ]
    dataset_writer.write_dataset(
      'toy', {'train': helpers.ts_file(tmp_path / 't.ts', lines)}, data_dir
    )
    config.data.name, config.model = 'toy', 'rnn'
    config.rnn.hidden_size = 8
  config.data.data_dir = data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.batch_size, config.eval_batch_size, config.num_train_steps = 8, 8, 3
  result = train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert result['eval']['count'] == (2 if kind == 'image' else 3)


# ---- bad input: clear errors, and nothing left that looks like a dataset ----------------------
def _assert_fails_cleanly(tmp_path, paths, error, match, **kwargs):
  data_dir = tmp_path / 'tfds'
  with pytest.raises(error, match=match):
    dataset_writer.write_dataset('bad', paths, str(data_dir), **kwargs)
  assert not (data_dir / 'bad').exists()


def test_corrupt_image_names_the_file(tmp_path):
  folder = helpers.image_folder(tmp_path / 'images')
  with open(os.path.join(folder, 'train', 'dog', '002.jpg'), 'wb') as f:
    f.write(b'not a jpeg at all')
  _assert_fails_cleanly(
    tmp_path,
    {'train': folder},
    image_folder.ImageFolderError,
    r'train/dog/002.jpg: cannot decode the image',
  )


def test_archive_layout_must_be_split_class_image(tmp_path):
  folder = helpers.image_folder(tmp_path / 'images')
  with open(os.path.join(folder, 'train', 'stray.jpg'), 'wb') as f:
    f.write(helpers.image_bytes(0, '.jpg'))
  archive = _tar(folder, tmp_path / 'images.tar.gz')
  _assert_fails_cleanly(
    tmp_path,
    {'train': archive},
    image_folder.ImageFolderError,
    r"'train/stray.jpg' is not laid out as <split>/<class>/<image>",
  )


def test_images_of_different_sizes_are_stored_encoded_or_ask_for_image_size(tmp_path):
  folder = helpers.image_folder(tmp_path / 'images')
  with open(os.path.join(folder, 'train', 'dog', '004.jpg'), 'wb') as f:
    f.write(helpers.image_bytes(0, '.jpg', size=(9, 9)))
  _assert_fails_cleanly(
    tmp_path,
    {'train': folder},
    image_folder.ImageFolderError,
    r'images of 2 sizes \(6x5, 9x9, ...\): the fixed-size store \(--store=array\) needs '
    r'--image_size',
    store='array',
  )
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset('pets', {'train': folder}, data_dir)  # no flag: encoded
  source = pipeline.load_split('pets', 'train', data_dir)
  assert source.dataset_info.metadata['store'] == 'encoded' and pipeline.is_encoded(source)
  assert all(isinstance(source[i]['image'], bytes) for i in range(len(source)))


def test_empty_image_split(tmp_path):
  os.makedirs(tmp_path / 'empty')
  _assert_fails_cleanly(
    tmp_path, {'train': str(tmp_path / 'empty')}, image_folder.ImageFolderError, 'no images found'
  )


@pytest.mark.parametrize(
  'header_line,match',
  [
    ('@dimensions two', r'bad.ts:\d+: @dimensions must be a positive whole number'),
    ('@classLabel maybe', r'bad.ts:\d+: @classLabel must be `true` followed by the class labels'),
    ('@colour blue', r'bad.ts:\d+: unknown header @colour'),
  ],
)
def test_malformed_header(tmp_path, header_line, match):
  header = ['@problemName toy', header_line, '@classLabel true a b c', '@data']
  if header_line.startswith('@classLabel'):
    header = ['@problemName toy', header_line, '@data']
  path = helpers.ts_file(tmp_path / 'bad.ts', TS_LINES, header)
  _assert_fails_cleanly(tmp_path, {'train': path}, ts_format.TsFormatError, match)


@pytest.mark.parametrize(
  'line,match',
  [
    (
      '1,2:3,4:5,6:a',
      r'bad.ts:11: 3 channel\(s\) before the class label, but the header '
      r'declares @dimensions 2',
    ),
    ('1,x:3,4:a', r"bad.ts:11: channel 1, value 2 is 'x', not a number"),
    # an infinite value would give NaN features and a prediction made of them
    ('1,2:3,-inf:a', r"bad.ts:11: channel 2, value 2 is '-inf', not a finite number"),
    (
      '1,2:1e39,4:a',
      r"bad.ts:11: channel 2, value 1 is '1e39', not a finite number within float32",
    ),
    ('1,2:3,4:z', r"bad.ts:11: class label 'z' is not declared in @classLabel \(a b c\)"),
  ],
)
def test_bad_case_line_names_file_and_line(tmp_path, line, match):
  path = helpers.ts_file(tmp_path / 'bad.ts', [TS_LINES[0], line])  # line 11: after 8 header lines
  _assert_fails_cleanly(tmp_path, {'train': path}, ts_format.TsFormatError, match)


def test_empty_ts_split(tmp_path):
  path = helpers.ts_file(tmp_path / 'bad.ts', [])
  _assert_fails_cleanly(tmp_path, {'train': path}, ts_format.TsFormatError, 'no cases after @data')


def test_preparing_twice_needs_overwrite(tmp_path):
  path = helpers.ts_file(tmp_path / 't.ts', TS_LINES)
  kwargs = dict(validation_fraction=0)
  dataset_writer.write_dataset('toy', {'train': path}, str(tmp_path / 'tfds'), **kwargs)
  with pytest.raises(FileExistsError, match='--overwrite'):
    dataset_writer.write_dataset('toy', {'train': path}, str(tmp_path / 'tfds'), **kwargs)
  dataset_writer.write_dataset(
    'toy', {'train': path}, str(tmp_path / 'tfds'), overwrite=True, **kwargs
  )


def test_a_split_is_read_once_until_it_is_prepared_again(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  path = helpers.ts_file(tmp_path / 't.ts', TS_LINES)
  dataset_writer.write_dataset('toy', {'train': path}, data_dir, validation_fraction=0)
  source = pipeline.load_split('toy', 'train', data_dir)
  assert pipeline.load_split('toy', 'train', data_dir) is source  # the folds' loads: one read
  first = pipeline.labels(source)
  fold = pipeline.Subset(source, [4, 1])
  np.testing.assert_array_equal(pipeline.labels(fold), [fold[i]['label'] for i in range(2)])
  # the same cases, classes a and c swapped, prepared again: read again, with the new labels
  swapped = [line.replace(':a', ':_').replace(':c', ':a').replace(':_', ':c') for line in TS_LINES]
  relabelled = helpers.ts_file(tmp_path / 'r.ts', swapped)
  dataset_writer.write_dataset(
    'toy', {'train': relabelled}, data_dir, validation_fraction=0, overwrite=True
  )
  again = pipeline.load_split('toy', 'train', data_dir)
  assert again is not source
  np.testing.assert_array_equal(pipeline.labels(again), [again[i]['label'] for i in range(len(again))])  # fmt: skip
  assert not np.array_equal(pipeline.labels(again), first)
  # the labels are kept no longer than the split they belong to
  key = id(source)
  assert key in pipeline._LABELS
  pipeline._prepared.cache_clear()
  del source, fold
  gc.collect()
  assert key not in pipeline._LABELS


def test_classes_too_small_for_the_fraction_give_the_largest_ones_last_case(tmp_path):
  """Two cases a class: 10% carves none of any; the split is the last case of the largest class
  (the first in label order), so that 'train+validation' and 'validation' exist as for any data."""
  data_dir = str(tmp_path / 'tfds')
  path = helpers.ts_file(tmp_path / 't.ts', TS_LINES)
  dataset_writer.write_dataset('toy', {'train': path}, data_dir)
  _, validation = _read_all('toy', 'validation', data_dir)
  _, train = _read_all('toy', 'train', data_dir)
  assert [r['label'] for r in validation] == [0]  # class a's last case: '1,?,3:4,5,NaN:a'
  assert validation[0]['length'] == 3 and len(train) == 5


def test_a_train_split_too_small_to_carve(tmp_path):
  _assert_fails_cleanly(
    tmp_path,
    {'train': helpers.ts_file(tmp_path / 't.ts', TS_LINES[:1])},
    ValueError,
    "Split 'train' would be empty",
  )


# ---- the real files in ../shared/data ------------------------------------------------------------
SHARED_FILES = {
  'japanese_vowels': 'JapaneseVowels_TRAIN.ts',
  'basic_motions': 'BasicMotions_TRAIN.ts',
  'gun_point': 'GunPoint_TRAIN.ts',
  'cifar10_jpeg': 'cifar10_jpeg_train.tar.gz',
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SHARED_FILES))
def test_shared_data_prepares_and_trains(tmp_path, name):
  path = os.path.join(SHARED, SHARED_FILES[name])
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent (../shared/data is only on the project machines)')
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset(name, {'train': path}, data_dir)
  config = configs.base()
  config.model = 'seed_dcnn' if name == 'cifar10_jpeg' else 'rnn'
  config.rnn.hidden_size = 16
  config.data.name, config.data.data_dir = name, data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.batch_size, config.eval_batch_size, config.num_train_steps = 16, 64, 3
  result = train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  expected = {'japanese_vowels': 27, 'basic_motions': 4, 'gun_point': 5, 'cifar10_jpeg': 5000}
  assert result['eval']['count'] == expected[name]
