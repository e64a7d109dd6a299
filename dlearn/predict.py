"""Command: classify new inputs with a trained work directory, on every device of every process.

  python -m dlearn.predict --workdir=workdirs/seed_dcnn --input=new_images/ \
      --output=predictions.csv [--top_k=3] [--skip_bad_inputs] [--noresize]
  python -m dlearn.predict --workdir=W --split=test --output=predictions.csv   # a prepared split

--input: an image folder or .tar/.tar.gz archive, flat (no labels) or laid out as
<class>/<image> (labelled), or a .ts file (labelled, or `@classLabel false`). Writes one CSV row
per input in input order (process 0); with labels, prints accuracy as `dlearn.evaluate` does and
writes the confusion matrix beside the CSV. The library: dlearn/prediction.py (the inputs:
dlearn/inputs.py).
"""

import sys

from absl import flags

from dlearn import cli, distributed, metrics, prediction

FLAGS = flags.FLAGS


def define_flags():
  cli.define_workdir_flags('--set=eval_batch_size=256 (a multiple of the number of devices)')
  flags.DEFINE_string(
    'input',
    None,
    'An image folder or .tar/.tar.gz archive (flat, or <class>/<image> with labels), or a .ts '
    'file. Without it: the prepared split --split.',
  )
  flags.DEFINE_string('split', None, 'A prepared split to predict instead of --input, e.g. test.')
  flags.DEFINE_string('dataset', None, 'With --split: tfds dataset name (default: trained on).')
  flags.DEFINE_string('output', None, 'CSV file to write.', required=True)
  flags.DEFINE_integer(
    'top_k', 3, 'How many classes per input, most probable first.', lower_bound=1
  )
  flags.DEFINE_bool(
    'resize',
    True,
    'Images of another size than the trained one are resized to it (bilinear, as '
    '`dlearn.prepare --image_size`); --noresize refuses them as bad inputs.',
  )
  flags.DEFINE_bool(
    'skip_bad_inputs',
    False,
    'Skip (and list) files that cannot be read; without it such a file stops the run before '
    'anything is written.',
  )
  distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags take the form --name=value.')
  if (FLAGS.input is None) == (FLAGS.split is None):
    cli.fail('give either --input=PATH (images or a .ts file) or --split=NAME (a prepared split).')
  metrics.quiet_library_logs()
  distributed.initialize_from_flags()
  try:
    result = prediction.predict(
      FLAGS.workdir,
      FLAGS.input,
      FLAGS.output,
      top_k=FLAGS.top_k,
      dataset=FLAGS.dataset,
      split=FLAGS.split,
      data_dir=FLAGS.data_dir,
      resize=FLAGS.resize,
      skip_bad_inputs=FLAGS.skip_bad_inputs,
      overrides=cli.field_values(FLAGS.set, '--set'),
    )
  except cli.USER_ERRORS as e:
    cli.fail(e)
  if result['skipped']:
    print(f'skipped {len(result["skipped"])} unreadable input(s):', file=sys.stderr)
    for _, reason in result['skipped']:
      print(f'  {reason}', file=sys.stderr)
  print(f'{result["count"]} predictions: {FLAGS.output}  ({result["rate"]:.1f} inputs/s)')
  if 'summary' in result:
    summary = result['summary']
    print(
      f'accuracy {summary["accuracy"]:.4f}  loss {summary["loss"]:.4f}  examples {summary["count"]}'
    )
    print(f'confusion matrix: {result["confusion_path"]}')


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
