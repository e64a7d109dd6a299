"""The airbench94 network (Keller Jordan's fast CIFAR-10 recipe, arXiv 2404.00498), for NHWC images.

Written from the recipe's description and its reference (../shared/peers/airbench/airbench94_muon.py,
MIT); layer for layer:
- a 2x2 VALID convolution 3 → 24 channels whose kernel is a whitening of 2x2 image patches
  (`whitening_kernel`), not trained: it is held in a `Whitening` variable, so
  `nnx.split(model, nnx.Param, ...)` puts it with the BatchNorm statistics (checkpointed, never
  differentiated); its bias is a trained `nnx.Param` (the optimizer trains it for the first epochs
  only, `dlearn.optimizers.fast_cnn_optimizer`); then GELU;
- three groups of (conv 3x3, max pool 2, BatchNorm, GELU, conv 3x3, BatchNorm, GELU), widths
  64/256/256, convolutions without bias;
- max pool 3 (the 3x3 map of a 32x32 image → 1x1), flatten, a linear head without bias, the
  logits divided by the feature width (the reference's output scale).

BatchNorm as the recipe sets it: no trained scale (the reference freezes it at 1), a trained bias,
epsilon 1e-12 and running averages that keep 0.6 of the old value: the reference's torch momentum
0.4 (`ra = (1 - 0.4) ra + 0.4 batch`) is flax's `momentum=0.6` (`ra = m ra + (1 - m) batch`).
Torch updates the running variance with the unbiased batch variance, flax with the biased one: a
factor n / (n - 1), n = batch x height x width ≥ 9 x batch, which no evaluation can tell apart.

Initialisation as PyTorch's (the reference relies on it): convolution and linear kernels uniform in
±1/sqrt(fan_in) (kaiming-uniform with a = sqrt(5)); the first `in_channels` filters of every 3x3
convolution are the identity (Dirac), so at initialisation each convolution passes its input
channels through; the head's kernel is then scaled to a standard deviation of 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlearn import parallel
from dlearn.data import augment
from dlearn.errors import ConfigError
from dlearn.models.family import ModelFamily, compute_dtype
from dlearn.models.layers import conv_general_dilated, max_pool_2x2

WHITENING_KERNEL_SIZE = 2
BATCH_NORM_MOMENTUM = 0.6  # flax semantics: the share of the old running average kept
BATCH_NORM_EPSILON = 1e-12


class Whitening(nnx.Variable):
  """The first convolution's kernel: set from the training images, never trained."""


def _torch_uniform(key, shape, dtype=jnp.float32):
  """PyTorch's default kernel initialisation: uniform in ±1/sqrt(fan_in), fan_in being every
  axis but the last (HWIO convolution kernels, [in, out] linear kernels)."""
  bound = 1 / math.sqrt(math.prod(shape[:-1]))
  # Drawn flat: XLA's CPU compiler takes seconds over the counters of a 4-D draw, and the
  # numbers are the same (the counter is the flat index).
  return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)


