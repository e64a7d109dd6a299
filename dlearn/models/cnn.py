"""Convolutional classifiers: the article's CIFAR-10 network and a ResNet with BatchNorm.

Models take NHWC float images and a `train` flag (BatchNorm uses batch statistics when training,
running averages otherwise). BatchNorm averages its batch statistics over `axis_name` when the model
runs inside a mapped step, so every device normalises with the statistics of the whole global batch
and holds identical running averages.

Spatial partitioning (`space_axis`). Both CNNs can run with each image split into horizontal bands
across the devices of a mesh axis: built with `space_axis='space'` and called inside `shard_map` over
a mesh with that axis, `model(x)` takes this device's band of rows, x: [batch, H / parts, W, C]
(band p holds rows p·H/parts ... (p+1)·H/parts - 1), and returns the logits of the whole images,
the same on every device of the axis. The modules and the parameter tree are exactly those of the
unpartitioned model (`space_axis` is a static attribute), so a checkpoint works either way.
- Every convolution goes through `_conv`: before a convolution, each band receives from its
  neighbours (`lax.ppermute`) the rows its output rows need (the halo): 1 row from above and 1 from
  below for a 3x3 stride-1 SAME convolution, 1 from below for a 3x3 stride-2 one (XLA's SAME pads
  0 rows on top, 1 below, for an even height), none for a 1x1 stride-2 one. The image's top and
  bottom bands get zero rows, as SAME padding gives the whole image.
- 2x2 max pooling is band-local (bands are pool-aligned, see below).
- SeedDCNN's first dense layer: each band multiplies its rows of the flattened feature map by the
  matching rows of the kernel; the partial products are summed over the axis (`lax.psum`) and the
  rest of the head runs the same on every device.
- ResNet: BatchNorm averages its batch statistics over (`axis_name`, `space_axis`); the global
  average pool is the `psum` of the bands' sums divided by the whole feature map's size.
Rule: the image height H must be a multiple of parts × the network's downsampling (4 for SeedDCNN,
2^(stride-2 stages) for ResNet: 2^(len(stage_sizes) - 1)), so that every band keeps a whole, even
number of rows at every resolution. There is no padding rule (padded rows would change the outputs
of the convolutions next to them, the flattened size and the pooled mean); anything else is a
ValueError from `check_spatial_parts`, which the trainer calls before compiling anything (the model
raises the same error while being traced). The width is never split and has no constraint.
Gradients: in a step body under `shard_map(..., check_vma=False)` (pmap semantics), `lax.psum`'s
transpose is `psum`, so each device's gradient of its (replicated) loss carries a factor of `parts`
on everything before the sum; `lax.pmean` of the gradients over both axes ('batch' and the space
axis) is then exactly the unpartitioned gradient (tests/test_spatial.py checks it).
Why ppermute in shard_map rather than a NamedSharding of H that lets XLA insert the halos: it runs in
the trainer's per-device step as it is, and measured as lean (experiments/benchmarks/spatial_cnn.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx
from jax import lax

from dlearn.errors import ConfigError
from dlearn.models import layers
from dlearn.models.family import ModelFamily, compute_dtype, own_part


def xla_max_pool_2x2(x):
  return nnx.max_pool(x, (2, 2), (2, 2))


def layer_functions(plain_layers: bool):
  """(2x2 max pool, convolution) for the CNNs: dlearn's CPU-fast versions
  (dlearn/models/layers.py), or with `plain_layers` (config.plain_layers) XLA's own, which the
  benchmark compares. Same numbers either way."""
  if plain_layers:
    return xla_max_pool_2x2, lax.conv_general_dilated
  return layers.max_pool_2x2, layers.conv_general_dilated


# ------------------------------------------------------------------------------------------------
# Spatial partitioning
# ------------------------------------------------------------------------------------------------
def spatial_downsampling(model: str, stage_sizes: Sequence[int] = ()) -> int:
  """How many times the network halves the image height: every band height must be a multiple."""
  if model == 'seed_dcnn':
    return 4  # two 2x2 max pools
  if model == 'resnet':
    return 2 ** _resnet_stride_stages(stage_sizes)
  raise ConfigError(f'Spatial partitioning is for the CNNs (seed_dcnn, resnet), not {model!r}.')


def _resnet_stride_stages(stage_sizes: Sequence[int]) -> int:
  return sum(1 for stage, size in enumerate(stage_sizes) if stage > 0 and size > 0)


def check_spatial_parts(image_height: int, parts: int, downsampling: int, model: str = 'the CNN'):
  """Raises a ValueError, naming a working choice, unless `parts` bands of an `image_height`-row
  image keep a whole number of rows at every one of the network's resolutions (H a multiple of
  parts × downsampling). One part (no partitioning) is always fine."""
  if parts < 1:
    raise ConfigError(f'Spatial parts must be positive, got {parts}.')
  if parts == 1 or image_height % (parts * downsampling) == 0:
    return
  multiple = parts * downsampling
  working = [1] + [
    p for p in range(2, image_height // downsampling + 1) if image_height % (p * downsampling) == 0
  ]
  heights = sorted(
    {max(multiple, image_height // multiple * multiple), -(-image_height // multiple) * multiple}
  )
  raise ConfigError(
    f'Spatial partitioning of {model}: image height {image_height} cannot be split into {parts} '
    f'bands; the height must be a multiple of parts x downsampling = {parts} x {downsampling} = '
    f'{multiple} (every band keeps whole, pool-aligned rows at every resolution; no padding '
    f'rule). Use spatial parts in {working} (1: unpartitioned) for height {image_height}, or '
    f'resize/crop the images to height {" or ".join(map(str, heights))} for {parts} parts.'
  )


def _check_band(x, space_axis: str, downsampling: int, model: str):
  """The same check while tracing, from a band's shape and the axis size."""
  check_spatial_parts(
    x.shape[1] * lax.axis_size(space_axis), lax.axis_size(space_axis), downsampling, model
  )


