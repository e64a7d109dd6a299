"""Command: evaluate a trained work directory on any prepared dataset split.

  python -m dlearn.evaluate --workdir=workdirs/seed_dcnn [--split=validation] [--dataset=NAME]
      [--data_dir=DIR]

Prints accuracy, loss and the number of examples, and writes the confusion matrix (rows: true
class, columns: predicted) as CSV into the work directory. The library: dlearn/evaluation.py.
"""

from absl import flags

from dlearn import cli, evaluation, metrics

FLAGS = flags.FLAGS


def define_flags():
  cli.define_workdir_flags(
    '--set=fast_cnn.tta_level=0 (no test-time augmentation) or --set=eval_batch_size=256'
  )
  flags.DEFINE_string('dataset', None, 'tfds dataset name (default: the one trained on).')
  flags.DEFINE_string(
    'split',
    None,
    "Split, e.g. validation, test, train[:10%] (default: the run's evaluation split; a "
    "cross-validation fold's run: its held-out fold).",
  )
  flags.DEFINE_bool('png', True, 'Also write the confusion matrix as a PNG.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags take the form --name=value.')
  metrics.quiet_library_logs()
  try:
    overrides = cli.field_values(FLAGS.set, '--set')
    summary, _, _, path = evaluation.evaluate_workdir(
      FLAGS.workdir, FLAGS.dataset, FLAGS.split, FLAGS.data_dir, FLAGS.png, overrides
    )
  except cli.USER_ERRORS as e:
    cli.fail(e)
  print(
    f'accuracy {summary["accuracy"]:.4f}  loss {summary["loss"]:.4f}  examples {summary["count"]}'
  )
  print(f'confusion matrix: {path}' + (' and .png' if FLAGS.png else ''))


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
