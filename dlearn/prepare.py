"""Prepare a dataset: image folder/archive or UEA/UCR .ts files → tfds ArrayRecord dataset.

  python -m dlearn.prepare --name=cifar10_jpeg --train=../shared/data/cifar10_jpeg_train.tar.gz \
      --data_dir=data/tfds
  python -m dlearn.prepare --name=japanese_vowels --train=../shared/data/JapaneseVowels_TRAIN.ts \
      --data_dir=data/tfds [--test=JapaneseVowels_TEST.ts]

Then train with --config.data.name=NAME --config.data.data_dir=DIR.
"""

import os
import sys

from absl import app, flags

from dlearn.data import image_folder, prepare, ts_format

FLAGS = flags.FLAGS
flags.DEFINE_string('name', None, 'Dataset name (lower_case).', required=True)
flags.DEFINE_string(
  'train',
  None,
  'Train split: a .ts file, or a folder / .tar(.gz) archive laid out as <split>/<class>/<image>.',
  required=True,
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
)
flags.DEFINE_list(
  'image_size',
  None,
  'Images: H,W to resize every image to (default: keep; all images must then have one size).',
)
flags.DEFINE_integer('channels', 3, 'Images: 3 (RGB) or 1 (grey).')
flags.DEFINE_bool('overwrite', False, 'Replace an existing dataset of this name.')


def main(argv):
  del argv
  paths = {split: getattr(FLAGS, split) for split in prepare.SPLIT_FLAGS if getattr(FLAGS, split)}
  size = tuple(int(x) for x in FLAGS.image_size) if FLAGS.image_size else None
  try:
    target = prepare.prepare(
      FLAGS.name,
      paths,
      os.path.expanduser(FLAGS.data_dir),
      validation_fraction=FLAGS.validation_fraction,
      channels=FLAGS.channels,
      image_size=size,
      overwrite=FLAGS.overwrite,
    )
  except (ts_format.TsFormatError, image_folder.ImageFolderError, ValueError, FileExistsError) as e:
    sys.exit(f'error: {e}')  # the message names the file and what to do; no traceback
  print(f'Prepared {FLAGS.name} in {target}')


if __name__ == '__main__':
  app.run(main)
