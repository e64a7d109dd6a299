"""Vision Transformers (Dosovitskiy et al. 2021) in timm's layout (`vit_*_patch16_224`,
`vit_*_patch32_224`): a patch embedding (a convolution of the patch's size and stride), a class
token and learned position embeddings (or global average pooling of the patch tokens), pre-LN
blocks of multi-head self-attention and a GELU MLP, a final LayerNorm, a linear head. LayerNorm
epsilon 1e-6, as timm's.

`config.model='vit'` reads `config.vit` (a plug-in section: `size` 'Ti' | 'S' | 'B' | 'L',
`patch`, `pool` 'token' | 'avg'; defaults below when absent). `vit.load_timm(model,
state_dict)` reads timm's weights, the position embeddings interpolated (bicubic, as timm) when
the image size differs. Dropout and stochastic depth are not in yet (issue 26's note).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dlearn.errors import ConfigError
from dlearn.models.family import ModelFamily, compute_dtype

# (width, depth, heads) of each size; the MLP is 4x the width.
SIZES = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16)}
DEFAULTS = ml_collections.ConfigDict({'size': 'B', 'patch': 16, 'pool': 'token'})
POOLS = ('token', 'avg')


def _linear(i, o, dtype, rngs):
  return nnx.Linear(
    i, o, dtype=dtype, kernel_init=nnx.initializers.truncated_normal(0.02), rngs=rngs
  )


def _norm(features, dtype, rngs):
  return nnx.LayerNorm(features, epsilon=1e-6, dtype=dtype, rngs=rngs)


class Block(nnx.Module):
  def __init__(self, width, heads, *, dtype, rngs):
    self.heads = heads
    self.norm1 = _norm(width, dtype, rngs)
    self.qkv = _linear(width, 3 * width, dtype, rngs)
    self.proj = _linear(width, width, dtype, rngs)
    self.norm2 = _norm(width, dtype, rngs)
    self.fc1 = _linear(width, 4 * width, dtype, rngs)
    self.fc2 = _linear(4 * width, width, dtype, rngs)

  def attention(self, x):
    batch, tokens, width = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(width // self.heads).astype(x.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    return self.proj(jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, tokens, width))

  def __call__(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class ViT(nnx.Module):
  def __init__(
    self,
    num_classes: int,
    image_shape: Sequence[int],
    *,
    rngs: nnx.Rngs,
    size: str = 'B',
    patch: int = 16,
    pool: str = 'token',
    dtype=jnp.float32,
  ):
    width, depth, heads = SIZES[size]
    height, image_width, channels = image_shape
    if height % patch or image_width % patch:
      raise ConfigError(
        f'config.vit.patch={patch} does not divide the {height}x{image_width} images: choose '
        'a patch size that does, or another config.data.image_size.'
      )
    self.pool, self.patch = pool, patch
    self.patch_embed = nnx.Conv(
      channels, width, (patch, patch), strides=patch, padding='VALID', dtype=dtype, rngs=rngs
    )
    tokens = (height // patch) * (image_width // patch) + (pool == 'token')
    self.cls_token = nnx.Param(jnp.zeros((1, 1, width))) if pool == 'token' else nnx.data(None)
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, width)))
    self.blocks = nnx.List([Block(width, heads, dtype=dtype, rngs=rngs) for _ in range(depth)])
    self.norm = _norm(width, dtype, rngs)
    self.head = nnx.Linear(
      width, num_classes, dtype=dtype, kernel_init=nnx.initializers.zeros, rngs=rngs
    )

  def __call__(self, x, *, train: bool = False):
    del train  # no dropout yet
    x = self.patch_embed(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    if self.pool == 'token':
      x = jnp.concatenate(
        [jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])), x], 1
      )
    x = x + self.pos_embed[...]
    for block in self.blocks:
      x = block(x)
    if self.pool == 'token':
      return self.head(self.norm(x)[:, 0])
    return self.head(self.norm(x.mean(axis=1)))  # timm's fc_norm for 'avg'


def settings(config) -> ml_collections.ConfigDict:
  merged = DEFAULTS.copy_and_resolve_references()
  merged.update(dict(config.get('vit', {})))
  if merged.size not in SIZES or merged.pool not in POOLS:
    raise ConfigError(
      f'config.vit.size={merged.size!r}, pool={merged.pool!r}: sizes {tuple(SIZES)}, pools {POOLS}.'
    )
  return merged


class ViTFamily(ModelFamily):
  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del axis_name, part_axis  # no BatchNorm
    section = settings(config)
    return ViT(
      num_classes,
      input_shape,
      rngs=rngs,
      size=section.size,
      patch=section.patch,
      pool=section.pool,
      dtype=compute_dtype(config),
    )

  def load_torch_state_dict(self, model, state_dict, config):
    head = state_dict.get('head.weight')
    fresh_head = head is not None and head.shape != model.head.kernel.shape[::-1]
    if fresh_head:  # fine-tuning on other classes: everything but the head
      logging.info('timm weights for %d classes: the head starts afresh.', head.shape[0])
      state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.')}
    load_timm(model, state_dict, head=not fresh_head)


def _interpolated(pos_embed: np.ndarray, tokens: int, has_cls: bool) -> np.ndarray:
  """timm's position embeddings [1, T, D] resized (bicubic over the grid) to `tokens`."""
  if pos_embed.shape[1] == tokens:
    return pos_embed
  cls, grid = (pos_embed[:, :1], pos_embed[:, 1:]) if has_cls else (pos_embed[:, :0], pos_embed)
  old, new = int(round(np.sqrt(grid.shape[1]))), int(round(np.sqrt(tokens - has_cls)))
  logging.info('Position embeddings interpolated from a %dx%d grid to %dx%d.', old, old, new, new)
  grid = grid.reshape(1, old, old, -1)
  grid = np.asarray(jax.image.resize(grid, (1, new, new, grid.shape[-1]), 'bicubic'))
  return np.concatenate([cls, grid.reshape(1, new * new, -1)], axis=1)


