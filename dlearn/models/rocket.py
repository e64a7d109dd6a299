"""MiniRocket as a dlearn model family (`config.model='minirocket'`, section `config.minirocket`):
the fixed transform of dlearn/models/minirocket.py, each feature scaled by its training
standard deviation, and a linear head, as aeon's `MiniRocketClassifier` (MiniRocket,
StandardScaler(with_mean=False), RidgeClassifierCV).

The head, `config.minirocket.head`:
- 'ridge' (small data): fitted in closed form when the run starts (`init_from_data`): ridge
  regression on targets of +1 for the class and -1 for the others, with an unpenalised intercept,
  its regularisation chosen from `alphas` by leave-one-out error, computed exactly from one SVD
  of the features (what scikit-learn's RidgeClassifierCV does). The recipe then trains 0 steps.
- 'logistic' (large data): zero-initialised, trained by the ordinary dlearn step (softmax
  cross-entropy over the features, which every device computes for its own cases).

The kernels' channels are drawn from config.seed when the model is created, the biases from the
train split; both are stored in the checkpoint with the head, so evaluation, prediction and
export need nothing else.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dlearn.data import pipeline
from dlearn.errors import ConfigError
from dlearn.models import minirocket
from dlearn.models.family import ModelFamily

DEFAULTS = ml_collections.ConfigDict(
  {
    'num_features': 10_000,  # rounded down to a multiple of 84
    'max_dilations': 32,
    'head': 'ridge',
    'alphas': tuple(np.logspace(-3, 3, 10)),  # RidgeClassifierCV's in aeon's classifier
  }
)
HEADS = ('ridge', 'logistic')
FEATURE_BATCH = 256  # cases per transform call in init_from_data


class Fixed(nnx.Variable):
  """Values the model computes from data or its seed and never trains."""


def settings(config) -> ml_collections.ConfigDict:
  merged = DEFAULTS.copy_and_resolve_references()
  merged.update(dict(config.get('minirocket', {})))
  if merged.head not in HEADS:
    raise ConfigError(f'config.minirocket.head={merged.head!r}: use one of {HEADS}.')
  return merged


class MiniRocketClassifier(nnx.Module):
  def __init__(self, num_classes, input_shape, *, num_features, max_dilations, seed, rngs):
    steps, channels = input_shape
    if steps < minirocket.KERNEL_LENGTH:
      raise ConfigError(
        f'MiniRocket needs series of at least {minirocket.KERNEL_LENGTH} steps; the longest has '
        f'{steps}: set config.data.max_length={minirocket.KERNEL_LENGTH} (shorter cases are '
        'zero-padded, as MiniRocket pads).'
      )
    params = minirocket.unfitted(steps, channels, num_features, max_dilations, seed)
    self.dilations = tuple(int(d) for d in params.dilations)
    self.counts = tuple(int(n) for n in params.features_per_dilation)
    self.kernels = nnx.List(
      [Fixed(jnp.asarray(w)) for w in minirocket.weights_of(params, channels)]
    )
    self.biases = Fixed(jnp.zeros(params.num_features))
    self.scale = Fixed(jnp.ones(params.num_features))
    self.head = nnx.Linear(
      params.num_features, num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs
    )

  def features(self, sequences, lengths):
    """[B, features] of sequences [B, T, C] with `lengths`, unscaled."""
    x = jnp.swapaxes(sequences.astype(jnp.float32), 1, 2)
    x = jnp.where(jnp.arange(x.shape[-1]) < lengths[:, None, None], x, 0.0)
    kernels = [k[...] for k in self.kernels]
    return minirocket.transform_with(
      x, lengths, kernels, self.biases[...], self.dilations, self.counts
    )

  def __call__(self, sequences, lengths, train: bool = False):
    del train
    return self.head(self.features(sequences, lengths) * self.scale[...])


def ridge_loo(features, labels, num_classes: int, alphas):
  """(kernel [F, K], bias [K], alpha): ridge regression of +-1 one-vs-rest targets with an
  unpenalised intercept, alpha the one of `alphas` with the least leave-one-out squared error
  (the hat matrix's diagonal, from one SVD of the centred features)."""
  x = np.asarray(features, np.float64)
  y = -np.ones((len(x), num_classes))
  y[np.arange(len(x)), labels] = 1.0
  x_mean, y_mean = x.mean(0), y.mean(0)
  u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
  projected = u.T @ (y - y_mean)
  errors = []
  for alpha in alphas:
    shrink = s**2 / (s**2 + alpha)
    residual = (y - y_mean) - u @ (shrink[:, None] * projected)
    hat = 1 / len(x) + (u**2) @ shrink
    errors.append(np.mean((residual / (1 - hat)[:, None]) ** 2))
  alpha = float(alphas[int(np.argmin(errors))])
  kernel = vt.T @ ((s / (s**2 + alpha))[:, None] * projected)
  return kernel.astype(np.float32), (y_mean - x_mean @ kernel).astype(np.float32), alpha


class MiniRocketFamily(ModelFamily):
  kinds = ('sequence',)
  ensembles = False  # init_from_data sets the biases, scale and head

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del axis_name, part_axis
    s = settings(config)
    return MiniRocketClassifier(
      num_classes,
      input_shape,
      num_features=s.num_features,
      max_dilations=s.max_dilations,
      seed=config.seed,
      rngs=rngs,
    )

  def init_from_data(self, model, config, source, info) -> None:
    s = settings(config)
    cases = [pipeline.example(source[i], info) for i in range(len(source))]
    x = np.stack([c['sequence'] for c in cases])
    lengths = np.array([c['length'] for c in cases])
    labels = np.array([c['label'] for c in cases])
    kernels = [np.asarray(k[...]) for k in model.kernels]
    biases = minirocket.fit_biases(
      np.swapaxes(x, 1, 2), lengths, kernels, model.dilations, model.counts, config.seed
    )
    model.biases[...] = jnp.asarray(biases)
    features = np.concatenate(
      [
        np.asarray(model.features(x[i : i + FEATURE_BATCH], lengths[i : i + FEATURE_BATCH]))
        for i in range(0, len(x), FEATURE_BATCH)
      ]
    )
    std = features.std(0)
    scale = np.where(std > 0, 1 / np.where(std > 0, std, 1), 1).astype(np.float32)
    model.scale[...] = jnp.asarray(scale)
    if s.head == 'ridge':
      kernel, bias, alpha = ridge_loo(features * scale, labels, info.num_classes, s.alphas)
      model.head.kernel[...] = jnp.asarray(kernel)
      model.head.bias[...] = jnp.asarray(bias)
      logging.info(
        'MiniRocket: %d features of %d cases; ridge alpha %.3g by leave-one-out.',
        features.shape[1],
        len(features),
        alpha,
      )