def _halo_rows(x, space_axis: str, above: int, below: int):
  """This band with `above` rows of the band above on top and `below` rows of the band below
  underneath (zeros beyond the image's edges: ppermute leaves devices nobody sends to with zeros).
  A negative `below` drops this band's last rows instead."""
  parts, band = lax.axis_size(space_axis), x.shape[1]
  if above > band or below > band:
    raise ConfigError(
      f'A halo of {above} rows above and {below} below needs bands of at least that '
      f'many rows, got {band}.'
    )
  pieces = []
  if above > 0:  # band p's last rows go to band p + 1
    pieces.append(
      lax.ppermute(x[:, band - above :], space_axis, [(p, p + 1) for p in range(parts - 1)])
    )
  pieces.append(x[:, : band + below] if below < 0 else x)
  if below > 0:  # band p's first rows go to band p - 1
    pieces.append(lax.ppermute(x[:, :below], space_axis, [(p + 1, p) for p in range(parts - 1)]))
  return jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's SAME padding (before, after) of one dimension of the whole image."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv(conv: nnx.Conv, x, space_axis: str | None):
  """`conv(x)`; with `space_axis`, the same SAME convolution of the whole image, computed on this
  device's band of rows after a halo exchange with the neighbouring bands."""
  if space_axis is None:
    return conv(x)
  (kh, kw), parts, band = conv.kernel_size, lax.axis_size(space_axis), x.shape[1]
  broadcast = lambda v: (1, 1) if v is None else (v, v) if isinstance(v, int) else tuple(v)
  strides = broadcast(conv.strides)
  if (
    conv.padding != 'SAME'
    or broadcast(conv.kernel_dilation) != (1, 1)
    or broadcast(conv.input_dilation) != (1, 1)
    or conv.feature_group_count != 1
    or conv.mask is not None
  ):
    raise NotImplementedError('Spatial partitioning supports plain SAME convolutions only.')
  if band % strides[0]:
    raise ValueError(f'Bands of {band} rows cannot be convolved with stride {strides[0]}.')
  (top, _), width_pads = (
    _same_pads(n, k, s) for n, k, s in zip((band * parts, x.shape[2]), (kh, kw), strides)
  )
  # Output row i of the whole image reads input rows i·s - top ... i·s - top + k - 1, so band p's
  # outputs read its own rows plus `top` rows above and k - s - top rows below (the whole image's
  # bottom padding; negative for a 1x1 stride-2 convolution, whose band's last row goes unread).
  x = _halo_rows(x, space_axis, top, kh - strides[0] - top)
  kernel = conv.kernel[...]
  bias = conv.bias[...] if conv.bias is not None else None
  x, kernel, bias = conv.promote_dtype((x, kernel, bias), dtype=conv.dtype)
  y = conv.conv_general_dilated(
    x,
    kernel,
    strides,
    [(0, 0), width_pads],
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    precision=conv.precision,
  )
  return y if bias is None else y + bias


