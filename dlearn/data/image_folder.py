"""Reader for image folders laid out as `<split>/<class>/<image>`, as a directory or as a
`.tar`/`.tar.gz` archive (JPEG, PNG, and whatever else Pillow decodes)."""

from __future__ import annotations

import collections
import io
import os
import tarfile

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz')


class ImageFolderError(ValueError):
  """An image folder or archive that cannot be read; the message names the file or member."""


def _is_hidden(name: str) -> bool:
  return any(part.startswith('.') for part in name.split('/'))


def _archive_members(path: str):
  """(name, bytes) of every regular file of a tar archive, in one sequential pass (a .tar.gz
  cannot seek cheaply)."""
  try:
    with tarfile.open(path, 'r:*') as archive:
      for member in archive:
        if member.isfile():
          yield member.name.lstrip('./'), archive.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ImageFolderError(f'{path}: not a readable tar archive ({e}).') from e


def _directory_members(path: str):
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(root, name)
      yield os.path.relpath(full, path).replace(os.sep, '/'), full


def read_split(path: str, split: str) -> dict[str, list[tuple[str, bytes | str]]]:
  """{class name: [(member name, bytes or file path), ...]} of split folder `split` in `path`
  (or of its only split folder, whatever its name). Checks the layout, not the images."""
  if os.path.isdir(path):
    members = _directory_members(path)
  elif path.endswith(ARCHIVE_SUFFIXES):
    if not os.path.exists(path):
      raise ImageFolderError(f'{path}: no such file.')
    members = _archive_members(path)
  else:
    raise ImageFolderError(
      f'{path}: expected a directory or a {"/".join(ARCHIVE_SUFFIXES)} '
      'archive laid out as <split>/<class>/<image>.'
    )
  by_split = collections.defaultdict(lambda: collections.defaultdict(list))
  for name, content in members:
    if _is_hidden(name):
      continue
    parts = name.split('/')
    if len(parts) != 3:
      raise ImageFolderError(f'{path}: {name!r} is not laid out as <split>/<class>/<image>.')
    if not name.lower().endswith(IMAGE_SUFFIXES):
      raise ImageFolderError(
        f'{path}: {name!r} is not an image file ({", ".join(IMAGE_SUFFIXES)}).'
      )
    by_split[parts[0]][parts[1]].append((name, content))
  if split in by_split:
    chosen = by_split[split]
  elif len(by_split) == 1:
    chosen = next(iter(by_split.values()))
  elif not by_split:
    raise ImageFolderError(f'{path}: no images found (an empty split).')
  else:
    raise ImageFolderError(
      f'{path}: holds split folders {sorted(by_split)}, none named '
      f'{split!r}; name one on the command line per split.'
    )
  return {name: sorted(files) for name, files in sorted(chosen.items())}


def decode(
  path: str, name: str, content: bytes | str, *, channels: int, size: tuple[int, int] | None
) -> np.ndarray:
  """One image as uint8 [H, W, channels], resized to `size` (H, W) when given."""
  try:
    with Image.open(io.BytesIO(content) if isinstance(content, bytes) else content) as image:
      image = image.convert('RGB' if channels == 3 else 'L')
      if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
      pixels = np.asarray(image, np.uint8)
  except Exception as e:  # Pillow raises many types for a corrupt or truncated file.
    raise ImageFolderError(f'{path}: {name}: cannot decode the image ({e}).') from e
  return pixels.reshape(*pixels.shape[:2], channels)