def _dirac_conv_init(key, shape, dtype=jnp.float32):
  """PyTorch's default kernel with its first min(in, out) output filters set to the identity, for
  an HWIO kernel (the reference's `dirac_` on its first `in_channels` filters)."""
  height, width, in_channels, out_channels = shape
  n = min(in_channels, out_channels)
  identity = np.zeros((height, width, in_channels, n))
  identity[height // 2, width // 2, np.arange(n), np.arange(n)] = 1
  identity = jnp.asarray(identity, dtype)
  if n == out_channels:
    return identity
  rest = _torch_uniform(key, (height, width, in_channels, out_channels - n), dtype)
  return jnp.concatenate([identity, rest], axis=-1)  # fan_in is that of the whole kernel


def _unit_std_init(key, shape, dtype=jnp.float32):
  """The reference's head: PyTorch's default linear kernel, scaled to a sample std of 1."""
  kernel = _torch_uniform(key, shape, jnp.float32)
  return (kernel / jnp.std(kernel, ddof=1)).astype(dtype)


def _max_pool(x, size: int):
  """size x size max pooling with stride `size`, VALID (rows and columns beyond a whole window
  dropped, as torch's MaxPool2d(size)): a reshape and a max, whose gradient is cheap on a CPU."""
  batch, height, width, channels = x.shape
  x = x[:, : height // size * size, : width // size * size]
  return x.reshape(batch, height // size, size, width // size, size, channels).max(axis=(2, 4))


def _gelu(x):
  return nnx.gelu(x, approximate=False)  # torch's nn.GELU() is the exact (erf) form


def whitening_kernel(images, kernel_size: int = WHITENING_KERNEL_SIZE, eps: float = 5e-4):
  """The whitening convolution's HWIO kernel [k, k, C, 2·k·k·C] from normalised float images
  [N, H, W, C] (numpy or jax).

  Every k x k patch (stride 1, VALID) flattened in (row, column, channel) order; their covariance,
  uncentered as the reference's; its eigenvectors, each scaled by 1/sqrt(eigenvalue + eps), as
  filters (in ascending eigenvalue order), then the same filters negated. The first half maps the
  patches to coordinates with covariance diag(λ / (λ + eps)), the identity where λ >> eps.
  """
  images = jnp.asarray(images, jnp.float32)
  _, height, width, channels = images.shape
  out_height, out_width = height - kernel_size + 1, width - kernel_size + 1
  size = kernel_size * kernel_size * channels

  @jax.jit
  def patch_products(chunk):
    patches = jnp.stack(
      [
        chunk[:, i : i + out_height, j : j + out_width]
        for i in range(kernel_size)
        for j in range(kernel_size)
      ],
      axis=-2,
    ).reshape(-1, size)
    return patches.T @ patches

  # In chunks of images: all 2x2 patches of 5,000 CIFAR images at once would be 230 MB.
  chunk = 1024
  total = sum(patch_products(images[s : s + chunk]) for s in range(0, len(images), chunk))
  covariance = total / (len(images) * out_height * out_width)
  eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
  filters = (eigenvectors / jnp.sqrt(eigenvalues + eps)).reshape(
    kernel_size, kernel_size, channels, size
  )
  return jnp.concatenate([filters, -filters], axis=-1)


class ConvGroup(nnx.Module):
  """conv 3x3 → max pool 2 → BatchNorm → GELU → conv 3x3 → BatchNorm → GELU."""

  def __init__(self, in_channels: int, channels: int, *, axis_name, dtype, rngs: nnx.Rngs):
    conv = lambda i, o: nnx.Conv(
      i,
      o,
      (3, 3),
      padding='SAME',
      use_bias=False,
      kernel_init=_dirac_conv_init,
      dtype=dtype,
      rngs=rngs,
      conv_general_dilated=conv_general_dilated,
    )
    norm = lambda c: nnx.BatchNorm(
      c,
      use_scale=False,
      momentum=BATCH_NORM_MOMENTUM,
      epsilon=BATCH_NORM_EPSILON,
      # With epsilon 1e-12 a near-constant channel is divided by its own tiny variance: compute
      # it as the mean squared deviation, not E[x²] - E[x]², which cancels in float32.
      use_fast_variance=False,
      axis_name=axis_name,
      dtype=dtype,
      rngs=rngs,
    )
    self.conv1, self.norm1 = conv(in_channels, channels), norm(channels)
    self.conv2, self.norm2 = conv(channels, channels), norm(channels)

  def __call__(self, x, *, train: bool):
    x = _gelu(self.norm1(max_pool_2x2(self.conv1(x)), use_running_average=not train))
    return _gelu(self.norm2(self.conv2(x), use_running_average=not train))


class FastCNN(nnx.Module):
  """The airbench94 network (see the module's docstring).

  `axis_name`: None (BatchNorm statistics of this call's batch) or the mapped device axis over
  which BatchNorm averages its statistics (those of the global batch). `dtype`: of the
  computation; parameters are float32. Call `init_whitening` with training images before training.
  """

  def __init__(
    self,
    num_classes: int,
    image_shape: Sequence[int],
    *,
    rngs: nnx.Rngs,
    widths: Sequence[int] = (64, 256, 256),
    axis_name: str | None = None,
    dtype=jnp.float32,
  ):
    height, width, channels = image_shape
    self.dtype = dtype
    k = WHITENING_KERNEL_SIZE
    whitening_width = 2 * k * k * channels
    # Until `init_whitening`, PyTorch's default convolution kernel (the reference's too).
    self.whitening = Whitening(_torch_uniform(rngs.params(), (k, k, channels, whitening_width)))
    # PyTorch's default bias: uniform in ±1/sqrt(fan_in).
    bound = 1 / math.sqrt(k * k * channels)
    self.whitening_bias = nnx.Param(
      jax.random.uniform(rngs.params(), (whitening_width,), jnp.float32, -bound, bound)
    )
    groups, in_channels = [], whitening_width
    height, width = height - k + 1, width - k + 1
    for group_width in widths:
      groups.append(
        ConvGroup(in_channels, group_width, axis_name=axis_name, dtype=dtype, rngs=rngs)
      )
      in_channels, height, width = group_width, height // 2, width // 2
    self.groups = nnx.List(groups)
    features = (height // 3) * (width // 3) * in_channels
    if features == 0:
      raise ConfigError(f'Images of shape {tuple(image_shape)} are too small for FastCNN.')
    self.head = nnx.Linear(
      features, num_classes, use_bias=False, kernel_init=_unit_std_init, dtype=dtype, rngs=rngs
    )

  def init_whitening(self, images, eps: float = 5e-4):
    """Sets the first convolution's kernel to the whitening of `images`' 2x2 patches
    (normalised float images [N, H, W, C]; the reference uses 5,000 training images)."""
    self.whitening[...] = whitening_kernel(images, WHITENING_KERNEL_SIZE, eps)

  def __call__(self, x, *, train: bool):
    kernel = self.whitening[...].astype(self.dtype)
    x = conv_general_dilated(
      x.astype(self.dtype),
      kernel,
      (1, 1),
      'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    x = _gelu(x + self.whitening_bias[...].astype(self.dtype))
    for group in self.groups:
      x = group(x, train=train)
    x = _max_pool(x, 3).reshape(x.shape[0], -1)
    return self.head(x) / x.shape[-1]


def tta_logits(model_fn: Callable, images, level: int):
  """The reference's test-time augmentation: the logits of `model_fn` (normalised images
  [B, H, W, C] → logits) averaged over views of `images`.

  level 0: the images; 1: the mean over the images and their horizontal flips; 2: 0.5 x level 1 +
  0.5 x the mean of level 1 over two 1-pixel translations, the crops at offsets (0, 0) and (2, 2)
  of the images reflect-padded by 1 pixel (content moved down-right, and up-left).
  """
  if level not in (0, 1, 2):
    raise ConfigError(f'TTA level must be 0, 1 or 2, got {level}.')
  if level == 0:
    return model_fn(images)

  def mirrored(x):
    return 0.5 * model_fn(x) + 0.5 * model_fn(x[:, :, ::-1])

  logits = mirrored(images)
  if level == 1:
    return logits
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  translated = [padded[:, i : i + height, i : i + width] for i in (0, 2)]
  return 0.5 * logits + 0.5 * (0.5 * mirrored(translated[0]) + 0.5 * mirrored(translated[1]))


# ------------------------------------------------------------------------------------------------
# The family (dlearn/models/family.py): the recipe's inputs, initialisation and evaluation
# ------------------------------------------------------------------------------------------------
class FastCNNFamily(ModelFamily):
  """FastCNN as the recipe trains it (config.fast_cnn): images normalised, flipped on alternate
  epochs from a random start per image and translated by up to `translate` pixels with reflected
  edges; the whitening layer set from the first `whitening_images` training images; evaluation
  with test-time augmentation of level `tta_level`. BatchNorm statistics are those of each
  device's batch unless `sync_batch_norm`."""

  ensembles = False  # init_from_data sets the model's whitening layer

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del part_axis
    if not config.fast_cnn.sync_batch_norm and not parallel.is_per_device(config.mapping):
      raise ConfigError(
        'config.fast_cnn.sync_batch_norm=False gives each device the statistics of its own '
        'batch, which needs the per-device step: add --config.mapping=pmap (or shard_map).'
      )
    return FastCNN(
      num_classes,
      input_shape,
      rngs=rngs,
      widths=tuple(config.fast_cnn.widths),
      axis_name=axis_name if config.fast_cnn.sync_batch_norm else None,
      dtype=compute_dtype(config),
    )

  def inputs(self, batch, config, info, *, rng, run_rng, train: bool, epoch):
    images = augment.normalize(batch['image'], config.data.mean, config.data.std)
    if train and config.data.augment:
      flip_key = jax.random.fold_in(run_rng, _FLIP_STREAM)
      images = augment.alternating_flip(images, batch['index'], epoch, flip_key)
      images = augment.random_translate(rng, images, config.fast_cnn.translate)
    return (images,)

  def logits(self, model, inputs, config, *, train: bool):
    (images,) = inputs
    if train:
      return model(images, train=True)
    return tta_logits(lambda x: model(x, train=False), images, config.fast_cnn.tta_level)

  def init_from_data(self, model, config, source, info) -> None:
    count = min(config.fast_cnn.whitening_images, len(source))
    images = np.stack([np.asarray(source[i]['image']) for i in range(count)])
    model.init_whitening(
      augment.normalize(images, config.data.mean, config.data.std),
      config.fast_cnn.whitening_eps,
    )


_FLIP_STREAM = 0x0F11  # the key of each example's first flip: its own stream of the run's key
