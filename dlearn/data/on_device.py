"""The train split resident on the devices (`config.data.on_device`), for data that fits.

The split is read once: a fixed permutation of it (seeded by config.seed) is cut into one contiguous
shard per device, the remainder that the devices do not divide is dropped, and each shard stays on
its device as a block of one global jax.Array of shape [devices x shard_size, ...], split along
its leading axis like a host batch. Every process reads only its own devices' shards.

Inside the compiled step each device draws its batch from its own shard (`draw`): the position is a
function of the step number alone (epoch = step // steps_per_epoch, a permutation of the shard per
epoch and device, the step's slice of it, computed for that slice only), so nothing crosses from
the host per step and a resumed run continues exactly without any iterator state. Augmentation
runs in the step as for host batches; evaluation keeps the host pipeline.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlearn import parallel
from dlearn.data import pipeline
from dlearn.errors import ConfigError

# At most this fraction of a device's memory may hold the data; the rest is the model's.
MAX_MEMORY_FRACTION = 0.5
# A key stream of its own for the data order: steps fold their number into the base key, and no
# step reaches this one.
_DATA_STREAM = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a split of `num_examples` is spread over `num_devices`."""

  num_examples: int
  num_devices: int
  per_device_batch: int

  @property
  def shard_size(self) -> int:
    return self.num_examples // self.num_devices

  @property
  def dropped(self) -> int:
    return self.num_examples - self.shard_size * self.num_devices

  @property
  def steps_per_epoch(self) -> int:
    return self.shard_size // self.per_device_batch


def example_nbytes(info: pipeline.DatasetInfo) -> int:
  """Bytes of one example as `pipeline.example` decodes it (images uint8, sequences float32)."""
  if info.kind == 'image':
    return int(np.prod(info.example_shape)) + 8  # + the int32 label and index
  return int(np.prod(info.example_shape)) * 4 + 12  # + length, label and index


def _size(nbytes: float) -> str:
  for unit in ('bytes', 'KiB', 'MiB', 'GiB'):
    if nbytes < 1024 or unit == 'GiB':
      return f'{nbytes:,.0f} {unit}' if unit == 'bytes' else f'{nbytes:,.1f} {unit}'
    nbytes /= 1024


def device_memory_limit(device) -> int | None:
  """The bytes a device can allocate, where the backend says (GPU, TPU); None on CPU."""
  try:
    stats = device.memory_stats()
  except Exception:  # some backends do not implement it
    return None
  return (stats or {}).get('bytes_limit')


def check(layout: Layout, info: pipeline.DatasetInfo, split: str, devices) -> None:
  """Refuses, before anything is read or compiled, a split that cannot live on the devices."""
  if info.transform is not None:
    raise ConfigError(
      f'config.data.on_device=True: split {split!r} holds encoded images, decoded and cropped '
      'anew every epoch on the host; set config.data.on_device=False (or prepare the dataset '
      'with --store=array --image_size=H,W to keep decoded arrays).'
    )
  if layout.shard_size < layout.per_device_batch:
    raise ConfigError(
      f'config.data.on_device=True: split {split!r} ({layout.num_examples} examples) gives each '
      f'of the {layout.num_devices} devices {layout.shard_size} examples, fewer than its batch '
      f'of {layout.per_device_batch}; use a smaller config.batch_size, or set '
      'config.data.on_device=False.'
    )
  nbytes = layout.shard_size * example_nbytes(info)
  for device in devices:
    limit = device_memory_limit(device)
    if limit is not None and nbytes > MAX_MEMORY_FRACTION * limit:
      raise ConfigError(
        f'config.data.on_device=True: split {split!r} needs {_size(nbytes)} on each device '
        f'({layout.shard_size} examples of {example_nbytes(info)} bytes), more than '
        f'{MAX_MEMORY_FRACTION:.0%} of the {_size(limit)} of {device.device_kind} '
        f'(the rest is for the model); set config.data.on_device=False to stream it from the '
        'host instead.'
      )


def shard_indices(layout: Layout, seed: int) -> np.ndarray:
  """[devices, shard_size] example indices: device d holds the d-th block of a fixed permutation
  (so every shard is a random sample of the split, whatever order it was stored in), each block
  sorted (reading in storage order is faster; the step shuffles anyway)."""
  order = np.random.default_rng(seed).permutation(layout.num_examples)
  blocks = order[: layout.num_devices * layout.shard_size].reshape(layout.num_devices, -1)
  return np.sort(blocks, axis=1)


