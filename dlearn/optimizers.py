"""Optimizers by name (`config.optimizer`): each a function (config, total_steps, steps_per_epoch)
→ optax.GradientTransformation.

A recipe with its own optimizer (a partition of the parameters into groups with their own
transforms and schedules) registers one here with `register`; the trainer only calls `create`.

The fast CIFAR-10 recipe (airbench94, ../shared/peers/airbench/airbench94_muon.py) registers
`fast_cnn`.

`muon`: the reference's Muon for convolution filters, as an optax transformation. It is not
`optax.contrib.muon`, which differs from the reference in four ways: its momentum is an average
(1 - β)·g with bias correction, whose Nesterov mix of momentum and gradient changes over the first
steps, where the reference sums (buf = m·buf + g, g + m·buf); it scales the update by
sqrt(max(1, fan_out / fan_in)); it does not renormalise the weights; and it needs dimension numbers
for 4-D kernels. Here each step, as the reference's:
  buf ← m·buf + g;  g' = g + m·buf (Nesterov) or buf;
  p ← p · sqrt(out_channels) / ||p||_F            (each filter bank renormalised, before the step)
  p ← p - lr · NS(g' as a matrix [out_channels, everything else])
with NS the quintic Newton-Schulz orthogonalisation (`newton_schulz`). Kernels are HWIO, so the
output channels are the last axis (torch's [out, in, kh, kw] has them first); the column order of
the matrix does not matter (NS(G P) = NS(G) P for a permutation P). The optax update is the
difference p_new - p, so `optax.apply_updates` lands on the reference's p_new.

`fast_cnn_optimizer`: the recipe's partition of FastCNN's parameters (Muon for the filters, Nesterov
SGD for the whitening bias, the BatchNorm biases and the head), its learning rates, linear decays
and weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dlearn import configs
from dlearn.errors import ConfigError


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """`config.schedule`: 'constant', or 'cosine' decay after `config.warmup_steps` of warm-up."""
  warmup_steps = int(config.warmup_steps)
  if config.schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
    )
  raise ConfigError(f"Unknown config.schedule {config.schedule!r}: 'constant' or 'cosine'.")


WEIGHT_DECAY_MASKS = ('all', 'matrices')


def _is_matrix(path, leaf) -> bool:
  names = [name.lower() for name in _path_names(path)]
  embedding = any('embed' in name or name in ('cls', 'class_token') for name in names)
  return len(leaf.shape) > 1 and not embedding


def weight_decay_mask(config):
  """What `config.weight_decay` applies to (`config.weight_decay_mask`): None for every
  parameter ('all'), or a function of the parameters giving True for the matrices and kernels
  only ('matrices': not the scales and biases of norms, other biases, embeddings, position
  embeddings or class tokens, by shape and by name), as ViT and DeiT recipes decay."""
  if config.weight_decay_mask not in WEIGHT_DECAY_MASKS:
    raise ConfigError(
      f'Unknown config.weight_decay_mask {config.weight_decay_mask!r}: one of {WEIGHT_DECAY_MASKS}.'
    )
  if config.weight_decay_mask == 'all':
    return None
  return lambda params: jax.tree_util.tree_map_with_path(_is_matrix, params)


def sgd(config, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  del steps_per_epoch
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask(config)),
    optax.sgd(
      learning_rate_schedule(config, total_steps),
      momentum=config.momentum or None,
      nesterov=config.nesterov,
    ),
  )


def adamw(config, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  del steps_per_epoch
  return optax.adamw(
    learning_rate_schedule(config, total_steps),
    weight_decay=config.weight_decay,
    mask=weight_decay_mask(config),
  )


# ------------------------------------------------------------------------------------------------
# Muon
# ------------------------------------------------------------------------------------------------
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
  G,
  steps: int = 3,
  *,
  eps: float = 1e-7,
  dtype=jnp.float32,
  coefficients=NEWTON_SCHULZ_COEFFICIENTS,
):
  """The quintic Newton-Schulz iteration towards the orthogonal factor of the 2-D matrix G (its
  singular values are sent to about 0.5 ... 1.5, not exactly 1; the recipe is tuned for that).

  G is divided by its Frobenius norm + eps (computed in float32), cast to `dtype` (the reference
  uses bfloat16 on a GPU), transposed when it has more rows than columns, so that X Xᵀ is the
  smaller product, then `steps` times X ← a X + (b A + c A²) X with A = X Xᵀ. Returns `dtype`.
  """
  if G.ndim != 2:
    raise ValueError(f'newton_schulz takes a matrix, got shape {G.shape}.')
  a, b, c = coefficients
  X = G.astype(jnp.float32)
  X = (X / (jnp.linalg.norm(X) + eps)).astype(dtype)
  tall = G.shape[0] > G.shape[1]
  if tall:
    X = X.T
  for _ in range(steps):
    A = X @ X.T
    B = b * A + c * A @ A
    X = a * X + B @ X
  return X.T if tall else X


def orthogonalize_filters(g, steps: int = 3, *, eps: float = 1e-7, dtype=jnp.float32):
  """`newton_schulz` of an HWIO kernel (or [in, out] matrix) seen as [out, in·kh·kw], back in its
  own shape and dtype."""
  matrix = jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)
  ortho = newton_schulz(matrix, steps, eps=eps, dtype=dtype).astype(g.dtype)
  return jnp.moveaxis(ortho.reshape(g.shape[-1], *g.shape[:-1]), 0, -1)


class MuonState(NamedTuple):
  count: jax.Array  # steps taken, for the learning-rate schedule
  momentum: optax.Updates  # the reference's momentum buffer


def muon(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float,
  nesterov: bool = True,
  *,
  ns_steps: int = 3,
  eps: float = 1e-7,
  dtype=jnp.float32,
) -> optax.GradientTransformation:
  """The reference's Muon (see the module's docstring) for kernels whose last axis is the output
  channels. The update renormalises the parameters, so `update` needs `params`. `dtype`: of the
  Newton-Schulz iteration (bfloat16 as the reference on a GPU; float32 on a CPU, where bfloat16
  matrix products are slow)."""

  def init(params):
    return MuonState(count=jnp.zeros([], jnp.int32), momentum=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('muon renormalises the weights: pass params to update.')
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    buffers = jax.tree.map(lambda b, g: momentum * b + g, state.momentum, updates)
    if nesterov:
      directions = jax.tree.map(lambda g, b: g + momentum * b, updates, buffers)
    else:
      directions = buffers

    def step(p, d):
      renormalised = p * (math.sqrt(p.shape[-1]) / jnp.linalg.norm(p))
      ortho = orthogonalize_filters(d, ns_steps, eps=eps, dtype=dtype)
      return (renormalised - lr * ortho - p).astype(p.dtype)

    new_updates = jax.tree.map(step, params, directions)
    return new_updates, MuonState(count=optax.safe_increment(state.count), momentum=buffers)

  return optax.GradientTransformation(init, update)


# ------------------------------------------------------------------------------------------------
# The recipe's partition
# ------------------------------------------------------------------------------------------------
FILTERS, WHITENING_BIAS, NORM_BIASES, HEAD = 'filters', 'whitening_bias', 'norm_biases', 'head'


def _path_names(path) -> list[str]:
  names = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        names.append(str(getattr(key, attribute)))
        break
  return names


def _label(path, leaf) -> str:
  names = _path_names(path)
  if len(leaf.shape) == 4:
    return FILTERS
  if 'whitening_bias' in names:
    return WHITENING_BIAS
  if names and names[0] == 'head':
    return HEAD
  if any(name.startswith('norm') for name in names) and 'bias' in names:
    return NORM_BIASES
  raise ConfigError(
    f'fast_cnn_optimizer has no group for parameter {"/".join(names)} of shape '
    f'{tuple(leaf.shape)}: it is written for FastCNN (dlearn/models/fast_cnn.py).'
  )


def fast_cnn_labels(params):
  """The optimizer group of each of FastCNN's trainable parameters (a tree like `params`: an
  nnx.State, a plain dict or abstract shapes): 4-D kernels 'filters', the whitening bias
  'whitening_bias', BatchNorm biases 'norm_biases', the head's kernel 'head'."""
  return jax.tree_util.tree_map_with_path(_label, params)


