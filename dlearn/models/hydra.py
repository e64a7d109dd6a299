"""Hydra's transform (Dempster, Schmidt and Webb 2023) in JAX: per dilation, `groups` groups of
`kernels` random kernels of length 9 (zero mean, unit L1 norm) on the series and on its first
difference; at every position the kernels of a group compete: each group counts, per kernel,
the summed response where that kernel responds most and the number of positions where it
responds least. As the reference (Dempster's code, aeon's `HydraTransformer`): dilations 2^0 ..
2^floor(log2((T - 1) / 8)), half the groups on the series and half on its difference, and for
multivariate series each group convolves the sum of a random draw (with replacement) of
clip(channels // 2, 2, 8) channels.

Variable lengths: positions past a case's end take part in no count; the convolution is that of
the case alone (zero padding around it), so a padded case has the features of the case alone.
The kernels come from numpy's generator (`draw`), not torch's, so they differ from aeon's draws;
the transform given the same kernels is the reference's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlearn.models import minirocket, multirocket

KERNEL_LENGTH = 9


@dataclasses.dataclass(frozen=True)
class Kernels:
  """weights [dilations, 2 (series, difference), groups/2 * kernels, 9]; channels [dilations, 2,
  groups/2, channels per group] (multivariate only; None for one channel)."""

  weights: np.ndarray
  channels: np.ndarray | None
  kernels: int

  @property
  def dilations(self) -> tuple[int, ...]:
    return tuple(2**i for i in range(self.weights.shape[0]))

  @property
  def num_features(self) -> int:
    return self.weights.shape[0] * 2 * 2 * self.weights.shape[2]


def draw(steps: int, channels: int, kernels: int = 8, groups: int = 64, seed: int = 0) -> Kernels:
  """Kernels for series of `steps` steps and `channels` channels, from `seed`."""
  rng = np.random.default_rng(seed)
  count = int(np.log2((steps - 1) / (KERNEL_LENGTH - 1))) + 1
  per_representation = groups // 2
  w = rng.normal(size=(count, 2, kernels * per_representation, KERNEL_LENGTH))
  w = w - w.mean(-1, keepdims=True)
  w = w / np.abs(w).sum(-1, keepdims=True)
  chosen = None
  if channels > 1:
    per_group = int(np.clip(channels // 2, 2, 8))
    chosen = rng.integers(0, channels, (count, 2, per_representation, per_group)).astype(np.int32)
  return Kernels(w.astype(np.float32), chosen, kernels)


def transform(x, lengths, kernels: Kernels) -> jax.Array:
  """Features [cases, kernels.num_features] of `x` [cases, channels, steps] of `lengths`."""
  x = jnp.asarray(x, jnp.float32)
  lengths = jnp.asarray(lengths, jnp.int32)
  channels = None if kernels.channels is None else jnp.asarray(kernels.channels)
  return _transform(x, lengths, jnp.asarray(kernels.weights), channels, kernels.kernels)


@functools.partial(jax.jit, static_argnums=(4,))
def _transform(x, lengths, weights, channels, k):
  groups = weights.shape[2] // k

  def block(x, lengths):
    features = []  # per (dilation, representation): [B, 2, groups, k]
    for i in range(weights.shape[0]):
      dilation = 2**i
      for r, (s, n) in enumerate(multirocket.with_difference(x, lengths)):
        if channels is None:  # one channel: every kernel of every group on it, one matmul
          taps = jnp.stack([minirocket.shifted(s[:, 0], o) for o in minirocket.tap_offsets(dilation)], 1)  # fmt: skip
          z = jnp.einsum('jn,bnt->btj', weights[i, r], taps, precision=jax.lax.Precision.HIGHEST)
        else:  # each group on the sum of its channels: a grouped convolution
          z = jax.lax.conv_general_dilated(
            s[:, channels[i, r]].sum(2),
            weights[i, r][:, None, :],
            window_strides=(1,),
            padding=[(4 * dilation, 4 * dilation)],
            rhs_dilation=(dilation,),
            dimension_numbers=('NCH', 'OIH', 'NHC'),  # [B, T, groups x k], as the matmul's
            feature_group_count=groups,
            precision=jax.lax.Precision.HIGHEST,
          )
        # a group's kernels minor, [B, T, groups, k]: argmax and argmin reduce adjacent values
        # (with the steps minor, one channel's transform took 1.3-1.6x the time, README)
        z = z.reshape(s.shape[0], -1, groups, k)
        valid = (jnp.arange(z.shape[1]) < n[:, None])[:, :, None]  # the case's own steps
        # at each step, the top kernel of a group adds its response, the bottom one counts 1:
        # added into the case's groups x k features where they are (a scatter-add, as the
        # reference's), where one-hot arrays of every step summed over the steps took 1.4x the
        # time (README)
        add = jax.vmap(functools.partial(added, k=k))
        top = add(z.argmax(3), jnp.where(valid, z.max(3), 0.0))
        bottom = add(z.argmin(3), jnp.broadcast_to(valid, z.shape[:3]).astype(jnp.float32))
        features.append(jnp.stack([top, bottom], 1))
    return jnp.stack(features, 1).reshape(x.shape[0], -1)

  # reductions over time in blocks of cases whose responses fit minirocket.BLOCK_BYTES, where a
  # scan over time, one case a block, paid the loop's cost per step and case (README)
  cases = minirocket.cases_per_block(2 * weights.shape[0], x.shape[-1], weights.shape[2])
  return minirocket.in_case_blocks(block, x, lengths, cases)


def added(kernel, values, k: int):
  """[groups, k]: `values` [T, groups] summed per group at each step's `kernel` [T, groups]."""
  groups = kernel.shape[-1]
  at = kernel + jnp.arange(groups) * k  # one index into the flat features: a scatter of scalars
  return jnp.zeros(groups * k).at[at].add(values).reshape(groups, k)


def sparse_scale_fit(features):
  """(mean, std) of Hydra's sparse scaling (the reference's `SparseScaler`): of the square roots of
  the clipped counts, the std plus (share of zeros)^4 + 1e-8."""
  f = np.sqrt(np.clip(np.asarray(features, np.float64), 0, None))
  mean = f.mean(0)
  return sparse_scale_from(len(f), mean, ((f - mean) ** 2).sum(0), (f == 0).sum(0))


def sparse_scale_from(count, mean, squares, zeros):
  """`sparse_scale_fit` from the square roots' moments: their count, mean, sum of squared
  deviations and number of zeros per feature."""
  epsilon = (np.asarray(zeros) / count) ** 4 + 1e-8
  std = np.sqrt(np.asarray(squares) / (count - 1))  # ddof=1
  return np.asarray(mean, np.float32), (std + epsilon).astype(np.float32)


@jax.jit  # one program on the host's features too, not one per operation
def sparse_scale(features, mean, std):
  """(sqrt(clipped) - mean) / std where the count is not zero, 0 where it is."""
  f = jnp.sqrt(jnp.clip(features, 0, None))
  return jnp.where(f != 0, (f - mean) / std, 0.0)
