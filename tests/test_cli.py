"""Failures a user causes on the command line: one `error:` line that names the flag, file or
config field and what to do, no traceback, exit status 1."""

import subprocess
import sys

import helpers
import pytest

from dlearn import cli
from dlearn.errors import ConfigError, UserError


@pytest.mark.parametrize(
  'error, shown_as_one_line',
  [(ConfigError('x'), True), (UserError('x'), True), (FileNotFoundError('x'), True),
   (ValueError('a bug'), False), (KeyError('a bug'), False)],
)  # fmt: skip
def test_only_the_users_errors_become_one_line(error, shown_as_one_line):
  # A ValueError from a bug keeps its traceback; dlearn raises ConfigError for bad input.
  assert isinstance(error, cli.USER_ERRORS) == shown_as_one_line


SMOKE = '--config=experiments/configs/seed_dcnn_cifar10.py:smoke'


def _error(tmp_path, module, *args):
  del tmp_path
  result = subprocess.run(
    [sys.executable, '-m', f'dlearn.{module}', *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=str(__import__('pathlib').Path(__file__).parent.parent),
  )
  return helpers.the_error_line(result)


@pytest.mark.slow  # a process per command
@pytest.mark.parametrize(
  'args,expected',
  [
    (('--config.batchsize=32',), 'error: --config.batchsize: the config has no field'),
    (('--config.batch_size=abc',), '--config.batch_size=abc: invalid literal for int()'),
    (('--config.dtype=float16',), "Unknown config.dtype 'float16': choose one of"),
    (('--config.data.name=nowhere',), "Dataset 'nowhere' was not found in data_dir"),
    (('--config.sharding=zero3',), "Unknown config.sharding 'zero3': choose one of"),
    (
      ('--config.mapping=pmap', '--config.sharding=fsdp'),
      "config.sharding='fsdp' splits the train state over the devices, which only",
    ),
    (
      ('--config.mapping=shard_map', '--config.partition.parts=3'),
      'config.partition.parts=3 must divide the 8 devices of each process',
    ),
  ],
)
def test_training_command_errors(tmp_path, args, expected):
  data_dir = f'--config.data.data_dir={tmp_path}'
  assert expected in _error(tmp_path, 'main', SMOKE, f'--workdir={tmp_path / "w"}', data_dir, *args)


@pytest.mark.slow
def test_a_missing_config_file_or_argument(tmp_path):
  line = _error(tmp_path, 'main', '--config=experiments/configs/nope.py', f'--workdir={tmp_path}')
  assert '--config=experiments/configs/nope.py: the config file could not be loaded' in line
  line = _error(
    tmp_path,
    'main',
    '--config=experiments/configs/seed_dcnn_cifar10.py:bogus',
    f'--workdir={tmp_path}',
  )
  assert "Unknown config argument 'bogus'" in line


@pytest.mark.slow
def test_prepare_and_evaluate_errors(tmp_path):
  line = _error(
    tmp_path, 'prepare', '--name=x', f'--train={tmp_path}/missing.ts', f'--data_dir={tmp_path}'
  )
  assert f'--train={tmp_path}/missing.ts: no such file or folder' in line
  line = _error(tmp_path, 'evaluate', f'--workdir={tmp_path}/none')
  assert 'config.json not found: --workdir must be the work directory of a training run' in line
