"""The device mesh and how a step runs on it: one step body, mapped by `jax.jit` over global arrays
(the default), `jax.pmap` or `jax.jit(jax.shard_map)` (`config.mapping`).

A step body is written once, as `body(state, batch, *, axis)`. `axis` (a `DataAxis`) says how the
body meets the data-parallel mesh axis `AXIS`:

- under 'pmap' and 'shard_map' (the article's design) the body runs on every device with that
  device's share of the batch, and reduces over `AXIS` with `lax.pmean`/`lax.psum`
  (`axis.mean`, `axis.sum`); its outputs are the same on every device;
- under 'jit' it runs once on the global batch; the same calls are then plain means and sums
  over it, the train state lives where its sharding rule puts it (dlearn/sharding.py) and XLA
  inserts the collectives (all-reduce, or all-gather and reduce-scatter for a sharded state).

What needs a device's identity in either form (its random stream, its shard of on-device data)
runs in `axis.each_device`, which under 'jit' maps it over a [devices, per-device] view of the
global batch with `jax.vmap(axis_name=AXIS)`, so all three mappings compute the same numbers.

Every batch is a global jax.Array whose leading axis is the global batch, split over `AXIS`
(`to_global`); arrays of several steps stack the steps on axis 1 ([batch, steps, ...]). Only the
pmap wrapper views it as [devices, per-device batch, ...].

With `parts` > 1 (config.partition.parts) the mesh is 2-D, [data groups, parts] with axes
(`AXIS`, `PART_AXIS`): the `parts` devices of a group share each of the group's examples (a CNN's
image in bands of rows, an RNN's sequence in time chunks; dlearn/models/cnn.py and
pipelined_rnn.py). The batch is split over the groups, every device of a group receiving the
group's share; the body takes its own part of each example after augmentation, which must see
the whole image. Only `jit(shard_map)` maps a 2-D mesh. A tensor-parallel `model` axis would be
one more mesh axis, named by a sharding rule; none exists yet.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import types
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlearn.errors import ConfigError

AXIS = 'batch'
PART_AXIS = 'part'
MAPPINGS = ('jit', 'pmap', 'shard_map')


def make_mesh(devices=None, parts: int = 1) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), or with `parts` > 1 a
  [groups, parts] mesh whose groups are consecutive devices of one process."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  if parts == 1:
    return Mesh(devices, (AXIS,))
  local = jax.local_device_count() if devices.size == jax.device_count() else devices.size
  if parts < 1 or local % parts:
    raise ConfigError(
      f'config.partition.parts={parts} must divide the {local} devices of each '
      f'process (the devices that share an example must be on one host); use '
      f'one of {[p for p in range(1, local + 1) if local % p == 0]}.'
    )
  return Mesh(devices.reshape(-1, parts), (AXIS, PART_AXIS))


def parts(mesh: Mesh) -> int:
  """How many devices share each example (1: plain data parallelism)."""
  return dict(mesh.shape).get(PART_AXIS, 1)


def per_device_batch_size(global_batch_size: int, mesh: Mesh, what: str = 'batch_size') -> int:
  """The batch each device sees; a global batch the devices do not divide is an error here,
  before anything is compiled."""
  devices = mesh.shape[AXIS]
  if global_batch_size <= 0 or global_batch_size % devices:
    below = max(devices, global_batch_size // devices * devices)
    groups = f' groups of {parts(mesh)}' if parts(mesh) > 1 else ''
    raise ConfigError(
      f'config.{what}={global_batch_size} is the global batch and must be a positive multiple '
      f'of the {devices} devices{groups} ({jax.process_count()} process(es)); use e.g. {below} '
      f'or {below + devices}.'
    )
  return global_batch_size // devices


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
  """Host-local numpy [local batch, ...] → one global jax.Array per leaf, [global batch, ...],
  split over `mesh`'s AXIS along its leading axis. Every process passes its own share."""
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

  Enough to keep the devices busy, and it avoids a deadlock of XLA's CPU collectives with many
  forced devices on few cores (README, "How the parallel step works"). Returns `outputs`, the
  next call's `previous_outputs`.
  """
  if previous_outputs is not None:
    jax.block_until_ready(previous_outputs)
  return outputs


@dataclasses.dataclass(frozen=True)
class DataAxis:
  """How a step body meets the data-parallel axis (the module docstring): `per_device` under
  'pmap' and 'shard_map' (the body sees one device's share and reduces over AXIS), not under
  'jit' (the body sees the global batch). `size`: the devices (or groups) along AXIS."""

  size: int
  per_device: bool = True

  def mean(self, tree, axes=AXIS):
    """The mean over every device of a per-device value; the value itself under 'jit'."""
    return lax.pmean(tree, axes) if self.per_device else tree

  def sum(self, tree, axes=AXIS):
    """The sum over every device of a per-device value; the value itself under 'jit'."""
    return lax.psum(tree, axes) if self.per_device else tree

  def gather(self, tree):
    """Every device's rows, concatenated along the leading axis in device order."""
    if not self.per_device:
      return tree
    return jax.tree.map(lambda x: lax.all_gather(x, AXIS, tiled=True), tree)

  def each_device(self, fn: Callable, *trees):
    """`fn(*trees)` per device, `lax.axis_index(AXIS)` naming the device: directly per device;
    under 'jit', vmapped with axis_name=AXIS over a [size, -1, ...] view of the leading axis of
    every leaf (in and out), which is how the global batch is split over the devices."""
    if self.per_device:
      return fn(*trees)
    split = lambda x: x.reshape(self.size, -1, *x.shape[1:])
    outputs = jax.vmap(fn, axis_name=AXIS)(*jax.tree.map(split, trees))
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), outputs)


