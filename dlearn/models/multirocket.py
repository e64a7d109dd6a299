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

POOLING = ('ppv', 'lspv', 'mpv', 'mipv')


# Features pooled per compiled iteration: one body for all of a representation's features, so
# that compiling does not grow with the number of dilations.
CHUNK = 168


def _convolutions(x, weights, dilations, shift_left):
  """[dilations, B, 84, T]: every dilation's kernels, one compiled body for all (the dilation a
  traced value: each tap a dynamic slice of the zero-padded series)."""
  steps = x.shape[-1]
  pad = 4 * max(dilations)
  padded = jnp.pad(x, ((0, 0), (0, 0), (pad, pad)))

  def one(args):
    w, d = args
    offsets = minirocket.tap_offsets(d, shift_left)  # traced: d is a value of the loop
    taps = [jax.lax.dynamic_slice_in_dim(padded, pad + o, steps, 2) for o in offsets]
    return jnp.einsum('kcg,bcgt->bkt', w, jnp.stack(taps, 2), precision=jax.lax.Precision.HIGHEST)

  return jax.lax.map(one, (jnp.stack(weights), jnp.asarray(dilations, jnp.int32)))


def _pool(c, biases, valid):
  """[B, N, 4] features of convolutions c [B, N, T] at biases [N] over `valid` [B, N, T] (a
  contiguous run of positions per case and feature)."""
  b = biases[None, :, None]
  positive, negative = (c > b) & valid, (c < b) & valid
  count = valid.sum(-1)
  start = jnp.argmax(valid, axis=-1)[..., None]  # the run's first position
  index = jnp.arange(c.shape[-1]) - start  # position within the run
  hits = positive.sum(-1)
  ppv = hits / count
  mpv = jnp.where(hits > 0, jnp.where(positive, c + b, 0).sum(-1) / jnp.maximum(hits, 1), 0.0)
  mipv = jnp.where(hits > 0, jnp.where(positive, index, 0).sum(-1) / jnp.maximum(hits, 1), -1.0)
  lspv = _longest_gap(negative, start[..., 0], count)
  return jnp.stack([ppv, lspv, mpv, mipv], -1).astype(jnp.float32)


def _longest_gap(negative, start, count):
  """LSPV [B, N]: the longest gap between consecutive negative positions, from the run's `start`
  (aeon's last_val starts there) and to its end; a scan over time (lax.cummax over the positions
  cost 10x more on a CPU)."""

  def step(carry, position):
    previous, longest = carry
    below, t = position
    longest = jnp.where(below, jnp.maximum(longest, t - previous), longest)
    return (jnp.where(below, t, previous), longest), None

  positions = (jnp.moveaxis(negative, -1, 0), jnp.arange(negative.shape[-1]))
  (last, longest), _ = jax.lax.scan(step, (start, jnp.zeros_like(start)), positions)
  return jnp.maximum(longest, count - 1 - (last - start))


def _feature_layout(dilations, counts):
  """Per feature (aeon's order: dilation, then kernel, then bias), padded to CHUNKs: its
  convolution's row in [dilation x 84], its padding 4 x dilation, and whether it pools over all
  positions (MiniRocket's alternation, starting with all at even dilation index + kernel)."""
  kernels = len(minirocket.KERNEL_INDICES)
  j = np.repeat(np.arange(len(dilations)), kernels * np.asarray(counts))
  k = np.concatenate([np.repeat(np.arange(kernels), n) for n in counts])
  size = -(-len(j) // CHUNK) * CHUNK
  fill = lambda a: np.pad(a, (0, size - len(a)))  # noqa: E731
  return fill(j * kernels + k), fill(4 * np.asarray(dilations)[j]), fill((j + k) % 2 == 0)


def _representation(x, lengths, weights, biases, dilations, counts, shift_left):
  """[B, 4, features of this representation]."""
  batch, steps = x.shape[0], x.shape[-1]
  c = _convolutions(x, weights, dilations, shift_left)  # [D, B, 84, T]
  c = jnp.moveaxis(c, 0, 1).reshape(batch, -1, steps)  # [B, D x 84, T]
  rows, paddings, full_positions = _feature_layout(dilations, counts)
  size = len(biases)
  padded_biases = jnp.pad(biases, (0, len(rows) - size))
  t = jnp.arange(steps)
  full = t < lengths[:, None, None]  # [B, 1, T]

  def chunk(args):
    row, b, padding, all_positions = args
    interior = (t >= padding[None, :, None]) & (t < lengths[:, None, None] - padding[None, :, None])
    interior = jnp.where(interior.any(-1, keepdims=True), interior, full)
    valid = jnp.where(all_positions[None, :, None], full, interior)
    return _pool(c[:, row], b, valid)  # [B, CHUNK, 4]

  pooled = jax.lax.map(
    chunk,
    tuple(
      a.reshape(-1, CHUNK)
      for a in (
        jnp.asarray(rows),
        padded_biases,
        jnp.asarray(paddings),
        jnp.asarray(full_positions),
      )
    ),
  )  # [chunks, B, CHUNK, 4]
  pooled = jnp.moveaxis(pooled, 0, 1).reshape(batch, -1, 4)[:, :size]
  return jnp.moveaxis(pooled, 2, 1)  # [B, 4, features]


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