def load_timm(model: ViT, state_dict: dict, head: bool = True) -> None:
  """Sets `model`'s parameters from timm's `vit_*` `state_dict` (numpy arrays): the patch
  embedding's kernel OIHW to HWIO, linear weights transposed, position embeddings interpolated
  when the grid differs; `head` False leaves the head as it is. A missing or extra name, or
  another shape, is a ValueError."""
  used = set()

  def take(name, shape=None):
    if name not in state_dict:
      raise ValueError(f'timm state_dict has no {name!r}')
    used.add(name)
    value = np.asarray(state_dict[name], np.float32)
    if shape is not None and value.shape != tuple(shape):
      raise ValueError(f'{name}: shape {value.shape} in the state_dict, {tuple(shape)} here')
    return value

  def linear(module, name):
    module.kernel[...] = jnp.asarray(take(f'{name}.weight', module.kernel.shape[::-1]).T)
    module.bias[...] = jnp.asarray(take(f'{name}.bias', module.bias.shape))

  def norm(module, name):
    module.scale[...] = jnp.asarray(take(f'{name}.weight', module.scale.shape))
    module.bias[...] = jnp.asarray(take(f'{name}.bias', module.bias.shape))

  h, w, i, o = model.patch_embed.kernel.shape
  model.patch_embed.kernel[...] = jnp.asarray(
    take('patch_embed.proj.weight', (o, i, h, w)).transpose(2, 3, 1, 0)
  )
  model.patch_embed.bias[...] = jnp.asarray(take('patch_embed.proj.bias', (o,)))
  if model.cls_token is not None:
    model.cls_token[...] = jnp.asarray(take('cls_token', model.cls_token.shape))
  tokens = model.pos_embed.shape[1]
  model.pos_embed[...] = jnp.asarray(
    _interpolated(take('pos_embed'), tokens, model.cls_token is not None)
  )
  for index, block in enumerate(model.blocks):
    prefix = f'blocks.{index}'
    norm(block.norm1, f'{prefix}.norm1')
    linear(block.qkv, f'{prefix}.attn.qkv')
    linear(block.proj, f'{prefix}.attn.proj')
    norm(block.norm2, f'{prefix}.norm2')
    linear(block.fc1, f'{prefix}.mlp.fc1')
    linear(block.fc2, f'{prefix}.mlp.fc2')
  norm(model.norm, 'norm' if model.pool == 'token' else 'fc_norm')
  if head:
    linear(model.head, 'head')
  unused = sorted(set(state_dict) - used)
  if unused:
    raise ValueError(f'timm state_dict names this model has no place for: {unused[:5]}')
