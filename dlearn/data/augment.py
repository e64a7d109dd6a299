"""Image preprocessing that runs on the device, inside the compiled step.

Batches arrive as uint8; scaling, normalisation and augmentation happen here, so a batch crosses
to the device at a quarter of the float32 size and augmentation costs the host nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images, mean, std):
  """uint8 [.., C] → float32 (x / 255 - mean) / std, per channel."""
  images = images.astype(jnp.float32) / 255.0
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_and_flip(rng, images, padding: int):
  """Per-image random crop of the zero-padded image back to its size, and a horizontal flip with
  probability 1/2 (the standard CIFAR augmentation)."""
  batch, height, width, _ = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(crop_rng, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  images = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_rng, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def random_translate(rng, images, padding: int):
  """Per-image random translation by up to `padding` pixels up or down and left or right
  (independently, uniform over the 2·padding + 1 shifts of each), the image's edges reflected
  into the space it leaves: a random crop of the reflect-padded image back to its size (the fast
  CIFAR-10 recipe's translation). images: [B, H, W, C], uint8 or float."""
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode='reflect')
  offsets = jax.random.randint(rng, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

  return jax.vmap(crop)(padded, offsets)


def flip_start(example_index, key):
  """Each example's fixed random bit (bool, like `example_index`): a function of its index and
  `key` only, so the same example gets the same bit in any batch, on any device, on resume."""
  bit = lambda index: jax.random.bernoulli(jax.random.fold_in(key, index))
  return jax.vmap(bit)(jnp.ravel(example_index)).reshape(jnp.shape(example_index))


def alternating_flip(images, example_index, epoch, key):
  """Horizontal flips that alternate by epoch (the fast CIFAR-10 recipe): image i is flipped iff
  its start bit (`flip_start`, random, fixed per example) XOR the epoch is odd, so every image is
  seen flipped on every other epoch, half of them flipped in epoch 0. images: [B, H, W, C];
  example_index: [B] integers (each example's index in the dataset); epoch: an integer (traced or
  not); key: a jax random key."""
  flip = flip_start(example_index, key) ^ (jnp.asarray(epoch) % 2 == 1)
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


# Sequences [B, T, C] with lengths [B]; the steps past each length are zero and stay zero.


def _valid_steps(sequences, lengths):
  return (jnp.arange(sequences.shape[1])[None, :] < lengths[:, None])[..., None]


def jitter(rng, sequences, lengths, std: float):
  """Gaussian noise of standard deviation `std` added to every valid step."""
  noise = std * jax.random.normal(rng, sequences.shape, sequences.dtype)
  return jnp.where(_valid_steps(sequences, lengths), sequences + noise, 0)


def scaling(rng, sequences, std: float):
  """Each channel of each sequence multiplied by its own factor, drawn from N(1, std²)."""
  factors = 1 + std * jax.random.normal(rng, (sequences.shape[0], 1, sequences.shape[2]))
  return sequences * factors.astype(sequences.dtype)


def window_slice(rng, sequences, lengths, fraction: float):
  """A random window of each sequence, `fraction` of its length (at least one step), moved to the
  start: (sequences, new lengths). The time scale is kept (no resampling)."""
  new_lengths = jnp.maximum(1, jnp.floor(fraction * lengths).astype(lengths.dtype))
  starts = jax.random.randint(rng, lengths.shape, 0, lengths - new_lengths + 1)
  steps = jnp.minimum(starts[:, None] + jnp.arange(sequences.shape[1]), sequences.shape[1] - 1)
  windows = jnp.take_along_axis(sequences, steps[..., None], axis=1)
  return jnp.where(_valid_steps(windows, new_lengths), windows, 0), new_lengths


# Images [B, H, W, C] with soft targets [B, classes] (one-hot labels, or already mixed).


def mix(rng, images, targets, mixup_alpha: float, cutmix_alpha: float):
  """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019), as timm applies them per batch: each
  example mixed with the batch's reverse, one ratio lam ~ Beta(alpha, alpha) for the batch;
  with both alphas set, one of the two per batch, each with probability 1/2. Mixup blends the
  images, lam of the example's own; CutMix pastes a box of about (1 - lam) of the area from the
  other image, lam then the uncovered fraction. The targets are blended by lam: soft, summing
  to 1. Returns (images as float32, targets)."""
  choice_key, mixup_key, cutmix_key, box_key = jax.random.split(rng, 4)
  images = images.astype(jnp.float32)
  other_images, other_targets = images[::-1], targets[::-1]
  _, height, width, _ = images.shape

  def mixup():
    lam = jax.random.beta(mixup_key, mixup_alpha, mixup_alpha)
    return lam * images + (1 - lam) * other_images, lam

  def cutmix():
    lam = jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha)
    cut = jnp.sqrt(1 - lam)
    centre_y, centre_x = jax.random.uniform(box_key, (2,)) * jnp.array([height, width])
    half_h, half_w = cut * height / 2, cut * width / 2
    rows, columns = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    top, bottom = (
      jnp.clip(jnp.round(centre_y - half_h), 0, height),
      jnp.clip(jnp.round(centre_y + half_h), 0, height),
    )
    left, right = (
      jnp.clip(jnp.round(centre_x - half_w), 0, width),
      jnp.clip(jnp.round(centre_x + half_w), 0, width),
    )
    inside = (rows >= top) & (rows < bottom) & (columns >= left) & (columns < right)
    lam = 1 - (bottom - top) * (right - left) / (height * width)
    return jnp.where(inside[None, :, :, None], other_images, images), lam

  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(choice_key)
    (mixed_up, lam_up), (cut, lam_cut) = mixup(), cutmix()
    images, lam = jnp.where(use_cutmix, cut, mixed_up), jnp.where(use_cutmix, lam_cut, lam_up)
  elif mixup_alpha > 0:
    images, lam = mixup()
  elif cutmix_alpha > 0:
    images, lam = cutmix()
  else:
    return images, targets
  return images, lam * targets + (1 - lam) * other_targets
