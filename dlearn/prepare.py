"""Prepare a dataset: image folder/archive or UEA/UCR .ts files → tfds ArrayRecord dataset.

  python -m dlearn.prepare --name=cifar10_jpeg --train=../shared/data/cifar10_jpeg_train.tar.gz \
      --data_dir=data/tfds
  python -m dlearn.prepare --name=japanese_vowels --train=../shared/data/JapaneseVowels_TRAIN.ts \
      --data_dir=data/tfds [--test=JapaneseVowels_TEST.ts]
  python -m dlearn.prepare --fetch=cifar10 --data_dir=data/tfds     # or mnist, ArrowHead, ...

Then train with --config.data.name=NAME --config.data.data_dir=DIR.
"""

import os

from absl import flags

from dlearn import cli
from dlearn.data import dataset_writer, fetch

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string(
    'fetch',
    None,
    f'Download and prepare a standard dataset by name instead: {", ".join(fetch.IMAGE_FILES)}, '
    'or a UEA/UCR name (ArrowHead); written as cifar10_fetched, ..., arrow_head. Mirror: '
    f'${fetch.download.MIRROR_ENV}.',
  )
  flags.DEFINE_string('name', None, 'Dataset name (lower_case); required with --train.')
  flags.DEFINE_string(
    'train',
    None,
    'Train split: a .ts file, or a folder / .tar(.gz) archive laid out as <split>/<class>/<image>.',
  )
  flags.DEFINE_string(
    'validation',
    None,
    'Validation split, same format (default: carved from train, see --validation_fraction).',
  )
  flags.DEFINE_string('test', None, 'Test split, same format.')
  flags.DEFINE_string(
    'data_dir',
    os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'),
    'Where to write the dataset.',
  )
  flags.DEFINE_float(
    'validation_fraction',
    0.1,
    'Without --validation: the last fraction of each '
    'class of train (in file order) becomes the validation split; 0 for none.',
    lower_bound=0.0,
    upper_bound=0.9,
  )
  flags.DEFINE_list(
    'image_size',
    None,
    'Images: H,W to resize every image to, into the fixed-size store (default: keep each size).',
  )
  flags.DEFINE_enum(
    'store',
    'auto',
    list(dataset_writer.STORES),
    'Images: "array", decoded once into uint8 arrays of one size (CIFAR-10); "encoded", each '
    'file\'s JPEG/PNG bytes, decoded and cropped while training (ImageNet); "auto": array when '
    f'every image has one size of at most {dataset_writer.ARRAY_STORE_MAX_PIXELS:,} pixels or '
    '--image_size is given, else encoded.',
  )
  flags.DEFINE_bool(
    'skip_bad_inputs',
    False,
    'Images: leave out (and list) the files that cannot be used, instead of stopping at the first.',
  )
  flags.DEFINE_enum('channels', '3', ['1', '3'], 'Images: 3 (RGB) or 1 (grey).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing dataset of this name.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags take the form --name=value.')
  if FLAGS.fetch:
    return _fetch()
  if not (FLAGS.name and FLAGS.train):
    cli.fail('give --name and --train (a .ts file or image folder), or --fetch=NAME.')
  paths = {
    split: getattr(FLAGS, split) for split in dataset_writer.SPLIT_FLAGS if getattr(FLAGS, split)
  }
  for split, path in paths.items():
    if not os.path.exists(path):
      cli.fail(
        f'--{split}={path}: no such file or folder; give a .ts file, or an image folder or '
        '.tar(.gz) archive laid out as <split>/<class>/<image>.'
      )
  try:
    size = tuple(int(x) for x in FLAGS.image_size) if FLAGS.image_size else None
    if size is not None and (len(size) != 2 or min(size) < 1):
      raise ValueError
  except ValueError:
    cli.fail(f'--image_size={",".join(FLAGS.image_size)}: give two positive whole numbers H,W.')
  data_dir = os.path.expanduser(FLAGS.data_dir)
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    cli.fail(f'--data_dir={FLAGS.data_dir}: cannot be created ({e}); choose a writable folder.')
  skipped = []
  try:
    target = dataset_writer.write_dataset(
      FLAGS.name,
      paths,
      data_dir,
      validation_fraction=FLAGS.validation_fraction,
      channels=int(FLAGS.channels),
      image_size=size,
      store=FLAGS.store,
      skip_bad_inputs=FLAGS.skip_bad_inputs,
      skipped=skipped,
      overwrite=FLAGS.overwrite,
    )
  except cli.USER_ERRORS as e:
    cli.fail(e)  # the message names the file and what to do; no traceback
  for name, reason in skipped:
    print(f'skipped {name}: {reason}')
  if skipped:
    print(f'{len(skipped)} file(s) left out (--skip_bad_inputs).')
  print(f'Prepared {FLAGS.name} in {target}')


def _fetch():
  given = [
    f'--{f}' for f in ('name', 'train', 'validation', 'test', 'image_size') if FLAGS[f].value
  ]
  if given:
    cli.fail(
      f"--fetch prepares the archive's own splits under its own name: drop {' '.join(given)}."
    )
  data_dir = os.path.expanduser(FLAGS.data_dir)
  try:
    os.makedirs(data_dir, exist_ok=True)
    target = fetch.fetch(
      FLAGS.fetch,
      data_dir,
      validation_fraction=FLAGS.validation_fraction,
      overwrite=FLAGS.overwrite,
    )
  except cli.USER_ERRORS as e:
    cli.fail(e)
  name = fetch.prepared_name(FLAGS.fetch)
  print(f'Prepared {name} in {target}; train on it with --config.data.name={name}.')


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
