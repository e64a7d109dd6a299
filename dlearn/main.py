"""Entry point: a config file plus command-line overrides → train and evaluate in a work directory.

  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py --workdir=/tmp/run \
      [--config.batch_size=64 ...]
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dlearn import checkpoint, metrics, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for the resolved config, metrics and TensorBoard '
                    'files.', required=True)
config_flags.DEFINE_config_file('config', None, 'Experiment config file; `file.py:smoke` for a '
                                'quick CPU run. Override fields with --config.FIELD=VALUE.',
                                lock_config=True)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  metrics.quiet_library_logs()
  logging.info('Config:\n%s', FLAGS.config)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.NonFiniteError, train.IncompatibleConfigError,
          checkpoint.CheckpointWriteError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  if result['preempted']:
    sys.exit(checkpoint.PREEMPTED_EXIT_STATUS)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
