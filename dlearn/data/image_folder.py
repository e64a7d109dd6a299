"""Reader for image folders laid out as `<split>/<class>/<image>`, as a directory or as a
`.tar`/`.tar.gz` archive (JPEG, PNG, and whatever else Pillow decodes)."""

from __future__ import annotations

import collections
import gzip
import io
import os
import shutil
import tarfile
import tempfile

import numpy as np
from PIL import Image

from dlearn.errors import UserError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz')


class ImageFolderError(UserError, ValueError):
  """An image folder or archive that cannot be read; the message names the file or member."""


def _is_hidden(name: str) -> bool:
  return any(part.startswith('.') for part in name.split('/'))


def _directory_members(path: str):
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      full = os.path.join(root, name)
      yield os.path.relpath(full, path).replace(os.sep, '/'), full


class ImageFiles:
  """Every file of a folder (sorted names) or tar archive (archive order), hidden ones left out,
  read one at a time by position, so that a pile of images larger than memory streams: what
  `dlearn.predict` reads. A .tar.gz is first decompressed into a temporary .tar on disk, since a
  compressed archive cannot be read at a position."""

  def __init__(self, path: str):
    self.path = path
    if os.path.isdir(path):
      members = [(name, full) for name, full in _directory_members(path) if not _is_hidden(name)]
      self.names = [name for name, _ in members]
      self._files, self._fd = [full for _, full in members], None
      return
    if not path.endswith(ARCHIVE_SUFFIXES) or not os.path.isfile(path):
      raise ImageFolderError(
        f'{path}: expected an image folder or a {"/".join(ARCHIVE_SUFFIXES)} archive.'
      )
    try:
      with open(path, 'rb') as f:
        compressed = f.read(2) == b'\x1f\x8b'
      if compressed:
        self._tar = tempfile.TemporaryFile(suffix='.tar')
        with gzip.open(path) as f:
          shutil.copyfileobj(f, self._tar, 1 << 20)
        self._tar.flush()
        self._fd = self._tar.fileno()
      else:
        self._fd = os.open(path, os.O_RDONLY)
      os.lseek(self._fd, 0, os.SEEK_SET)  # the decompressed copy was just written to its end
      with (
        os.fdopen(os.dup(self._fd), 'rb') as listing,
        tarfile.open(fileobj=listing, mode='r:') as archive,
      ):
        members = [
          (m.name.lstrip('./'), (m.offset_data, m.size))
          for m in archive
          if m.isfile() and not _is_hidden(m.name.lstrip('./'))
        ]
    except (tarfile.TarError, OSError, EOFError) as e:
      raise ImageFolderError(f'{path}: not a readable tar archive ({e}).') from e
    self.names = [name for name, _ in members]
    self._files = [where for _, where in members]

  def __len__(self) -> int:
    return len(self.names)

  def content(self, i: int) -> bytes | str:
    """File i's bytes (an archive member) or path (a folder's file), as `decode` takes them."""
    if self._fd is None:
      return self._files[i]
    offset, size = self._files[i]
    return os.pread(self._fd, size, offset)

  def read(self, i: int) -> bytes:
    """File i's bytes."""
    content = self.content(i)
    if isinstance(content, bytes):
      return content
    with open(content, 'rb') as f:
      return f.read()


def read_split(path: str, split: str) -> tuple[ImageFiles, dict[str, list[tuple[str, int]]]]:
  """(the files of `path`, {class name: [(member name, its position in the files), ...]}) of
  split folder `split` in `path` (or of its only split folder, whatever its name). Checks the
  layout, not the images, and holds no image's bytes: they are read by position when needed."""
  if not os.path.exists(path):
    raise ImageFolderError(f'{path}: no such file or folder.')
  if not os.path.isdir(path) and not path.endswith(ARCHIVE_SUFFIXES):
    raise ImageFolderError(
      f'{path}: expected a directory or a {"/".join(ARCHIVE_SUFFIXES)} '
      'archive laid out as <split>/<class>/<image>.'
    )
  files = ImageFiles(path)
  by_split = collections.defaultdict(lambda: collections.defaultdict(list))
  for position, name in enumerate(files.names):
    parts = name.split('/')
    if len(parts) != 3:
      raise ImageFolderError(f'{path}: {name!r} is not laid out as <split>/<class>/<image>.')
    if not name.lower().endswith(IMAGE_SUFFIXES):
      raise ImageFolderError(
        f'{path}: {name!r} is not an image file ({", ".join(IMAGE_SUFFIXES)}).'
      )
    by_split[parts[0]][parts[1]].append((name, position))
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
  return files, {name: sorted(members) for name, members in sorted(chosen.items())}


def decode(
  path: str,
  name: str,
  content: bytes | str,
  *,
  channels: int,
  size: tuple[int, int] | None,
  resize: bool = True,
) -> np.ndarray:
  """One image as uint8 [H, W, channels], resized to `size` (H, W) when given; with `resize`
  False, an image of another size is an ImageFolderError instead."""
  try:
    with Image.open(io.BytesIO(content) if isinstance(content, bytes) else content) as image:
      image = image.convert('RGB' if channels == 3 else 'L')
      if size is not None and image.size != (size[1], size[0]):
        if not resize:
          raise ImageFolderError(
            f'{path}: {name} is {image.size[1]}x{image.size[0]}, not {size[0]}x{size[1]}: '
            'refused (resizing is off).'
          )
        image = image.resize((size[1], size[0]), Image.BILINEAR)
      pixels = np.asarray(image, np.uint8)
  except ImageFolderError:
    raise
  except Exception as e:  # Pillow raises many types for a corrupt or truncated file.
    raise ImageFolderError(f'{path}: {name}: cannot decode the image ({e}).') from e
  return pixels.reshape(*pixels.shape[:2], channels)
