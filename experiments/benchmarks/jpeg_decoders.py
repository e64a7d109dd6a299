"""Which JPEG decoder the input pipeline uses, by measurement: images/s on one core (one thread,
one process) of each decoder installed in the running environment, over the folder of
`imagenet_like.py`, for

- `decode`: the whole image to RGB uint8;
- `train crop`: the training transform's work, a random-resized crop (scale (0.08, 1), ratio
  (3/4, 4/3), the same boxes for every decoder) resized to 224x224, bilinear; where the decoder
  can scale in the DCT domain (libjpeg's 1/2, 1/4, 1/8), at the largest reduction that keeps the
  crop at least 224 px on both sides.

Run it once per environment (pillow-simd replaces Pillow, so it lives in a venv of its own):

  python experiments/benchmarks/jpeg_decoders.py --folder=data/imagenet_like --count=2000
  /tmp/simd/bin/python experiments/benchmarks/jpeg_decoders.py --folder=data/imagenet_like

Each run adds its rows to experiments/benchmarks/results/jpeg_decoders-<machine>.json (keyed by
decoder). numpy and Pillow plus whichever of simplejpeg, turbojpeg (PyTurboJPEG) and cv2 import.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagenet_like  # noqa: E402

SIZE = 224


def boxes(shapes, seed=0):
  """One random-resized crop box (top, left, height, width) per image, torchvision's rule."""
  rng = np.random.default_rng(seed)
  out = []
  for height, width in shapes:
    area = height * width
    for _ in range(10):
      target = area * rng.uniform(0.08, 1.0)
      aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
      if 0 < w <= width and 0 < h <= height:
        out.append(
          (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
        )
        break
    else:
      out.append((0, 0, height, width))
  return out


def reduction(box, limit=8):
  """The largest of 1, 2, 4, 8 that keeps the box at least SIZE on both sides."""
  scale = 1
  while scale * 2 <= limit and min(box[2], box[3]) / (scale * 2) >= SIZE:
    scale *= 2
  return scale


def pil_decoders():
  def decode(data):
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert('RGB'))

  def crop(data, box):
    top, left, h, w = box
    with Image.open(io.BytesIO(data)) as image:
      full_w, full_h = image.size
      scale = reduction(box)
      if scale > 1:
        image.draft('RGB', (full_w // scale, full_h // scale))
      sx, sy = image.size[0] / full_w, image.size[1] / full_h
      image = image.convert('RGB')
      image = image.resize(
        (SIZE, SIZE), Image.BILINEAR, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy)
      )
      return np.asarray(image)

  import PIL

  name = 'pillow-simd' if 'post' in PIL.__version__ else 'pillow'
  return {name: (PIL.__version__, decode, crop)}


def simplejpeg_decoders():
  try:
    import simplejpeg
  except ImportError:
    return {}

  def decode(data):
    return simplejpeg.decode_jpeg(data, colorspace='RGB')

  def crop(data, box):
    top, left, h, w = box
    full_h, full_w = simplejpeg.decode_jpeg_header(data)[:2]
    scale = reduction(box)
    # min_height/min_width: libjpeg's largest DCT reduction giving at least this size.
    pixels = simplejpeg.decode_jpeg(
      data, colorspace='RGB', min_height=-(-full_h // scale), min_width=-(-full_w // scale)
    )
    sy, sx = pixels.shape[0] / full_h, pixels.shape[1] / full_w
    image = Image.fromarray(pixels)
    return np.asarray(
      image.resize(
        (SIZE, SIZE), Image.BILINEAR, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy)
      )
    )

  return {'simplejpeg': (simplejpeg.__version__, decode, crop)}


def opencv_decoders():
  try:
    import cv2
  except ImportError:
    return {}
  cv2.setNumThreads(1)
  flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
  flags[8] = cv2.IMREAD_REDUCED_COLOR_8

  def decode(data):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), 4)

  def crop(data, box):
    top, left, h, w = box
    scale = reduction(box)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags[scale])
    t, lft, hh, ww = (round(v / scale) for v in box)
    region = pixels[t : t + hh, lft : lft + ww]
    # dlearn's rule (image_codec.AREA_FACTOR): area interpolation from 2x shrinking, else bilinear
    area = min(region.shape[:2]) >= 2 * SIZE
    interpolation = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(region, (SIZE, SIZE), interpolation=interpolation), 4)

  return {'opencv': (cv2.__version__, decode, crop)}


def turbojpeg_decoders():
  try:
    import turbojpeg
  except ImportError:
    return {}
  try:
    jpeg = turbojpeg.TurboJPEG()
  except Exception as e:  # the wheel has no libturbojpeg; it needs the system's
    return {'pyturbojpeg': (f'unusable: {e}'.splitlines()[0], None, None)}

  def decode(data):
    return jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB)

  def crop(data, box):
    top, left, h, w = box
    scale = reduction(box)
    pixels = jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, scale))
    image = Image.fromarray(pixels)
    return np.asarray(
      image.resize(
        (SIZE, SIZE), Image.BILINEAR, box=tuple(v / scale for v in (left, top, left + w, top + h))
      )
    )

  return {'pyturbojpeg': (turbojpeg.__version__, decode, crop)}


def timed(function, items, repeats):
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    for item in items:
      function(*item)
    best = min(best, time.perf_counter() - start)
  return len(items) / best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--folder', default='data/imagenet_like')
  parser.add_argument('--count', type=int, default=2000, help='images in the folder')
  parser.add_argument('--images', type=int, default=500, help='images timed per row')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  folder = imagenet_like.make_folder(args.folder, args.count)
  files = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)[
    :: max(1, args.count // args.images)
  ]
  files = files[: args.images]
  datas = [open(f, 'rb').read() for f in files]
  shapes = [Image.open(io.BytesIO(d)).size[::-1] for d in datas]
  crop_boxes = boxes(shapes)
  decoders = {
    **pil_decoders(),
    **simplejpeg_decoders(),
    **opencv_decoders(),
    **turbojpeg_decoders(),
  }
  machine = f'cpu-{os.cpu_count()}core'
  path = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'results', f'jpeg_decoders-{machine}.json'
  )
  results = json.load(open(path)) if os.path.exists(path) else {'rows': {}}
  print(
    f'{len(datas)} images, {np.mean([len(d) for d in datas]) / 1e3:.0f} kB and '
    f'{np.mean([h * w for h, w in shapes]) / 1e3:.0f} kpx on average; images/s on one core'
  )
  for name, (version, decode, crop) in decoders.items():
    if decode is None:
      print(f'{name:12s} {version}')
      results['rows'][name] = {'version': version}
      continue
    row = {
      'version': version,
      'decode': timed(decode, [(d,) for d in datas], args.repeats),
      'train_crop': timed(crop, list(zip(datas, crop_boxes)), args.repeats),
    }
    print(
      f'{name:12s} {version:10s} decode {row["decode"]:7.0f}   train crop {row["train_crop"]:7.0f}'
    )
    results['rows'][name] = row
  results.update(
    date=datetime.date.today().isoformat(),
    machine_kind=machine,
    python=platform.python_version(),
    folder=f'{args.count} images by imagenet_like.py; {len(datas)} timed',
    repeats=args.repeats,
    mean_kilobytes=float(np.mean([len(d) for d in datas]) / 1e3),
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
  print(path)


if __name__ == '__main__':
  main()