def fast_cnn_optimizer(
  params=None,
  *,
  total_steps: int,
  whiten_bias_steps: int,
  batch_size: int,
  filter_lr: float = 0.24,
  filter_momentum: float = 0.6,
  bias_lr: float = 0.053,
  head_lr: float = 0.67,
  sgd_momentum: float = 0.85,
  weight_decay: float = 2e-6,
  muon_dtype=jnp.float32,
) -> optax.GradientTransformation:
  """The recipe's optimizer for FastCNN, for gradients of the loss summed over the global batch
  of `batch_size` examples (the reference's `reduction='sum'`).

  - filters (4-D kernels): `muon(filter_lr, filter_momentum)`, the rate decaying linearly to 0
    over `total_steps`;
  - whitening bias: Nesterov SGD at `bias_lr`, decaying linearly to 0 at `whiten_bias_steps` and 0
    after (the reference stops its gradient then; a zero rate leaves it as still);
  - BatchNorm biases (`bias_lr`) and head kernel (`head_lr`): Nesterov SGD (momentum
    `sgd_momentum`), decaying linearly to 0 over `total_steps`.
  Weight decay as the reference's torch SGD groups: wd = `weight_decay` x `batch_size`, added to
  the gradient as (wd / initial lr) x p before the momentum, so the decay follows the rate's
  schedule. The filters have none (Muon's renormalisation fixes their norm).

  `params` (optional) is checked now, so that a parameter with no group fails here rather than in
  the first step; the groups are taken from whatever tree `init` and `update` receive.
  """
  if params is not None:
    fast_cnn_labels(params)
  decay = weight_decay * batch_size

  def sgd(lr, steps):
    schedule = optax.linear_schedule(lr, 0.0, steps)
    return optax.chain(
      optax.add_decayed_weights(decay / lr),
      optax.sgd(schedule, momentum=sgd_momentum, nesterov=True),
    )

  return optax.partition(
    {
      FILTERS: muon(
        optax.linear_schedule(filter_lr, 0.0, total_steps), filter_momentum, dtype=muon_dtype
      ),
      WHITENING_BIAS: sgd(bias_lr, whiten_bias_steps),
      NORM_BIASES: sgd(bias_lr, total_steps),
      HEAD: sgd(head_lr, total_steps),
    },
    fast_cnn_labels,
  )


