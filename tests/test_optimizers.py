"""Optimizer plug-ins every recipe shares: weight decay masked to the matrices, and gradients
clipped by their global norm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dlearn import configs, optimizers


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(4, 3, rngs=rngs)
    self.norm = nnx.LayerNorm(3, rngs=rngs)
    self.pos_embedding = nnx.Param(jnp.ones((1, 5, 3)))


def _params():
  return nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)


def _config(**fields):
  config = configs.base()
  config.update(fields)
  return config


def _by_name(tree, value=bool):
  """{'dense/kernel': value(leaf), ...}: nnx's trailing 'value' left out of the names."""
  names = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = '/'.join(n for n in optimizers._path_names(path) if n != 'value')
    names[name] = value(leaf)
  return names


def test_matrices_decay_and_norms_biases_and_embeddings_do_not():
  params = _params()
  mask = optimizers.weight_decay_mask(_config(weight_decay_mask='matrices'))(params)
  expected = {
    'dense/kernel': True,
    'dense/bias': False,
    'norm/scale': False,
    'norm/bias': False,
    'pos_embedding': False,
  }
  assert _by_name(mask) == expected
  assert optimizers.weight_decay_mask(_config()) is None  # 'all', the default
  # AdamW at zero gradients moves only what decays.
  config = _config(optimizer='adamw', learning_rate=1.0, weight_decay=0.1)
  config.weight_decay_mask = 'matrices'
  tx = optimizers.create(config, total_steps=1)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert _by_name(updates, lambda u: bool(np.abs(np.asarray(u)).sum() > 0)) == expected
  with pytest.raises(ValueError, match='config.weight_decay_mask'):
    optimizers.weight_decay_mask(_config(weight_decay_mask='norms'))


def test_gradients_are_clipped_to_the_global_norm():
  params = {'w': jnp.zeros(4)}
  gradient = {'w': jnp.full(4, 5.0)}  # norm 10
  for clip, norm in [(0.0, 10.0), (1.0, 1.0), (20.0, 10.0)]:
    config = _config(optimizer='sgd', learning_rate=1.0, momentum=0.0, grad_clip_norm=clip)
    tx = optimizers.create(config, total_steps=1)
    updates, _ = tx.update(gradient, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(norm, rel=1e-5)
  with pytest.raises(ValueError, match='config.grad_clip_norm=-1'):
    optimizers.create(_config(grad_clip_norm=-1.0), total_steps=1)
