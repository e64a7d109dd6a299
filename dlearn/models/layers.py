"""Layers that XLA's CPU backend runs faster when written differently; the same numbers either way.

experiments/benchmarks/suite.py measures both against XLA's own (`config.plain_layers`; the
README's 'plain layers' column).

Max pooling: XLA differentiates `reduce_window` max with `select_and_scatter`, which is slow on a
CPU; a non-overlapping 2x2 window is a reshape and a max, whose gradient is a cheap comparison.

Convolution:

On a CPU, XLA computes a convolution's kernel gradient with a generic convolution that runs at a
small fraction of the machine's matmul speed (in seed_dcnn, the second layer's kernel gradient
dominates the step). Written as one matmul per kernel offset, over the input shifted by that
offset, the same gradient is faster for inputs of up to NARROW_INPUT_CHANNELS channels (wider
ones, ResNet-18's, ran slower that way, so they keep XLA's). Other backends (cuDNN on a GPU) and
other convolution kinds (dilated, grouped) keep XLA's own gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NARROW_INPUT_CHANNELS = 32


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
  return _xla_conv(x, kernel, strides, pads)


def _xla_conv(x, kernel, strides, pads):
  return lax.conv_general_dilated(
    x, kernel, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def _conv_forward(x, kernel, strides, pads):
  return _xla_conv(x, kernel, strides, pads), (x, kernel)


def _conv_backward(strides, pads, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, strides, pads), x)
  (dx,) = input_vjp(dy)
  height, width = kernel.shape[:2]
  x_padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  out_height, out_width = dy.shape[1:3]
  offsets = []
  for i in range(height):
    for j in range(width):
      # The input pixels that kernel tap (i, j) saw, one per output pixel.
      seen = lax.slice(
        x_padded,
        (0, i, j, 0),
        (
          x.shape[0],
          i + (out_height - 1) * strides[0] + 1,
          j + (out_width - 1) * strides[1] + 1,
          x.shape[3],
        ),
        (1, strides[0], strides[1], 1),
      )
      offsets.append(lax.dot_general(seen, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))))
  dkernel = jnp.stack(offsets).reshape(kernel.shape)
  return dx, dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """Drop-in for `lax.conv_general_dilated` (flax's `nnx.Conv(conv_general_dilated=...)`)."""
  plain = lambda: lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  simple = (
    lhs.ndim == 4
    and feature_group_count == 1
    and precision is None
    and kwargs.get('out_sharding') is None
    and kwargs.get('preferred_element_type') is None
    and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
  )
  # Narrow inputs only: ResNet-18's layers (64 to 512 input channels) ran slower this way
  # (experiments/benchmarks/suite.py, 'dlearn plain layers' rows).
  if jax.default_backend() != 'cpu' or not simple or rhs.shape[2] > NARROW_INPUT_CHANNELS:
    return plain()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def max_pool_2x2(x):
  """2x2 max pooling with stride 2 over NHWC images (an odd last row or column is dropped, as
  with VALID padding). Where a window holds equal maxima the gradient is shared among them (the
  reduce_window form gives it to one); after a ReLU that happens only where the gradient is 0."""
  batch, height, width, channels = x.shape
  x = x[:, : height // 2 * 2, : width // 2 * 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))
