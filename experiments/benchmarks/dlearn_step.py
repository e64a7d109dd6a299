"""One dlearn training step on a synthetic batch already on the device, compiled ahead of its first
call: what `suite.py` times, and whose floating-point operations XLA counts (`flops`) for the
benchmarks' fraction of a card's peak (`fast_cifar10.py --profile`)."""

import functools
import time

import jax
import numpy as np

from dlearn import optimizers, parallel, sharding
from dlearn import steps as steps_lib
from dlearn.data.pipeline import DatasetInfo


def compiled_step(config, shape, num_classes: int, batch_size: int, steps_per_dispatch: int = 1):
  """(compiled step, its train state, its batch, seconds to compile) for `config` on one device,
  examples of `shape` (an image's [H, W, C] or a sequence's [T, F]); with steps_per_dispatch K > 1,
  K steps a call, each on the same batch."""
  kind = 'image' if len(shape) == 3 else 'sequence'
  info = DatasetInfo('synthetic', kind, shape, num_classes, tuple(map(str, range(num_classes))))
  mesh = parallel.make_mesh(jax.devices()[:1])
  tx = optimizers.create(config, 1000)
  graphdef, state = steps_lib.create_train_state(config, info, tx, mesh)
  step_args = dict(graphdef=graphdef, tx=tx, config=config, info=info)
  body = (
    functools.partial(steps_lib.train_step, **step_args)
    if steps_per_dispatch == 1
    else functools.partial(steps_lib.train_steps, num_steps=steps_per_dispatch, **step_args)
  )
  step = parallel.map_over_devices(
    body, mesh, config.mapping, state_sharding=sharding.of(state), donate_state=True
  )
  rng = np.random.default_rng(0)
  batch = {
    'label': rng.integers(0, num_classes, (batch_size,)).astype(np.int32),
    'mask': np.ones((batch_size,), np.float32),
    'index': np.arange(batch_size, dtype=np.int32),  # each example's position in its split
  }
  if kind == 'image':
    batch['image'] = rng.integers(0, 256, (batch_size, *shape), dtype=np.uint8)
  else:
    batch['sequence'] = rng.normal(size=(batch_size, *shape)).astype(np.float32)
    batch['length'] = np.full((batch_size,), shape[0], np.int32)
  if steps_per_dispatch > 1:  # [batch, K, ...]: the same batch for each of the K steps
    batch = {k: np.repeat(v[:, None], steps_per_dispatch, axis=1) for k, v in batch.items()}
  batch = parallel.to_global(batch, mesh)  # on the device once: step throughput only
  began = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return compiled, state, batch, time.perf_counter() - began


def flops(compiled) -> float | None:
  """XLA's count of a compiled step's floating-point operations (a scan's body counted once: not
  for RNNs); None where the backend gives none."""
  try:
    return compiled.cost_analysis()['flops']
  except Exception:  # cost analysis is best effort; timings do not need it
    return None
