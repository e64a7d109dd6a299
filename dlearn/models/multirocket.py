"""MultiRocket's transform (Tan, Dempster, Bergmeir and Webb 2022) in JAX: MiniRocket's kernels
(dlearn/models/minirocket.py) on each series and on its first difference, each (kernel, dilation,
bias) pooled four ways over the kernel's positions: the proportion of positive values (PPV), the
longest stretch (LSPV), the mean of positive values (MPV) and the mean of their indices (MIPV).

It equals aeon's `MultiRocket` given aeon's fitted parameters (tests/test_minirocket.py), with
aeon's own definitions where they depart from the paper's wording, so that the features are the
reference's: MPV averages value + bias over the positive values (0 if none); MIPV is -1 if none;
LSPV is the longest gap between consecutive values below the bias (from the first position, and
to the last); and on the differenced series the four left taps of each kernel read one step
later than on the series itself (aeon's transform, not its bias fit, indexes them so), and the
difference's kernels sum the channels drawn for the series' (aeon's transform reads those).
Features
are laid out as aeon's: [PPV, LSPV, MPV, MIPV] blocks of the series, then the same of its
difference.

Variable lengths as MiniRocket's: each case's pooling covers its own positions only, and its
difference ends one step before it does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlearn.models import minirocket

POOLING = minirocket.POOLING  # defined, with MiniRocket's PPV, where they are pooled


def _representation(x, lengths, weights, biases, dilations, counts, shift_left):
  """[B, 4, features of this representation]."""

  def block(x, lengths):
    return minirocket.pool(x, weights, lengths, biases, dilations, counts, POOLING, shift_left)

  cases = minirocket.cases_per_block(
    len(dilations), x.shape[-1], minirocket.pooled_floats(x.shape[1])
  )
  return minirocket.in_case_blocks(block, x, lengths, cases)


def with_difference(x, lengths):
  """((x, lengths), (its first difference, lengths - 1)) of x [B, C, T], each zero past its end."""
  x = jnp.where(jnp.arange(x.shape[-1]) < lengths[:, None, None], x, 0.0)
  difference = jnp.diff(x, axis=-1)
  valid = jnp.arange(difference.shape[-1]) < lengths[:, None, None] - 1
  return (x, lengths), (jnp.where(valid, difference, 0.0), lengths - 1)


def transform(x, lengths, params, params_difference) -> jax.Array:
  """Features [cases, 8 x features per representation] of `x` [cases, channels, steps], each case
  `lengths[i]` steps long; `params` (minirocket.Parameters) for the series, `params_difference`
  for its first difference."""
  series = with_difference(jnp.asarray(x, jnp.float32), jnp.asarray(lengths, jnp.int32))
  # aeon's transform gives the difference the series' channel choices (its own go unused).
  combinations = len(params_difference.dilations) * len(minirocket.KERNEL_INDICES)
  ends = np.cumsum(params.channels_per_combination)[:combinations]
  params_difference = dataclasses.replace(
    params_difference,
    channels_per_combination=params.channels_per_combination[:combinations],
    channel_indices=params.channel_indices[: ends[-1]],
  )
  parts = []
  for (series_x, series_lengths), p, shift in zip(series, (params, params_difference), (0, 1)):
    weights = tuple(jnp.asarray(w) for w in minirocket.weights_of(p, np.shape(x)[1]))
    parts.append(
      _transform_one(
        series_x,
        series_lengths,
        weights,
        jnp.asarray(p.biases),
        tuple(int(d) for d in p.dilations),
        tuple(int(n) for n in p.features_per_dilation),
        shift,
      )
    )
  return jnp.concatenate(parts, axis=1)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _transform_one(x, lengths, weights, biases, dilations, counts, shift_left):
  return _representation(x, lengths, weights, biases, dilations, counts, shift_left).reshape(
    x.shape[0], -1
  )
