"""Command: a config file plus command-line overrides → train and evaluate in a work directory.

  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py --workdir=/tmp/run \
      [--config.batch_size=64 ...]
"""

import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from dlearn import checkpoint, cli, distributed, metrics, train

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string(
    'workdir',
    None,
    'Directory for the resolved config, metrics and TensorBoard files.',
    required=True,
  )
  config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config file; `file.py:smoke` for a quick CPU run. Override fields with '
    '--config.FIELD=VALUE.',
    lock_config=True,
  )
  flags.mark_flags_as_required(['config'])
  distributed.define_flags()


def start(argv):
  """What a command with these flags does first (also dlearn.cross_validate): checks the command
  line, joins the other processes, and returns the config."""
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags take the form --name=value.')
  config = cli.config_or_fail(FLAGS.config, sys.argv)
  metrics.quiet_library_logs()
  distributed.initialize_from_flags()
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one log per job: process 0's
  logging.info('Config:\n%s', config)
  return config


def main(argv):
  config = start(argv)
  try:
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except cli.USER_ERRORS as e:  # the messages say what is wrong and what to do
    cli.fail(e)
  if result['preempted']:
    sys.exit(checkpoint.PREEMPTED_EXIT_STATUS)


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
