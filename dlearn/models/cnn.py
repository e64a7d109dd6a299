"""Convolutional classifiers: the article's CIFAR-10 network and a ResNet with BatchNorm.

Models take NHWC float images and a `train` flag (BatchNorm uses batch statistics when training,
running averages otherwise). BatchNorm averages its batch statistics over `axis_name` when the model
runs inside a mapped step, so every device normalises with the statistics of the whole global batch
and holds identical running averages.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dlearn.models.layers import conv_general_dilated, max_pool_2x2 as _max_pool


class SeedDCNN(nnx.Module):
  """The article's CIFAR-10 CNN, layer for layer.

  conv3x3 3→32 (same) + ReLU + 2x2 max pool; conv3x3 32→64 + ReLU + 2x2 max pool;
  dense 4096→512 + ReLU; dense 512→classes. (4096 = 8·8·64 for 32x32 inputs.)
  """

  def __init__(self, num_classes: int, image_shape: Sequence[int], *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    height, width, channels = image_shape
    self.conv1 = nnx.Conv(channels, 32, (3, 3), padding='SAME', dtype=dtype, rngs=rngs,
                            conv_general_dilated=conv_general_dilated)
    self.conv2 = nnx.Conv(32, 64, (3, 3), padding='SAME', dtype=dtype, rngs=rngs,
                            conv_general_dilated=conv_general_dilated)
    flat = (height // 4) * (width // 4) * 64
    self.dense1 = nnx.Linear(flat, 512, dtype=dtype, rngs=rngs)
    self.dense2 = nnx.Linear(512, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    del train  # No BatchNorm or dropout in the article's network.
    x = _max_pool(nnx.relu(self.conv1(x)))
    x = _max_pool(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dense1(x))
    return self.dense2(x)


class ResidualBlock(nnx.Module):
  """Two 3x3 convolutions with BatchNorm and a (projected when needed) shortcut."""

  def __init__(self, in_channels: int, channels: int, stride: int, *, axis_name, dtype,
               rngs: nnx.Rngs):
    conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=(s, s), padding='SAME',
                                       use_bias=False, dtype=dtype, rngs=rngs,
                                       conv_general_dilated=conv_general_dilated)
    norm = lambda c, **kw: nnx.BatchNorm(c, momentum=0.9, axis_name=axis_name, dtype=dtype,
                                         rngs=rngs, **kw)
    self.conv1, self.norm1 = conv(in_channels, channels, 3, stride), norm(channels)
    # Zero-initialised last scale: each block starts as the identity (Goyal et al., 2017).
    self.conv2 = conv(channels, channels, 3, 1)
    self.norm2 = norm(channels, scale_init=nnx.initializers.zeros)
    project = stride != 1 or in_channels != channels
    self.shortcut = nnx.data(conv(in_channels, channels, 1, stride) if project else None)
    self.shortcut_norm = nnx.data(norm(channels) if project else None)

  def __call__(self, x, *, train: bool):
    y = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
    y = self.norm2(self.conv2(y), use_running_average=not train)
    if self.shortcut is not None:
      x = self.shortcut_norm(self.shortcut(x), use_running_average=not train)
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """A CIFAR-style ResNet (He et al., 2016): a 3x3 stem, then stages of residual blocks.

  `stage_sizes=(2, 2, 2, 2)` with `width=64` is ResNet-18; smaller widths train faster on a CPU.
  """

  def __init__(self, num_classes: int, image_shape: Sequence[int], *, rngs: nnx.Rngs,
               stage_sizes: Sequence[int] = (2, 2, 2, 2), width: int = 64,
               axis_name: str | None = None, dtype=jnp.float32):
    channels = image_shape[-1]
    self.stem = nnx.Conv(channels, width, (3, 3), padding='SAME', use_bias=False, dtype=dtype,
                         rngs=rngs, conv_general_dilated=conv_general_dilated)
    self.stem_norm = nnx.BatchNorm(width, momentum=0.9, axis_name=axis_name, dtype=dtype,
                                   rngs=rngs)
    blocks, in_channels = [], width
    for stage, size in enumerate(stage_sizes):
      for index in range(size):
        out_channels = width * 2**stage
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(ResidualBlock(in_channels, out_channels, stride, axis_name=axis_name,
                                    dtype=dtype, rngs=rngs))
        in_channels = out_channels
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_channels, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    x = nnx.relu(self.stem_norm(self.stem(x), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(jnp.mean(x, axis=(1, 2)))
