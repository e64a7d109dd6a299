"""Training data behind one interface, whichever way it reaches the devices.

`create(config, source, info, mesh)` returns the host pipeline (`HostTrainData`: grain reads
batches, which travel to the devices every dispatch) or, with `config.data.on_device`, the split
resident on the devices (`DeviceTrainData`: read once, each step draws its batch inside the
compiled step). Both offer what the loop needs, so the loop has no host-or-device branch:

- `steps_per_epoch`, checked (with the split's size) when the object is made, before anything is
  read or compiled;
- `load()`: any reading up front (timed by the loop);
- `dispatches(plan)`: for each (steps before, steps in it) of the dispatch plan, the dispatch's
  inputs as global arrays and the data position after it (what a checkpoint records);
- `draw`: None, or the per-step batch function `train_steps` applies to resident inputs;
- `restore(position)`: continue from a checkpoint's position.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from dlearn import parallel
from dlearn.data import on_device, pipeline
from dlearn.errors import ConfigError


def create(config, source, info, mesh):
  data = DeviceTrainData if config.data.on_device else HostTrainData
  return data(config, source, info, mesh)


def _check_steps_per_epoch(steps_per_epoch: int, config, source):
  if steps_per_epoch == 0:
    raise ConfigError(
      f'Split {config.data.train_split!r} of {config.data.name!r} has {len(source)} examples, '
      f'fewer than one global batch (config.batch_size={config.batch_size}).'
    )


class HostTrainData:
  """grain batches, [local batch, ...], stacked [local batch, K, ...] for a dispatch of K steps,
  kept two dispatches ahead on their way to the devices."""

  draw = None

  def __init__(self, config, source, info, mesh):
    self.steps_per_epoch = len(source) // config.batch_size
    _check_steps_per_epoch(self.steps_per_epoch, config, source)
    self._mesh = mesh
    self._batches = pipeline.train_iterator(
      source,
      info,
      local_batch_size=config.batch_size // jax.process_count(),
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      workers=pipeline.worker_count(config.data.worker_count, info),
    )

  def load(self):
    pass  # batches are read as they are needed

  def dispatches(self, plan):
    def on_host():
      for _, length in plan:
        batches = [next(self._batches) for _ in range(length)]
        if length > 1:
          batches = [jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)]
        yield batches[0], self._batches.get_state()

    return parallel.prefetch(on_host(), self._mesh)

  def restore(self, position: dict):
    if not position:  # saved by a run of no steps: nothing read yet
      return
    if position.get('on_device'):
      logging.warning(
        'The checkpoint was written with config.data.on_device=True: the host pipeline starts '
        'its order from the beginning.'
      )
      return
    self._batches.set_state(position)


def _draw(shard, state, *, layout):
  return on_device.draw(shard, state.rng, state.step, layout)


class DeviceTrainData:
  """The split resident on the devices (dlearn/data/on_device.py); nothing moves per dispatch."""

  def __init__(self, config, source, info, mesh):
    self._layout = on_device.Layout(
      len(source),
      mesh.shape[parallel.AXIS],
      parallel.per_device_batch_size(config.batch_size, mesh),
    )
    on_device.check(self._layout, info, config.data.train_split, mesh.local_devices)
    self.steps_per_epoch = self._layout.steps_per_epoch
    _check_steps_per_epoch(self.steps_per_epoch, config, source)
    self._source, self._info, self._mesh, self._seed = source, info, mesh, config.seed
    self._position = {'on_device': True, 'shards': mesh.shape[parallel.AXIS], 'seed': config.seed}
    self.draw = functools.partial(_draw, layout=self._layout)
    self._data = None

  def load(self):
    self._data = on_device.load(self._source, self._info, self._layout, self._mesh, self._seed)

  def dispatches(self, plan):
    for _ in plan:
      yield self._data, self._position

  def restore(self, position: dict):
    if not position.get('on_device'):
      logging.warning(
        'The checkpoint was written with the host pipeline: on-device data goes on in its own '
        'order.'
      )
    elif (position.get('shards'), position.get('seed')) != (
      self._position['shards'],
      self._position['seed'],
    ):
      logging.warning(
        'On-device data was cut into %s shards with seed %s when the checkpoint was written, now '
        '%d and %d: the data order differs from an uninterrupted run.',
        position.get('shards'),
        position.get('seed'),
        self._position['shards'],
        self._position['seed'],
      )
