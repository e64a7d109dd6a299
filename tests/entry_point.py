"""Runs dlearn's real command-line entry points in a fresh process, on tfds mock data (mocking
only works inside the process that reads the data) or, with mock=False, on data prepared in the
test."""

import os
import subprocess
import sys

NUM_EXAMPLES = 300  # mock splits ignore slicing: train and eval both hold 300; no batch divides it

_PROGRAM = """
import sys
import tensorflow_datasets as tfds
from dlearn import {module} as entry
with tfds.testing.mock_data(num_examples={num_examples}):
  sys.argv = ['dlearn'] + sys.argv[1:]
  entry.run()
"""


def command(module: str, *args: str, mock: bool = True) -> list[str]:
  if not mock:
    return [sys.executable, '-m', f'dlearn.{module}', *args]
  return [sys.executable, '-c', _PROGRAM.format(module=module, num_examples=NUM_EXAMPLES), *args]


def environment(devices: int = 8) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def run(module: str, *args: str, devices: int = 8, check: bool = True, mock: bool = True):
  result = subprocess.run(
    command(module, *args, mock=mock),
    capture_output=True,
    text=True,
    timeout=600,
    env=environment(devices),
  )
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def start(module: str, *args: str, devices: int = 8) -> subprocess.Popen:
  return subprocess.Popen(
    command(module, *args),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    env=environment(devices),
  )
