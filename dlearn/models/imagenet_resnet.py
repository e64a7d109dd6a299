"""ImageNet ResNets, v1.5 (torchvision's `resnet50` and the Flax ImageNet example's layout): a 7x7
stride-2 stem and 3x3 stride-2 max pooling, then stages of bottleneck blocks (1x1, 3x3 with the
stage's stride, 1x1 to 4x the width), a projection shortcut where the shape changes, global
average pooling and a linear head. BatchNorm (epsilon 1e-5, momentum 0.9 as Flax counts it:
torch's 0.1) averages its statistics over the devices (`axis_name`). `zero_init_last_norm` starts
each block's last BatchNorm scale at 0 (Goyal et al. 2017), so that every block starts as the
identity.

`config.model='resnet50'` reads `config.imagenet_resnet` (a plug-in section: `stage_sizes`,
`width`, `zero_init_last_norm`; defaults below when the section is absent).
`imagenet_resnet.load_torchvision(state_dict)` turns torchvision's weights into this model's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dlearn.models import family
from dlearn.models.family import ModelFamily, compute_dtype

DEFAULTS = ml_collections.ConfigDict(
  {'stage_sizes': (3, 4, 6, 3), 'width': 64, 'zero_init_last_norm': False}
)
EXPANSION = 4


def _norm(features, axis_name, dtype, rngs, zero=False):
  return nnx.BatchNorm(
    features,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name,
    dtype=dtype,
    scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones,
    rngs=rngs,
  )


def _conv(in_features, out_features, kernel, stride, dtype, rngs):
  padding = [(kernel // 2, kernel // 2)] * 2  # torch's symmetric padding
  return nnx.Conv(
    in_features,
    out_features,
    (kernel, kernel),
    strides=stride,
    padding=padding,
    use_bias=False,
    dtype=dtype,
    kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal'),  # torchvision's
    rngs=rngs,
  )


class Bottleneck(nnx.Module):
  def __init__(self, in_features, width, stride, *, axis_name, dtype, rngs, zero_init_last_norm):
    out_features = width * EXPANSION
    self.conv1 = _conv(in_features, width, 1, 1, dtype, rngs)
    self.norm1 = _norm(width, axis_name, dtype, rngs)
    self.conv2 = _conv(width, width, 3, stride, dtype, rngs)  # v1.5: the stride is here
    self.norm2 = _norm(width, axis_name, dtype, rngs)
    self.conv3 = _conv(width, out_features, 1, 1, dtype, rngs)
    self.norm3 = _norm(out_features, axis_name, dtype, rngs, zero=zero_init_last_norm)
    project = stride != 1 or in_features != out_features
    self.shortcut = nnx.data(
      _conv(in_features, out_features, 1, stride, dtype, rngs) if project else None
    )
    self.shortcut_norm = nnx.data(_norm(out_features, axis_name, dtype, rngs) if project else None)

  def __call__(self, x, *, train: bool):
    average = not train
    y = nnx.relu(self.norm1(self.conv1(x), use_running_average=average))
    y = nnx.relu(self.norm2(self.conv2(y), use_running_average=average))
    y = self.norm3(self.conv3(y), use_running_average=average)
    if self.shortcut is not None:
      x = self.shortcut_norm(self.shortcut(x), use_running_average=average)
    return nnx.relu(x + y)


class ImageNetResNet(nnx.Module):
  def __init__(
    self,
    num_classes: int,
    image_shape: Sequence[int],
    *,
    rngs: nnx.Rngs,
    stage_sizes: Sequence[int] = (3, 4, 6, 3),
    width: int = 64,
    zero_init_last_norm: bool = False,
    axis_name: str | None = None,
    dtype=jnp.float32,
  ):
    self.stem = _conv(image_shape[-1], width, 7, 2, dtype, rngs)
    self.stem_norm = _norm(width, axis_name, dtype, rngs)
    blocks, in_features = [], width
    for stage, size in enumerate(stage_sizes):
      for index in range(size):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(
          Bottleneck(
            in_features,
            width * 2**stage,
            stride,
            axis_name=axis_name,
            dtype=dtype,
            rngs=rngs,
            zero_init_last_norm=zero_init_last_norm,
          )
        )
        in_features = width * 2**stage * EXPANSION
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool = False):
    x = nnx.relu(self.stem_norm(self.stem(x), use_running_average=not train))
    # torch's MaxPool2d(3, 2, padding=1): padding never wins the max
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(jnp.mean(x, axis=(1, 2)))


def settings(config) -> ml_collections.ConfigDict:
  """config.imagenet_resnet over the defaults (the section may be absent or partial)."""
  merged = family.section(config, 'imagenet_resnet', DEFAULTS)
  return merged


class ImageNetResNetFamily(ModelFamily):
  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del part_axis
    section = settings(config)
    return ImageNetResNet(
      num_classes,
      input_shape,
      rngs=rngs,
      stage_sizes=tuple(section.stage_sizes),
      width=section.width,
      zero_init_last_norm=section.zero_init_last_norm,
      axis_name=axis_name,
      dtype=compute_dtype(config),
    )

  def load_torch_state_dict(self, model, state_dict, config):
    head = state_dict.get('fc.weight')
    if head is not None and head.shape != model.head.kernel.shape[::-1]:
      # Fine-tuning on other classes: everything but the head, which keeps its initialisation.
      logging.info(
        'PyTorch weights for %d classes, the dataset has %d: the head starts afresh.',
        head.shape[0],
        model.head.kernel.shape[1],
      )
      state_dict = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
      load_torchvision(model, state_dict, skip=('head',))
    else:
      load_torchvision(model, state_dict)


# ------------------------------------------------------------------------------------------------
# torchvision's weights
# ------------------------------------------------------------------------------------------------
def _torch_names(model: ImageNetResNet) -> dict:
  """{dlearn module path (a tuple): torchvision's module name}, block by block (a stage ends
  where the blocks' output width changes)."""
  names = {('stem',): 'conv1', ('stem_norm',): 'bn1', ('head',): 'fc'}
  stage, position, previous = 1, 0, None
  for i, block in enumerate(model.blocks):
    out_features = block.conv3.out_features
    if previous is not None and out_features != previous:
      stage, position = stage + 1, 0
    for ours, theirs in [
      ('conv1', 'conv1'), ('norm1', 'bn1'), ('conv2', 'conv2'), ('norm2', 'bn2'),
      ('conv3', 'conv3'), ('norm3', 'bn3'), ('shortcut', 'downsample.0'),
      ('shortcut_norm', 'downsample.1'),
    ]:  # fmt: skip
      names[('blocks', i, ours)] = f'layer{stage}.{position}.{theirs}'
    previous, position = out_features, position + 1
  return names


def torch_modules(model: ImageNetResNet):
  """(path, module, torchvision's name) of every convolution, BatchNorm and linear layer."""
  for path, torch_name in _torch_names(model).items():
    module = model
    for key in path:
      module = module[key] if isinstance(key, int) else getattr(module, key)
    if module is not None:  # a block without a projection shortcut
      yield path, module, torch_name


def load_torchvision(model: ImageNetResNet, state_dict: dict, skip=()) -> None:
  """Sets `model`'s parameters and BatchNorm statistics from torchvision's `resnet50` (or any
  ResNet v1.5 of this layout) `state_dict` of numpy arrays: convolution kernels OIHW to HWIO,
  the head's weight transposed, BatchNorm weight/bias/running_mean/running_var to
  scale/bias/mean/var; the modules named in `skip` (e.g. 'head') are left as they are. A missing
  or extra name, or a shape that differs, is a ValueError."""
  used = set()

  def take(name, shape):
    if name not in state_dict:
      raise ValueError(f'torch state_dict has no {name!r}')
    value = np.asarray(state_dict[name], np.float32)
    if value.shape != tuple(shape):
      raise ValueError(f'{name}: shape {value.shape} in the state_dict, {tuple(shape)} here')
    used.add(name)
    return jnp.asarray(value)

  for path, module, torch_name in torch_modules(model):
    if path[0] in skip:
      continue
    if isinstance(module, nnx.Conv):
      height, width, in_features, out_features = module.kernel.shape
      weight = take(f'{torch_name}.weight', (out_features, in_features, height, width))
      module.kernel[...] = weight.transpose(2, 3, 1, 0)
    elif isinstance(module, nnx.Linear):
      module.kernel[...] = take(f'{torch_name}.weight', module.kernel.shape[::-1]).T
      module.bias[...] = take(f'{torch_name}.bias', module.bias.shape)
    else:
      (features,) = module.scale.shape
      module.scale[...] = take(f'{torch_name}.weight', (features,))
      module.bias[...] = take(f'{torch_name}.bias', (features,))
      module.mean[...] = take(f'{torch_name}.running_mean', (features,))
      module.var[...] = take(f'{torch_name}.running_var', (features,))
  unused = sorted(n for n in state_dict if n not in used and not n.endswith('num_batches_tracked'))
  if unused:
    raise ValueError(f'torch state_dict names this model has no place for: {unused[:5]}')