def is_per_device(mapping: str) -> bool:
  """Whether `mapping` runs the body per device ('pmap', 'shard_map') or once globally ('jit')."""
  if mapping not in MAPPINGS:
    raise ConfigError(f'Unknown config.mapping {mapping!r}: choose one of {MAPPINGS}.')
  return mapping != 'jit'


def model_axis_name(mapping: str) -> str | None:
  """The axis name the models' BatchNorm layers average their statistics over under `mapping`:
  AXIS per device, None for the global batch (whose statistics are every example's already)."""
  return AXIS if is_per_device(mapping) else None


class _Pmapped:
  """`jax.pmap` of a body, called with the flat global batches the other mappings take: each is
  viewed as [devices, per-device batch, ...] before the call, and the replicated outputs come
  back as global arrays (host-local ones in a multi-process job, which orbax cannot save)."""

  def __init__(self, function, mesh: Mesh):
    self._function, self._mesh = function, mesh
    size = mesh.shape[AXIS]
    self._split = jax.jit(
      lambda batch: jax.tree.map(lambda x: x.reshape(size, -1, *x.shape[1:]), batch),
      out_shardings=NamedSharding(mesh, P(AXIS)),
    )

  def __call__(self, state, batch):
    return as_global(self._function(state, self._split(batch)), self._mesh)

  def lower(self, state, batch):
    """As `jax.jit(...).lower`: `.compile()` gives the compiled function, with the same calls."""
    lowered = self._function.lower(state, self._split(batch))
    return types.SimpleNamespace(compile=lambda: _Pmapped(lowered.compile(), self._mesh))


def map_over_devices(
  body: Callable, mesh: Mesh, mapping: str, *, state_sharding=None, donate_state: bool = False
) -> Callable:
  """body(state, batch, *, axis) → outputs, run on every device of `mesh` (module docstring).

  'jit': one `jax.jit` over global arrays; the state stays where its arrays are; with
  `state_sharding` (a tree of shardings) the first output is the new state, placed there (a train
  step), else every output is replicated. 'pmap' maps with `jax.pmap` over the batch's devices.
  'shard_map' runs the same body under `jax.jit(jax.shard_map(...))`, each device seeing its block
  of the batch. All return one function, compiled on its first call (or `.lower(...).compile()`)
  and reused for every later one. The per-device mappings need a replicated state.
  """
  donate = (0,) if donate_state else ()
  if mapping == 'pmap' and parts(mesh) > 1:
    raise ConfigError(
      f'config.partition.parts={parts(mesh)} needs a 2-D device mesh, which only '
      "config.mapping='shard_map' runs: add --config.mapping=shard_map."
    )
  axis = DataAxis(mesh.shape[AXIS], per_device=is_per_device(mapping))
  body = functools.partial(body, axis=axis)
  if mapping == 'jit':
    replicated = NamedSharding(mesh, P())
    outputs = replicated if state_sharding is None else (state_sharding, replicated)
    return jax.jit(body, out_shardings=outputs, donate_argnums=donate)
  if mapping == 'pmap':
    mapped = jax.pmap(
      body,
      axis_name=AXIS,
      in_axes=(None, 0),
      out_axes=None,
      devices=mesh.devices.flat,
      donate_argnums=donate,
    )
    return _Pmapped(mapped, mesh)
  # check_vma=False gives the body pmap's semantics: a gradient is this device's own until the
  # body's lax.pmean. With the check on, JAX would sum gradients of replicated parameters over
  # devices by itself, and the body's pmean would then see sums, not per-device gradients.
  mapped = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False)
  return jax.jit(mapped, donate_argnums=donate)
