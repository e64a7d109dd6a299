"""The device axis: one per-device step body, mapped over devices by `jax.pmap` or by `jax.jit` of
`jax.shard_map`.

A step body is written for one device and reduces over the named axis `AXIS` with `lax.pmean`/
`lax.psum`. Its first argument (the train state) is replicated: the same on every device, in and
out. Its second (the batch) is split along its leading [devices] axis. Its outputs must be the same
on every device (reduce them over `AXIS` first).

With `parts` > 1 (config.partition.parts) the mesh is 2-D, [data groups, parts] with axes
(`AXIS`, `PART_AXIS`): the `parts` devices of a group share each of the group's examples (a CNN's
image in bands of rows, an RNN's sequence in time chunks; dlearn/models/cnn.py and
pipelined_rnn.py). The batch is split over the groups and every device of a group receives the
group's whole batch (its leading axis is [groups]); the body takes its own part of each example
after augmentation, which must see the whole image. Only `jit(shard_map)` maps a 2-D mesh.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'batch'
PART_AXIS = 'part'
MAPPINGS = ('pmap', 'shard_map')


def make_mesh(devices=None, parts: int = 1) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), or with `parts` > 1 a
  [groups, parts] mesh whose groups are consecutive devices of one process."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  if parts == 1:
    return Mesh(devices, (AXIS,))
  local = jax.local_device_count() if devices.size == jax.device_count() else devices.size
  if parts < 1 or local % parts:
    raise ValueError(
      f'config.partition.parts={parts} must divide the {local} devices of each '
      f'process (the devices that share an example must be on one host); use '
      f'one of {[p for p in range(1, local + 1) if local % p == 0]}.'
    )
  return Mesh(devices.reshape(-1, parts), (AXIS, PART_AXIS))


def parts(mesh: Mesh) -> int:
  """How many devices share each example (1: plain data parallelism)."""
  return dict(mesh.shape).get(PART_AXIS, 1)


def local_device_count(mesh: Mesh) -> int:
  """The leading axis of this process's batches: its devices, or its groups of `parts` devices."""
  return len(mesh.local_devices) // parts(mesh)


def per_device_batch_size(global_batch_size: int, mesh: Mesh, what: str = 'batch_size') -> int:
  """The batch each device sees; a global batch the devices do not divide is an error here,
  before anything is compiled."""
  devices = mesh.shape[AXIS]
  if global_batch_size <= 0 or global_batch_size % devices:
    below = max(devices, global_batch_size // devices * devices)
    groups = f' groups of {parts(mesh)}' if parts(mesh) > 1 else ''
    raise ValueError(
      f'config.{what}={global_batch_size} is the global batch and must be a positive multiple '
      f'of the {devices} devices{groups} ({jax.process_count()} process(es)); use e.g. {below} '
      f'or {below + devices}.'
    )
  return global_batch_size // devices


def replicate(tree, mesh: Mesh):
  """Places a copy of `tree` on every device of `mesh`, as global jax.Arrays."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def as_global(tree, mesh: Mesh):
  """Replicated pmap outputs are host-local arrays in a multi-process job (each process holds
  only its devices' copies); orbax saves global ones. A no-op for one process."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils

  return jax.tree.map(
    lambda x: (
      multihost_utils.host_local_array_to_global_array(x, mesh, P())
      if x.is_fully_addressable
      else x
    ),
    tree,
  )


def to_global(local_batch, mesh: Mesh):
  """Host-local numpy [local_devices, per_device_batch, ...] → one global jax.Array per leaf,
  split over `mesh` along its leading axis. Every process passes its own share."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch(items: Iterator, mesh: Mesh, size: int = 2) -> Iterator:
  """(host batch, anything) → (global batch, the same thing), keeping `size` batches on their way
  to the devices while the current step runs. The second element rides along untouched (the train
  loop passes the input iterator's state after each batch, which is what a checkpoint needs)."""
  queue = collections.deque()
  for batch, extra in items:
    queue.append((to_global(batch, mesh), extra))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def wait_for_previous(previous_outputs, outputs):
  """Blocks until the previous step is done, so that at most two mapped steps are in flight.

  Enough to keep the devices busy, and it avoids a deadlock seen with forced CPU devices
  (8 devices on 2 cores, JAX 0.10.2): with many steps queued, one device never reached an all-reduce
  the other seven waited in, and XLA aborted the process after 40 s. Returns `outputs`, the next
  call's `previous_outputs`.
  """
  if previous_outputs is not None:
    jax.block_until_ready(previous_outputs)
  return outputs


def map_over_devices(
  body: Callable, mesh: Mesh, mapping: str = 'pmap', donate_state: bool = False
) -> Callable:
  """body(state, batch) → outputs, run on every device of `mesh`.

  'pmap' maps with `jax.pmap` over the batch's leading axis. 'shard_map' runs the same body under
  `jax.jit(jax.shard_map(...))`, each device seeing a [1, ...] block of the batch. Both return one
  function, compiled on its first call and reused for every later one.
  """
  donate = (0,) if donate_state else ()
  if mapping == 'pmap' and parts(mesh) > 1:
    raise ValueError(
      f'config.partition.parts={parts(mesh)} needs a 2-D device mesh, which only '
      "config.mapping='shard_map' runs: add --config.mapping=shard_map."
    )
  if mapping == 'pmap':
    return jax.pmap(
      body,
      axis_name=AXIS,
      in_axes=(None, 0),
      out_axes=None,
      devices=mesh.devices.flat,
      donate_argnums=donate,
    )
  if mapping == 'shard_map':

    def per_device(state, batch):
      return body(state, jax.tree.map(lambda x: x[0], batch))

    # check_vma=False gives the body pmap's semantics: a gradient is this device's own until the
    # body's lax.pmean. With the check on, JAX would sum gradients of replicated parameters over
    # devices by itself, and the body's pmean would then see sums, not per-device gradients.
    mapped = jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False
    )
    return jax.jit(mapped, donate_argnums=donate)
  raise ValueError(f'Unknown config.mapping {mapping!r}: choose one of {MAPPINGS}.')
