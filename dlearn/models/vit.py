"""Vision Transformers (Dosovitskiy et al. 2021) in timm's layout (`vit_*_patch16_224`,
`vit_*_patch32_224`): a patch embedding (a convolution of the patch's size and stride), a class
token and learned position embeddings (or global average pooling of the patch tokens), pre-LN
blocks of multi-head self-attention and a GELU MLP, a final LayerNorm, a linear head. LayerNorm
epsilon 1e-6, as timm's.

`config.model='vit'` reads `config.vit` (a plug-in section: `size` 'Ti' | 'S' | 'B' | 'L',
`patch`, `pool` 'token' | 'avg', `dropout`, `drop_path`: the stochastic-depth rate of the last
block, rising linearly from 0 as timm's; defaults below when absent). Dropout and stochastic depth
draw from one key per example (`ViTFamily.inputs`). `vit.load_timm(model, state_dict)` reads
timm's weights, the position embeddings interpolated (bicubic, as timm) when the image size
differs.
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
from dlearn.models import family
from dlearn.models.family import ModelFamily, compute_dtype

# (width, depth, heads) of each size; the MLP is 4x the width.
SIZES = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16)}
DEFAULTS = ml_collections.ConfigDict(
  {'size': 'B', 'patch': 16, 'pool': 'token', 'dropout': 0.0, 'drop_path': 0.0}
)
DROPOUT_STREAM = 0x64726F70  # folded into the device's step key for the model's own noise
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

  def __call__(self, x, noise=None):
    """`noise`: None, or (keys [B] of this block, dropout rate, drop-path rate) in training."""
    if noise is None:
      x = x + self.attention(self.norm1(x))
      return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
    keys, rate, drop_path = noise
    site = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
    y = _dropout(self.attention(self.norm1(x)), site(0), rate)
    x = x + _drop_path(y, site(1), drop_path)
    y = _dropout(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False), site(2), rate)
    y = _dropout(self.fc2(y), site(3), rate)
    return x + _drop_path(y, site(4), drop_path)


def _dropout(x, keys, rate: float):
  """Each example's own dropout mask, from its own key (keys [B])."""
  if not rate:
    return x
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1 - rate, x.shape[1:]))(keys)
  return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)


def _drop_path(x, keys, rate: float):
  """Stochastic depth: the whole branch of an example dropped with probability `rate`."""
  if not rate:
    return x
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1 - rate))(keys)
  return jnp.where(keep[:, None, None], x / (1 - rate), 0).astype(x.dtype)


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
    dropout: float = 0.0,
    drop_path: float = 0.0,
    dtype=jnp.float32,
  ):
    width, depth, heads = SIZES[size]
    self.dropout = dropout
    # timm's rule: stochastic depth rising linearly from 0 at the first block to `drop_path`
    self.drop_paths = tuple(float(r) for r in np.linspace(0, drop_path, depth))
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

  def __call__(self, x, *, train: bool = False, keys=None):
    """`keys`: one random key per example (in training, for dropout and stochastic depth), so
    that each example's masks depend on its own key only."""
    x = self.patch_embed(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    if self.pool == 'token':
      x = jnp.concatenate(
        [jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])), x], 1
      )
    x = x + self.pos_embed[...]
    noisy = train and keys is not None and (self.dropout > 0 or max(self.drop_paths) > 0)
    if noisy:  # the embedding's site after the blocks' 0 .. depth-1
      site = len(self.blocks)
      x = _dropout(x, jax.vmap(lambda k: jax.random.fold_in(k, site))(keys), self.dropout)
    for index, block in enumerate(self.blocks):
      block_keys = jax.vmap(lambda k, i=index: jax.random.fold_in(k, i))(keys) if noisy else None
      x = block(x, (block_keys, self.dropout, self.drop_paths[index]) if noisy else None)
    if self.pool == 'token':
      return self.head(self.norm(x)[:, 0])
    return self.head(self.norm(x.mean(axis=1)))  # timm's fc_norm for 'avg'


def settings(config) -> ml_collections.ConfigDict:
  merged = family.section(config, 'vit', DEFAULTS)
  if merged.size not in SIZES or merged.pool not in POOLS:
    raise ConfigError(
      f'config.vit.size={merged.size!r}, pool={merged.pool!r}: sizes {tuple(SIZES)}, pools {POOLS}.'
    )
  return merged


class ViTFamily(ModelFamily):
  ensembles = False  # its logits hand the model its dropout keys, which Ensemble does not pass

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
      dropout=section.dropout,
      drop_path=section.drop_path,
      dtype=compute_dtype(config),
    )

  def inputs(self, batch, config, info, *, rng, run_rng, train, epoch):
    """The images and, in training, one key per example from this device's key for this step
    (`steps.device_rng`: the step and the device folded in, so a resumed run draws the same
    masks, and the model holds no random state for the step to average over devices)."""
    (images,) = super().inputs(
      batch, config, info, rng=rng, run_rng=run_rng, train=train, epoch=epoch
    )
    if not train:
      return (images,)
    keys = jax.random.split(jax.random.fold_in(rng, DROPOUT_STREAM), images.shape[0])
    return images, jax.random.key_data(keys)

  def logits(self, model, inputs, config, *, train):
    images, *keys = inputs
    keys = jax.random.wrap_key_data(keys[0]) if keys else None
    return model(images, train=train, keys=keys)

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