def fast_cnn(config, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """`fast_cnn_optimizer` with config.fast_cnn's settings (experiments/configs/fast_cifar10.py)."""
  recipe = config.fast_cnn
  return fast_cnn_optimizer(
    total_steps=total_steps,
    whiten_bias_steps=max(1, int(recipe.whitening_bias_epochs * steps_per_epoch)),
    batch_size=config.batch_size,
    filter_lr=recipe.filter_lr,
    filter_momentum=recipe.filter_momentum,
    bias_lr=recipe.bias_lr,
    head_lr=recipe.head_lr,
    sgd_momentum=recipe.sgd_momentum,
    weight_decay=recipe.weight_decay,
    muon_dtype=jnp.dtype(recipe.muon_dtype),
  )


# ------------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------------
_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  'sgd': sgd,
  'adamw': adamw,
  'fast_cnn': fast_cnn,
}


def register(name: str, make: Callable[..., optax.GradientTransformation]) -> None:
  """Makes `config.optimizer=name` call `make(config, total_steps, steps_per_epoch)`."""
  _OPTIMIZERS[name] = make


def create(config, total_steps: int, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The optimizer of `config` for a run of `total_steps`: one object for the runs of a program
  in a process (`configs.per_program`: a cross-validation's folds of one length), so that they
  share what is compiled for it (`steps.create_train_state`)."""
  return _create(config, total_steps, steps_per_epoch, _OPTIMIZERS.get(config.optimizer))


@configs.per_program
def _create(config, total_steps: int, steps_per_epoch: int, _maker) -> optax.GradientTransformation:
  # _maker (the registered function) is in the key only: a name registered again makes anew
  if config.optimizer not in _OPTIMIZERS:
    raise ConfigError(
      f'Unknown config.optimizer {config.optimizer!r}: choose one of {tuple(_OPTIMIZERS)}.'
    )
  tx = _OPTIMIZERS[config.optimizer](config, total_steps, steps_per_epoch)
  if config.grad_clip_norm < 0:
    raise ConfigError(
      f'config.grad_clip_norm={config.grad_clip_norm}: a global norm > 0, or 0 for no clipping.'
    )
  if config.grad_clip_norm:  # every optimizer's gradients, clipped before it sees them
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
