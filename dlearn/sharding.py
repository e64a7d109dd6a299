"""Where each array of the train state lives on the device mesh: a rule, chosen by
`config.sharding` (after big_vision's `sharding.py` and its `fsdp` rule).

A rule maps one abstract array (shape, dtype) to a `PartitionSpec` over the mesh. The train state
is created already placed by it (`jax.jit(init, out_shardings=...)`), restored onto it from any
checkpoint, and the 'jit' step keeps it there: XLA inserts the collectives the placement needs.

- 'replicate': a whole copy on every device (data parallelism; the per-device mappings need it).
- 'fsdp': each array of at least `config.fsdp_min_size_mib` split over the data axis along its
  largest dimension that the number of devices divides (ties: the later dimension), so parameters,
  their optimizer state and large statistics take about 1/N of the memory on each of N devices;
  smaller arrays, and those with no such dimension, stay replicated.

A new rule is one function in `RULES`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlearn.errors import ConfigError
from dlearn.parallel import AXIS


def replicate(x, mesh: Mesh, min_bytes: float) -> P:
  del x, mesh, min_bytes
  return P()


def fsdp(x, mesh: Mesh, min_bytes: float) -> P:
  devices = mesh.shape[AXIS]
  if devices == 1 or x.size * np.dtype(x.dtype).itemsize < min_bytes:
    return P()
  # Largest dimension first; among equal ones the later (stable sort, reversed).
  for dim in np.argsort(x.shape, kind='stable')[::-1]:
    if x.shape[dim] % devices == 0:
      return P(*(AXIS if d == dim else None for d in range(len(x.shape))))
  return P()


RULES: dict[str, Callable] = {'replicate': replicate, 'fsdp': fsdp}


def check(config) -> None:
  """Refuses, before anything is read or compiled, a rule that does not exist or does not fit
  the mapping."""
  if config.sharding not in RULES:
    raise ConfigError(f'Unknown config.sharding {config.sharding!r}: choose one of {tuple(RULES)}.')
  if config.sharding != 'replicate' and config.mapping != 'jit':
    raise ConfigError(
      f'config.sharding={config.sharding!r} splits the train state over the devices, which only '
      f"config.mapping='jit' runs (config.mapping={config.mapping!r} keeps a whole copy on "
      'every device): add --config.mapping=jit or --config.sharding=replicate.'
    )
  if config.fsdp_min_size_mib < 0:
    raise ConfigError(
      f'config.fsdp_min_size_mib={config.fsdp_min_size_mib} must be 0 or more (MiB).'
    )


def specs(abstract_tree, mesh: Mesh, config):
  """The `PartitionSpec` of every array of `abstract_tree` under config.sharding."""
  check(config)
  rule, min_bytes = RULES[config.sharding], config.fsdp_min_size_mib * 2**20
  return jax.tree.map(lambda x: rule(x, mesh, min_bytes), abstract_tree)


def shardings(abstract_tree, mesh: Mesh, config):
  """The `NamedSharding` of every array of `abstract_tree` under config.sharding."""
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec),
    specs(abstract_tree, mesh, config),
    is_leaf=lambda x: isinstance(x, P),
  )


def of(tree):
  """The sharding of every array of `tree` (where a placed state lives)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def bytes_per_device(abstract_tree, sharding_tree) -> int:
  """The bytes of `abstract_tree`'s arrays that each device holds when placed by `sharding_tree`
  (the rules split evenly, so every device holds the same)."""
  return sum(
    int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
    for x, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(sharding_tree))
  )
