"""Optimizers by name (`config.optimizer`): each a function (config, total_steps, steps_per_epoch)
→ optax.GradientTransformation.

A recipe with its own optimizer (a partition of the parameters into groups with their own
transforms and schedules) registers one here with `register`; the trainer only calls `create`.
"""

from __future__ import annotations

from collections.abc import Callable

import optax


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """`config.schedule`: 'constant', or 'cosine' decay after `config.warmup_steps` of warm-up."""
  warmup_steps = int(config.warmup_steps)
  if config.schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
    )
  raise ValueError(f"Unknown config.schedule {config.schedule!r}: 'constant' or 'cosine'.")


def sgd(config, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  del steps_per_epoch
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(
      learning_rate_schedule(config, total_steps),
      momentum=config.momentum or None,
      nesterov=config.nesterov,
    ),
  )


def adamw(config, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  del steps_per_epoch
  return optax.adamw(learning_rate_schedule(config, total_steps), weight_decay=config.weight_decay)


_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {'sgd': sgd, 'adamw': adamw}


def register(name: str, make: Callable[..., optax.GradientTransformation]) -> None:
  """Makes `config.optimizer=name` call `make(config, total_steps, steps_per_epoch)`."""
  _OPTIMIZERS[name] = make


def create(config, total_steps: int, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  if config.optimizer not in _OPTIMIZERS:
    raise ValueError(
      f'Unknown config.optimizer {config.optimizer!r}: choose one of {tuple(_OPTIMIZERS)}.'
    )
  return _OPTIMIZERS[config.optimizer](config, total_steps, steps_per_epoch)