def _band_dense(dense: nnx.Linear, x, space_axis: str):
  """`dense` applied to the whole image's flattened feature map, from this device's band x:
  [batch, rows, W, C] → its rows of the kernel, partial products summed over the axis."""
  flat = x.reshape(x.shape[0], -1)
  size = flat.shape[1]
  kernel = lax.dynamic_slice_in_dim(dense.kernel[...], lax.axis_index(space_axis) * size, size)
  bias = dense.bias[...] if dense.bias is not None else None
  flat, kernel, bias = dense.promote_dtype((flat, kernel, bias), dtype=dense.dtype)
  y = lax.psum(
    dense.dot_general(flat, kernel, (((1,), (0,)), ((), ())), precision=dense.precision), space_axis
  )
  return y if bias is None else y + bias


class SeedDCNN(nnx.Module):
  """The article's CIFAR-10 CNN, layer for layer.

  conv3x3 3→32 (same) + ReLU + 2x2 max pool; conv3x3 32→64 + ReLU + 2x2 max pool;
  dense 4096→512 + ReLU; dense 512→classes. (4096 = 8·8·64 for 32x32 inputs.)
  With `space_axis`, each device takes its band of rows (see the module's docstring).
  """

  downsampling = spatial_downsampling('seed_dcnn')

  def __init__(
    self,
    num_classes: int,
    image_shape: Sequence[int],
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    space_axis: str | None = None,
    plain_layers: bool = False,
  ):
    height, width, channels = image_shape
    self.space_axis = space_axis
    self.pool, conv_general_dilated = layer_functions(plain_layers)
    self.conv1 = nnx.Conv(
      channels,
      32,
      (3, 3),
      padding='SAME',
      dtype=dtype,
      rngs=rngs,
      conv_general_dilated=conv_general_dilated,
    )
    self.conv2 = nnx.Conv(
      32,
      64,
      (3, 3),
      padding='SAME',
      dtype=dtype,
      rngs=rngs,
      conv_general_dilated=conv_general_dilated,
    )
    flat = (height // 4) * (width // 4) * 64
    self.dense1 = nnx.Linear(flat, 512, dtype=dtype, rngs=rngs)
    self.dense2 = nnx.Linear(512, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    del train  # No BatchNorm or dropout in the article's network.
    space = self.space_axis
    if space is not None:
      _check_band(x, space, self.downsampling, 'seed_dcnn')
    x = self.pool(nnx.relu(_conv(self.conv1, x, space)))
    x = self.pool(nnx.relu(_conv(self.conv2, x, space)))
    if space is None:
      x = self.dense1(x.reshape(x.shape[0], -1))
    else:
      x = _band_dense(self.dense1, x, space)
    return self.dense2(nnx.relu(x))


class ResidualBlock(nnx.Module):
  """Two 3x3 convolutions with BatchNorm and a (projected when needed) shortcut."""

  def __init__(
    self,
    in_channels: int,
    channels: int,
    stride: int,
    *,
    axis_name,
    dtype,
    rngs: nnx.Rngs,
    space_axis: str | None = None,
    conv_general_dilated=lax.conv_general_dilated,
  ):
    self.space_axis = space_axis
    conv = lambda i, o, k, s: nnx.Conv(
      i,
      o,
      (k, k),
      strides=(s, s),
      padding='SAME',
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
      conv_general_dilated=conv_general_dilated,
    )
    norm = lambda c, **kw: nnx.BatchNorm(
      c, momentum=0.9, axis_name=axis_name, dtype=dtype, rngs=rngs, **kw
    )
    self.conv1, self.norm1 = conv(in_channels, channels, 3, stride), norm(channels)
    # Zero-initialised last scale: each block starts as the identity (Goyal et al., 2017).
    self.conv2 = conv(channels, channels, 3, 1)
    self.norm2 = norm(channels, scale_init=nnx.initializers.zeros)
    project = stride != 1 or in_channels != channels
    self.shortcut = nnx.data(conv(in_channels, channels, 1, stride) if project else None)
    self.shortcut_norm = nnx.data(norm(channels) if project else None)

  def __call__(self, x, *, train: bool):
    space = self.space_axis
    y = nnx.relu(self.norm1(_conv(self.conv1, x, space), use_running_average=not train))
    y = self.norm2(_conv(self.conv2, y, space), use_running_average=not train)
    if self.shortcut is not None:
      x = self.shortcut_norm(_conv(self.shortcut, x, space), use_running_average=not train)
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """A CIFAR-style ResNet (He et al., 2016): a 3x3 stem, then stages of residual blocks.

  `stage_sizes=(2, 2, 2, 2)` with `width=64` is ResNet-18; smaller widths train faster on a CPU.
  With `space_axis`, each device takes its band of rows (see the module's docstring) and BatchNorm
  averages its statistics over (`axis_name`, `space_axis`).
  """

  def __init__(
    self,
    num_classes: int,
    image_shape: Sequence[int],
    *,
    rngs: nnx.Rngs,
    stage_sizes: Sequence[int] = (2, 2, 2, 2),
    width: int = 64,
    axis_name: str | None = None,
    dtype=jnp.float32,
    space_axis: str | None = None,
    plain_layers: bool = False,
  ):
    channels = image_shape[-1]
    self.space_axis = space_axis
    _, conv_general_dilated = layer_functions(plain_layers)
    self.downsampling = spatial_downsampling('resnet', stage_sizes)
    if space_axis is not None:  # statistics of the whole images of the whole global batch
      axis_name = space_axis if axis_name is None else (axis_name, space_axis)
    self.stem = nnx.Conv(
      channels,
      width,
      (3, 3),
      padding='SAME',
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
      conv_general_dilated=conv_general_dilated,
    )
    self.stem_norm = nnx.BatchNorm(width, momentum=0.9, axis_name=axis_name, dtype=dtype, rngs=rngs)
    blocks, in_channels = [], width
    for stage, size in enumerate(stage_sizes):
      for index in range(size):
        out_channels = width * 2**stage
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(
          ResidualBlock(
            in_channels,
            out_channels,
            stride,
            axis_name=axis_name,
            dtype=dtype,
            rngs=rngs,
            space_axis=space_axis,
            conv_general_dilated=conv_general_dilated,
          )
        )
        in_channels = out_channels
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_channels, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    space = self.space_axis
    if space is not None:
      _check_band(x, space, self.downsampling, 'resnet')
    x = nnx.relu(self.stem_norm(_conv(self.stem, x, space), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train=train)
    if space is None:
      return self.head(jnp.mean(x, axis=(1, 2)))
    size = x.shape[1] * lax.axis_size(space) * x.shape[2]  # the whole feature map's
    return self.head(lax.psum(jnp.sum(x, axis=(1, 2)), space) / size)


# ------------------------------------------------------------------------------------------------
# The families (dlearn/models/family.py): what the trainer asks of the CNNs
# ------------------------------------------------------------------------------------------------
class _ImageBandsFamily(ModelFamily):
  """A CNN that can split each image into bands of rows over config.partition.parts devices."""

  def downsampling(self, config) -> int:
    raise NotImplementedError

  def check_partition(self, config, input_shape, parts: int, per_device_batches: dict) -> None:
    del per_device_batches
    check_spatial_parts(input_shape[0], parts, self.downsampling(config), config.model)

  def logits(self, model, inputs, config, *, train: bool):
    (images,) = inputs
    if config.partition.parts > 1:  # augmentation saw the whole image; the model takes a band
      images = own_part(images, config.partition.parts)
    return model(images, train=train)


class SeedDCNNFamily(_ImageBandsFamily):
  def downsampling(self, config) -> int:
    return spatial_downsampling('seed_dcnn')

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del axis_name  # no BatchNorm
    return SeedDCNN(
      num_classes,
      input_shape,
      rngs=rngs,
      dtype=compute_dtype(config),
      space_axis=part_axis,
      plain_layers=config.plain_layers,
    )


class ResNetFamily(_ImageBandsFamily):
  def downsampling(self, config) -> int:
    return spatial_downsampling('resnet', tuple(config.resnet.stage_sizes))

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    return ResNet(
      num_classes,
      input_shape,
      rngs=rngs,
      stage_sizes=tuple(config.resnet.stage_sizes),
      width=config.resnet.width,
      axis_name=axis_name,
      dtype=compute_dtype(config),
      space_axis=part_axis,
      plain_layers=config.plain_layers,
    )
