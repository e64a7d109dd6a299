"""Start a multi-process job on this machine: N processes with M CPU devices each, on loopback.

  python -m dlearn.launch --processes=2 --devices_per_process=4 -- \
      --config=experiments/configs/seed_dcnn_cifar10.py:smoke --workdir=workdirs/two_processes

Each process runs `python -m dlearn.main` (`--command=predict`: `dlearn.predict`) with the
arguments after `--`, joined by JAX's own runtime (jax.distributed) through a coordinator on
127.0.0.1. Process 0's output is shown; the
others' goes to <process_log_dir>/process_<i>.log. If one process fails, the rest are stopped and the
launcher exits with its status.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags

from dlearn import cli

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_integer('processes', 2, 'Number of processes.', lower_bound=1)
  flags.DEFINE_integer(
    'devices_per_process', 4, 'CPU devices each process simulates.', lower_bound=1
  )
  flags.DEFINE_enum(
    'command', 'main', ['main', 'predict'], 'The dlearn command every process runs.'
  )
  flags.DEFINE_string(
    'process_log_dir',
    None,
    'Where processes 1.. write their output (default: a new temporary folder).',
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(
  processes: int,
  devices_per_process: int,
  main_args: list[str],
  log_dir: str | None = None,
  command: str = 'main',
) -> int:
  log_dir = log_dir or tempfile.mkdtemp(prefix='dlearn_launch_')
  os.makedirs(log_dir, exist_ok=True)
  address = f'127.0.0.1:{_free_port()}'
  children, logs = [], []
  for index in range(processes):
    env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      DLEARN_COORDINATOR_ADDRESS=address,
      DLEARN_NUM_PROCESSES=str(processes),
      DLEARN_PROCESS_ID=str(index),
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}',
    )
    output = None
    if index:
      output = open(os.path.join(log_dir, f'process_{index}.log'), 'w')
      logs.append(output)
    children.append(
      subprocess.Popen(
        [sys.executable, '-m', f'dlearn.{command}', *main_args],
        env=env,
        stdout=output,
        stderr=output,
      )
    )
  print(
    f'dlearn.launch: {processes} processes x {devices_per_process} CPU devices, coordinator '
    f'{address}; processes 1.. log to {log_dir}',
    file=sys.stderr,
    flush=True,
  )
  status = 0
  try:
    while any(child.poll() is None for child in children):
      failed = [child for child in children if child.poll() not in (None, 0)]
      if failed:
        status = failed[0].returncode
        print(
          f'dlearn.launch: process {children.index(failed[0])} exited with status {status}; '
          'stopping the others.',
          file=sys.stderr,
          flush=True,
        )
        break
      time.sleep(0.2)
  finally:
    for child in children:
      if child.poll() is None:
        child.terminate()
    for child in children:
      try:
        child.wait(timeout=30)
      except subprocess.TimeoutExpired:
        child.kill()
    for log in logs:
      log.close()
  if status == 0:
    status = next((child.returncode for child in children if child.returncode), 0)
  return status


def main(argv):
  sys.exit(
    launch(
      FLAGS.processes, FLAGS.devices_per_process, argv[1:], FLAGS.process_log_dir, FLAGS.command
    )
  )


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
