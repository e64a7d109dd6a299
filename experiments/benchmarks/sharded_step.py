"""What sharding_memory.py and scaling_estimate.py share: dlearn's train step for a ResNet, compiled
from abstract shapes only (`jax.ShapeDtypeStruct`s carrying their shardings, `.lower().compile()`:
no array of the model is ever allocated), and what the compiled step says about itself (memory per
device, FLOPs, the collectives in its HLO). Also the one-subprocess-per-device-count driver: forced
CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) are fixed when jax starts, so
each device count is its own process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's dlearn

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from dlearn import configs, optimizers, parallel, sharding, steps  # noqa: E402
from dlearn.data.pipeline import DatasetInfo  # noqa: E402

ROW = 'ROW '  # a worker's result line: ROW <json>
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
DTYPE_BYTES = {
  'pred': 1,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}


def config_for(
  width=64,
  stage_sizes=(2, 2, 2, 2),
  rule='replicate',
  fsdp_min_size_mib=None,
  optimizer='adamw',
  dtype='float32',
):
  """dlearn's base config for a CIFAR-style ResNet (dlearn/models/cnn.py: 3x3 stem, no pooling
  before the stages) under `rule` (fsdp_min_size_mib None: dlearn's default); no augmentation
  (the step as suite.py times it)."""
  config = configs.base()
  if fsdp_min_size_mib is None:
    fsdp_min_size_mib = config.fsdp_min_size_mib
  config.model, config.optimizer, config.dtype = 'resnet', optimizer, dtype
  config.resnet.width, config.resnet.stage_sizes = width, tuple(stage_sizes)
  config.mapping, config.sharding, config.fsdp_min_size_mib = 'jit', rule, fsdp_min_size_mib
  config.data.augment = False
  return config


def image_info(size, num_classes):
  return DatasetInfo(
    'synthetic', 'image', (size, size, 3), num_classes, tuple(str(i) for i in range(num_classes))
  )


def nbytes(tree) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract_batch(mesh, global_batch, example_shape):
  split = NamedSharding(mesh, P(parallel.AXIS))
  return {
    'image': jax.ShapeDtypeStruct((global_batch, *example_shape), jnp.uint8, sharding=split),
    'label': jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=split),
    'mask': jax.ShapeDtypeStruct((global_batch,), jnp.float32, sharding=split),
  }


def compile_step(config, info, mesh, per_device_batch):
  """dlearn's train step as the trainer maps it (tests/helpers.py:mapped_step), compiled for the
  abstract state placed by config.sharding and a global batch of `per_device_batch` per device.
  Returns (compiled, abstract state, its shardings, compile seconds)."""
  tx = optimizers.create(config, 1000)
  graphdef, abstract, shardings = steps.state_shardings(config, info, tx, mesh)
  step = parallel.map_over_devices(
    functools.partial(steps.train_step, graphdef=graphdef, tx=tx, config=config, info=info),
    mesh,
    'jit',
    state_sharding=shardings,
    donate_state=True,
  )
  placed = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
  )
  batch = abstract_batch(mesh, per_device_batch * mesh.shape[parallel.AXIS], info.example_shape)
  start = time.perf_counter()
  compiled = step.lower(placed, batch).compile()
  return compiled, abstract, shardings, time.perf_counter() - start


def state_summary(abstract, shardings, devices):
  total = nbytes(abstract)
  per_device = sharding.bytes_per_device(abstract, shardings)
  return {
    'parameters': sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)),
    'state_bytes': total,
    'state_bytes_per_device': per_device,
    'ratio_to_even_split': per_device / (total / devices),
  }


def memory(compiled) -> dict:
  """Per device, from the compiled executable (the SPMD program each device runs)."""
  m = compiled.memory_analysis()
  return {
    'argument_bytes': m.argument_size_in_bytes,
    'output_bytes': m.output_size_in_bytes,
    'temp_bytes': m.temp_size_in_bytes,
    'alias_bytes': m.alias_size_in_bytes,
  }


def flops(compiled) -> float:
  """FLOPs of the compiled (per-device) program: `cost_analysis()` is a dict in recent JAX, a list
  of dicts (one per HLO module) in older ones."""
  costs = compiled.cost_analysis()
  costs = [costs] if isinstance(costs, dict) else list(costs)
  return float(sum(c.get('flops', 0.0) for c in costs))


_SHAPE = re.compile(r'\b([a-z]+[0-9]*)\[([0-9,]*)\]')
_COLLECTIVE = re.compile(
  r'=\s+(?P<shape>.*?)\s+(?P<op>' + '|'.join(COLLECTIVES) + r')(?P<suffix>-start|-done)?\('
)


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO result type, e.g. '(f32[64]{0}, bf16[3,3,8,8]{...})'."""
  return sum(
    math.prod(int(d) for d in dims.split(',') if d) * DTYPE_BYTES[dtype]
    for dtype, dims in _SHAPE.findall(text)
    if dtype in DTYPE_BYTES
  )


def collectives(hlo_text: str, devices: int) -> dict:
  """Count and bytes of each collective in an HLO module's text, from its result shapes. An async
  pair (`-start`/`-done`, as GPU HLO has) counts once, by its `-done`. `bytes` is the full size
  the ring formulas take: the result for all-reduce, all-gather (the gathered array), all-to-all
  and collective-permute; the result times `devices` for reduce-scatter (its result is a shard).
  Every collective is taken to span all `devices` (a 1-D data mesh)."""
  found = {op: {'count': 0, 'bytes': 0} for op in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if not match or match['suffix'] == '-start':
      continue
    size = shape_bytes(match['shape'])
    found[match['op']]['count'] += 1
    found[match['op']]['bytes'] += size * (devices if match['op'] == 'reduce-scatter' else 1)
  return found


def sharded_parameter_bytes(abstract, shardings) -> int:
  """Whole bytes of the parameters that the rule splits (their gradients are what a reduce-scatter
  would reduce)."""
  return sum(
    math.prod(x.shape) * np.dtype(x.dtype).itemsize
    for x, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params))
    if any(axis is not None for axis in s.spec)
  )


def worker_mesh():
  return parallel.make_mesh(jax.devices())


def emit(row: dict) -> None:
  print(ROW + json.dumps(row), flush=True)


def run_workers(script: str, device_counts, args) -> list[dict]:
  """Runs `script --worker --devices=N *args` once per N, each with N forced CPU devices, and
  returns the rows they emit in order. A failed worker stops everything with its stderr."""
  rows = []
  for devices in device_counts:
    others = re.sub(
      r'--xla_force_host_platform_device_count=\S+', '', os.environ.get('XLA_FLAGS', '')
    )
    env = {
      **os.environ,
      'XLA_FLAGS': f'{others.strip()} --xla_force_host_platform_device_count={devices}'.strip(),
    }
    command = [sys.executable, script, '--worker', f'--devices={devices}', *args]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
      sys.stderr.write(result.stderr[-5000:])
      raise SystemExit(f'{" ".join(command)} failed (exit {result.returncode})')
    found = [
      json.loads(line[len(ROW) :]) for line in result.stdout.splitlines() if line.startswith(ROW)
    ]
    print(
      f'  [{devices} device(s): {len(found)} row(s) in {time.perf_counter() - start:.0f} s]',
      flush=True,
    )
    rows.extend(found)
  return rows
