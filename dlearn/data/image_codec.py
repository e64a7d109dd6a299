"""Encoded images (JPEG, PNG): what `dlearn.prepare` checks and stores, and the per-example
transforms the input pipeline runs in its worker processes.

- `checked`: one file's bytes as they will be stored (JPEG and PNG as given, other formats
  re-encoded as PNG), after decoding it once with Pillow, which refuses what a training run must
  not meet: an empty, corrupt or truncated file, CMYK, 16 bits per channel, a side under
  `MIN_SIDE`, more pixels than `MAX_PIXELS` (a decompression bomb).
- `ImageTransform`: training's random-resized ("Inception") crop and flip, and evaluation's centre
  crop, each decoded and resized to the model's size. OpenCV decodes and resizes: measured the
  fastest per core of the decoders that install from the package index
  (experiments/benchmarks/jpeg_decoders.py; README, "ImageNet-class images"). A JPEG is decoded
  at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain scaling) when the crop still has the model's size
  at that scale; the resize (`AREA_FACTOR`) is written again as matrices by `resize_weights` for
  `dlearn.export`.

numpy, Pillow and OpenCV only: a worker process that unpickles a transform imports no jax.
"""

from __future__ import annotations

import dataclasses
import io
import math
import types

import cv2
import numpy as np
from PIL import Image

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), as a refusal rather than a
# warning: about 9,459 x 9,459.
MAX_PIXELS = 89_478_485
MIN_SIDE = 4  # a 1x1 or 2x2 image is no picture to learn from (and leaves no crop to draw)
STORED_FORMATS = ('JPEG', 'PNG')  # kept as given; others are re-encoded as PNG (lossless)
USABLE_MODES = ('1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'RGBX')

# Worker processes (one per core) do the parallelism: OpenCV's own threads would oversubscribe.
cv2.setNumThreads(1)


def _png_bit_depth(content: bytes) -> int:
  return content[24] if content[12:16] == b'IHDR' else 8  # IHDR follows the 8-byte signature


def checked(content: bytes, channels: int) -> tuple[bytes, int, int]:
  """(the bytes to store, height, width) of one image file's content, after decoding it once
  (JPEG at 1/8 scale: still every byte read, so truncation is caught); a ValueError saying what is
  wrong and what to do otherwise."""
  if not content:
    raise ValueError('an empty file (0 bytes)')
  try:
    with Image.open(io.BytesIO(content)) as image:
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise ValueError(
          f'{height}x{width} pixels, more than the {MAX_PIXELS:,} allowed (a decompression bomb?): '
          'downscale it'
        )
      if min(width, height) < MIN_SIDE:
        raise ValueError(f'{height}x{width} pixels: both sides must be at least {MIN_SIDE} px')
      if image.mode == 'CMYK':
        raise ValueError('a CMYK image: convert it to RGB (e.g. `magick IN -colorspace sRGB OUT`)')
      if image.mode not in USABLE_MODES or (image.format == 'PNG' and _png_bit_depth(content) > 8):
        raise ValueError(
          f'{"16-bit" if image.format == "PNG" else image.mode} {image.format}: dlearn reads '
          '8 bits per channel; convert it (e.g. `magick IN -depth 8 OUT`)'
        )
      image_format = image.format
      mode = 'RGB' if channels == 3 else 'L'
      if image_format == 'JPEG':
        image.draft(mode, (max(1, width // 8), max(1, height // 8)))
      image.load()
      if image_format in STORED_FORMATS:
        return content, height, width
      output = io.BytesIO()
      image.convert(mode).save(output, 'PNG')
      return output.getvalue(), height, width
  except ValueError:
    raise
  except Image.DecompressionBombError as e:
    raise ValueError(f'{e} (a decompression bomb?): downscale it') from e
  except Image.UnidentifiedImageError as e:  # its message names a BytesIO, not the file
    raise ValueError('cannot decode the image (not an image format Pillow reads)') from e
  except Exception as e:  # Pillow raises many types for a corrupt or truncated file
    raise ValueError(f'cannot decode the image ({e})') from e


# ----------------------------------------------------------------------------------------------
# Crop boxes: (top, left, height, width) in the image's pixels
# ----------------------------------------------------------------------------------------------
def random_resized_box(rng: np.random.Generator, height, width, scale, ratio):
  """torchvision's RandomResizedCrop box: an area of `scale` (a range of fractions of the image)
  and an aspect ratio (width/height) log-uniform in `ratio`, at a uniform position; after 10
  draws that do not fit, the centre crop of the whole image clamped to `ratio`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  aspect = width / height
  if aspect < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif aspect > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def center_box(height, width, size, fraction, xp=np):
  """The centre crop of evaluation: `fraction` of the largest box of the output's shape `size`
  (H, W) inside the image (for a square output, a square of fraction x the shorter side), i.e.
  the references' resize of the shorter side to size/fraction followed by a centre crop of size.
  `xp`: numpy, or jax.numpy with traced sizes (dlearn.export)."""
  scale = fraction * xp.minimum(height / size[0], width / size[1])
  h, w = size[0] * scale, size[1] * scale
  return (height - h) / 2, (width - w) / 2, h, w


def pixel_box(box, height, width, xp=np):
  """The whole pixels (top, left, bottom, right) that `decode_box` takes of the box (top, left,
  height, width; floats) in an image of height x width: its edges rounded (half to even), at
  least one pixel, inside the image. `xp` as `center_box`'s."""
  top, left, h, w = box
  y0, x0 = xp.round(top), xp.round(left)
  y1 = xp.maximum(y0 + 1, xp.minimum(height, xp.round(top + h)))
  x1 = xp.maximum(x0 + 1, xp.minimum(width, xp.round(left + w)))
  return y0, x0, y1, x1


# Shrinking an axis by at least this factor averages each output pixel's footprint (OpenCV's area
# interpolation, which antialiases); less, or growing, is bilinear, as the Flax and big_vision
# ImageNet pipelines resize (tf.image.resize, no antialiasing). OpenCV's area interpolation for
# small factors costs ten times its bilinear (1.3 ms against 0.1 ms for 290 to 224 px here), and
# a JPEG's larger factors mostly go to its DCT-domain reduction first.
AREA_FACTOR = 2


def resize_weights(xp, in_size, out_size: int, start, stop):
  """[out_size, in_size] weights that resize the pixels [start, stop) of an axis of `in_size`
  to `out_size`, as `decode_box` resizes: shrinking AREA_FACTOR times or more, each output pixel
  the mean of the input it covers (fractional overlaps); otherwise bilinear between pixel
  centres, the box's edge pixels repeated. `xp`: numpy, or jax.numpy with traced sizes
  (dlearn.export)."""
  scale = (stop - start) / out_size
  pixels = xp.arange(in_size, dtype=xp.float32)[None, :]
  lower = start + xp.arange(out_size, dtype=xp.float32)[:, None] * scale
  overlap = xp.clip(xp.minimum(lower + scale, pixels + 1) - xp.maximum(lower, pixels), 0, None)
  centre = xp.clip(lower + scale / 2 - 0.5, start, stop - 1)
  bilinear = xp.clip(1 - xp.abs(pixels - centre), 0, None)
  return xp.where(scale >= AREA_FACTOR, overlap / scale, bilinear)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
_REDUCED = {
  3: {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8},
  1: {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8},
}  # fmt: skip


def _is_jpeg(content) -> bool:
  return bytes(content[:2]) == b'\xff\xd8'


def image_size(content) -> tuple[int, int]:
  """(height, width) from the file's header (Pillow reads no pixels)."""
  with Image.open(io.BytesIO(content)) as image:
    return image.size[::-1]


# `pixel_box` on Python numbers (numpy's functions cost more than the arithmetic here).
_SCALARS = types.SimpleNamespace(round=round, maximum=max, minimum=min)


def decode_box(
  content, box, size, channels: int, flip: bool = False, image_shape=None
) -> np.ndarray:
  """uint8 [size H, size W, channels]: the crop `box` (top, left, height, width; floats allowed)
  of the encoded image `content`, resized (`_resize`) and flipped left-right if `flip`.
  A JPEG is decoded at the smallest of 1/8, 1/4, 1/2 that leaves the box at least `size`.
  `image_shape`: the image's (height, width) where known (else read from its header)."""
  top, left, h, w = box
  reduction = 1
  if _is_jpeg(content):
    while reduction < 8 and h / (2 * reduction) >= size[0] and w / (2 * reduction) >= size[1]:
      reduction *= 2
  flags = _REDUCED[channels][reduction] | cv2.IMREAD_IGNORE_ORIENTATION  # as the references
  pixels = cv2.imdecode(np.frombuffer(content, np.uint8), flags)
  if pixels is None:
    raise ValueError('OpenCV cannot decode the image')
  if reduction > 1:
    full_height, full_width = image_shape or image_size(content)
    sy, sx = pixels.shape[0] / full_height, pixels.shape[1] / full_width
    top, left, h, w = top * sy, left * sx, h * sy, w * sx
  y0, x0, y1, x1 = (int(v) for v in pixel_box((top, left, h, w), *pixels.shape[:2], _SCALARS))
  pixels = _resize(pixels[y0:y1, x0:x1], size)
  if flip:
    pixels = cv2.flip(pixels, 1)
  if channels == 3:
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
  return pixels.reshape(size[0], size[1], 1)


def _interpolation(before: int, after: int) -> int:
  return cv2.INTER_AREA if before >= AREA_FACTOR * after else cv2.INTER_LINEAR


def _resize(pixels, size):
  """Bilinear along an axis that grows or shrinks less than AREA_FACTOR times, area
  interpolation along one that shrinks more: one OpenCV call when both axes agree, else one per
  axis."""
  (height, width), (out_h, out_w) = pixels.shape[:2], size
  rows, columns = _interpolation(height, out_h), _interpolation(width, out_w)
  if rows == columns:
    return cv2.resize(pixels, (out_w, out_h), interpolation=rows)
  pixels = cv2.resize(pixels, (width, out_h), interpolation=rows)
  return cv2.resize(pixels, (out_w, out_h), interpolation=columns)


@dataclasses.dataclass(frozen=True)
class ImageTransform:
  """What turns a stored (encoded) image into the model's input, on the host: `train` (training)
  and `evaluate` (evaluation, prediction). Set by config.data (`pipeline.image_transform`)."""

  size: tuple[int, int]  # (H, W) of the model's input
  channels: int
  train_crop: str = 'random_resized'  # or 'center' (no augmentation)
  scale: tuple[float, float] = (0.08, 1.0)  # random_resized: the crop's fraction of the area
  ratio: tuple[float, float] = (3 / 4, 4 / 3)  # ... and its aspect ratio (width / height)
  center_fraction: float = 0.875  # center: the crop's fraction of the shorter side
  flip: bool = True  # training: left-right with probability 1/2

  def train(self, content, rng: np.random.Generator, image_shape=None) -> np.ndarray:
    """`image_shape`: (height, width) where the record has them (else from the header)."""
    height, width = image_shape or image_size(content)
    if self.train_crop == 'center':
      box = center_box(height, width, self.size, self.center_fraction)
    else:
      box = random_resized_box(rng, height, width, self.scale, self.ratio)
    flip = self.flip and rng.random() < 0.5
    return decode_box(content, box, self.size, self.channels, flip, (height, width))

  def evaluate(self, content, image_shape=None) -> np.ndarray:
    height, width = image_shape or image_size(content)
    box = center_box(height, width, self.size, self.center_fraction)
    return decode_box(content, box, self.size, self.channels, image_shape=(height, width))


TRAIN_CROPS = ('random_resized', 'center')