def _read(source, indices: np.ndarray, info: pipeline.DatasetInfo) -> dict[str, np.ndarray]:
  """The examples at `indices`, decoded as the host pipeline decodes them, stacked."""
  dataset = (
    grain.MapDataset.range(len(indices))
    .map(lambda i: pipeline.example(source[int(indices[i])], info))
    .batch(1024)
  )
  chunks = list(dataset.to_iter_dataset(pipeline.READ_OPTIONS))
  return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def load(source, info: pipeline.DatasetInfo, layout: Layout, mesh, seed: int):
  """The split as global jax.Arrays [devices x shard_size, ...] split over `mesh` along the
  leading axis (AXIS), a shard per device; this process reads only the shards of its own
  devices."""
  indices = shard_indices(layout, seed)
  # One shard per data-parallel position along AXIS; with config.partition.parts > 1 the devices
  # of a group (all on one process) share their group's shard, as they share its batches.
  groups = np.asarray(mesh.devices).reshape(mesh.shape[parallel.AXIS], -1)
  positions = [i for i, group in enumerate(groups) if group[0].process_index == jax.process_index()]
  local = _read(source, indices[positions].ravel(), info)
  local = {k: v.reshape(len(positions), layout.shard_size, *v.shape[1:]) for k, v in local.items()}
  local['index'] = indices[positions].astype(np.int32)  # each example's position in the split
  slot = {position: i for i, position in enumerate(positions)}
  sharding = NamedSharding(mesh, P(parallel.AXIS))

  def place(array):
    shape = (layout.num_devices * layout.shard_size, *array.shape[2:])
    return jax.make_array_from_callback(
      shape, sharding, lambda index: array[slot[(index[0].start or 0) // layout.shard_size]]
    )

  data = {k: place(v) for k, v in local.items()}
  logging.info(
    'On-device data: %d examples, %d per device (%s); %d dropped (the remainder '
    'after dividing by %d devices).',
    layout.num_examples,
    layout.shard_size,
    _size(layout.shard_size * example_nbytes(info)),
    layout.dropped,
    layout.num_devices,
  )
  return data


_ROUNDS = 24  # swap-or-not rounds: each element takes part in 24 random pairings


def _hash(x):
  """A 32-bit integer mixer (`lowbias32`): every output bit depends on every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def permuted(key, positions, size: int):
  """Where `positions` (int, in [0, size)) go under a random permutation of [0, size) chosen by
  `key`, computed for these positions only: the swap-or-not shuffle (Hoang, Morris and Rogaway,
  2012). Each round pairs x with k - x (mod size) for a random k and swaps the pair or not by a
  keyed hash of the pair, so each round is a permutation of exactly [0, size), any size, with a
  fixed amount of work: O(len(positions) x rounds) per step, no loop that depends on the data,
  where a `jax.random.permutation` sorts the whole shard every step."""
  offset_key, hash_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (_ROUNDS,), 0, size, jnp.uint32)
  hash_keys = jax.random.bits(hash_key, (_ROUNDS,), jnp.uint32)
  size = jnp.uint32(size)
  x = positions.astype(jnp.uint32)
  for r in range(_ROUNDS):
    partner = (offsets[r] + size - x) % size
    swap = (_hash(jnp.maximum(x, partner) ^ hash_keys[r]) & 1) == 1
    x = jnp.where(swap, partner, x)
  return x.astype(jnp.int32)


def batch_indices(base_key_data, step, layout: Layout):
  """Positions in this device's shard of step `step`'s batch: the step's slice of this epoch's
  permutation of the shard (one per epoch and device). Within an epoch every position is drawn
  once; the last shard_size % per_device_batch of each epoch's order are not drawn."""
  epoch, position = jnp.divmod(step, layout.steps_per_epoch)
  key = jax.random.fold_in(jax.random.wrap_key_data(base_key_data), _DATA_STREAM)
  key = jax.random.fold_in(jax.random.fold_in(key, epoch), lax.axis_index(parallel.AXIS))
  slots = position * layout.per_device_batch + jnp.arange(layout.per_device_batch)
  return permuted(key, slots, layout.shard_size)


def draw(shard, base_key_data, step, layout: Layout):
  """This device's batch of step `step` from its shard {key: [shard_size, ...]}, with a mask."""
  indices = batch_indices(base_key_data, step, layout)
  batch = {k: jnp.take(v, indices, axis=0) for k, v in shard.items()}
  return {**batch, 'mask': jnp.ones((layout.per_device_batch,), jnp.float32)}
