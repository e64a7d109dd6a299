"""Joining a multi-process job with JAX's own runtime (`jax.distributed`).

One process per host (or, on this machine, per group of CPU devices). Settings, first found wins:
  1. explicit: --coordinator_address, --num_processes, --process_id (or the environment variables
     DLEARN_COORDINATOR_ADDRESS, DLEARN_NUM_PROCESSES, DLEARN_PROCESS_ID);
  2. detected by JAX itself on a multi-host TPU VM slice, under SLURM or under Open MPI;
  3. none: a single-process run, which needs nothing.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from dlearn.errors import ConfigError

# How long the others wait for a process that stopped answering before they fail.
HEARTBEAT_TIMEOUT_SECONDS = 30


def _cluster_detected() -> bool:
  """True where JAX's auto-detection applies and more than one process is expected."""
  environ = os.environ
  slurm = 'SLURM_JOB_ID' in environ and int(environ.get('SLURM_NTASKS', '1')) > 1
  mpi = int(environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
  tpu_pod = ',' in environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm or mpi or tpu_pod


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Calls `jax.distributed.initialize` when this process is part of a multi-process job. Must
  run before anything touches a JAX device."""
  address = coordinator_address or os.environ.get('DLEARN_COORDINATOR_ADDRESS')
  if num_processes is None and 'DLEARN_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['DLEARN_NUM_PROCESSES'])
  if process_id is None and 'DLEARN_PROCESS_ID' in os.environ:
    process_id = int(os.environ['DLEARN_PROCESS_ID'])
  if address:
    if num_processes is None or process_id is None:
      raise ConfigError(
        'A coordinator address needs --num_processes and --process_id too (or '
        'DLEARN_NUM_PROCESSES and DLEARN_PROCESS_ID).'
      )
    jax.distributed.initialize(
      address, num_processes, process_id, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS
    )
  elif _cluster_detected():
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
  else:
    return
  logging.info(
    'Process %d of %d; %d local of %d devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def define_flags() -> None:
  """The flags of a command that runs as one process of a multi-process job."""
  flags.DEFINE_string(
    'coordinator_address',
    None,
    'Multi-process jobs: host:port of process 0 (see dlearn/distributed.py; usually detected).',
  )
  flags.DEFINE_integer('num_processes', None, 'Multi-process jobs: number of processes.')
  flags.DEFINE_integer('process_id', None, "Multi-process jobs: this process's index.")


def initialize_from_flags() -> None:
  """`initialize` with the flags of `define_flags`."""
  values = flags.FLAGS
  initialize(values.coordinator_address, values.num_processes, values.process_id)
