"""New inputs as data sources (`len`, `[i]`, `name(i)`, `errors`): what `dlearn.predict --input`
names (an image folder or archive, a `.ts` file) or a prepared split, each example converted as
the model was trained on it.
"""

from __future__ import annotations

import os

import numpy as np

from dlearn.data import image_codec, image_folder, pipeline, ts_format
from dlearn.errors import ConfigError

# Labels of inputs without one, and of inputs that could not be read (a placeholder example).
UNLABELLED = ts_format.UNLABELLED
UNREADABLE = -2


class ImageInputs:
  """Every file of an image folder or archive as a data source (`len`, `[i]`), flat (no labels)
  or laid out as <class>/<image> (labels by class name), converted as the model's examples were:
  RGB or grey and the trained size (resized as `dlearn.prepare` resizes, or, for a model trained
  on encoded images, through evaluation's centre crop). A file that cannot be read becomes a placeholder labelled
  UNREADABLE, its reason kept in `errors`, so that every process keeps the same steps."""

  def __init__(self, path: str, info, resize: bool):
    self.path, self.info, self.resize = path, info, resize
    self.longest = 0  # sequences' steps (none here)
    self.files = image_folder.ImageFiles(path)
    if not len(self.files):
      raise image_folder.ImageFolderError(f'{path}: no files found.')
    depths = {name.count('/') for name in self.files.names}
    # One split folder laid out as `dlearn.prepare` reads it, <split>/<class>/<image>: the split
    # folder names nothing.
    self.folder_depth = (
      1 if depths == {2} and len({n.split('/')[0] for n in self.files.names}) == 1 else 0
    )
    depths = {depth - self.folder_depth for depth in depths}
    if depths == {0}:
      self.labels = [UNLABELLED] * len(self.files)
    elif depths == {1}:
      folders = [name.split('/')[self.folder_depth] for name in self.files.names]
      unknown = sorted(set(folders) - set(info.class_names))
      if unknown:
        raise image_folder.ImageFolderError(
          f'{path}: class folders {unknown} are not classes of the model '
          f'({", ".join(info.class_names)}); put unlabelled images directly in the folder.'
        )
      self.labels = [info.class_names.index(folder) for folder in folders]
    else:
      raise image_folder.ImageFolderError(
        f'{path}: lay the images out flat (no labels) or as <class>/<image>, not '
        f'{next(n for n in self.files.names if n.count("/") > 1)!r}.'
      )
    self.errors: dict[int, str] = {}

  def __len__(self) -> int:
    return len(self.files)

  def name(self, i: int) -> str:
    return self.files.names[i]

  def __getitem__(self, i):
    height, width, channels = self.info.example_shape
    name = self.files.names[i]
    try:
      content = self.files.read(i)
      # what dlearn.prepare refuses is refused here too, rather than predicted from: a truncated
      # JPEG (OpenCV passes it in silence), 16 bits a channel (Pillow clips them to white), CMYK
      # (converted naively), a side under 4 px
      image_codec.checked(content, channels)
      if self.info.transform is not None:  # a model trained on encoded images: evaluation's crop
        image = self.info.transform.evaluate(content)
      else:
        image = image_folder.decode(
          self.path, name, content, channels=channels, size=(height, width), resize=self.resize
        )
      return {'image': image, 'label': self.labels[i]}
    except image_folder.ImageFolderError as e:  # its message names the file
      self.errors[i] = str(e)
    except (OSError, ValueError) as e:
      self.errors[i] = f'{self.path}: {name}: {e}'
    return {'image': np.zeros(self.info.example_shape, np.uint8), 'label': UNREADABLE}


class SequenceInputs:
  """The cases of a `.ts` file as a data source, labelled by class name or unlabelled
  (`@classLabel false`), each parsed when read (a file larger than memory streams). Every case is
  parsed once first, one at a time, so that a bad line stops every process before any
  prediction; `longest`: its longest case's steps."""

  def __init__(self, path: str, info):
    self.cases = ts_format.TsCases(path)
    channels = info.example_shape[-1]
    if self.cases.num_channels != channels:
      raise ts_format.TsFormatError(
        f'{path}:{self.cases.lines[0]}: {self.cases.num_channels} channel(s), but the model was '
        f'trained on {channels}.'
      )
    unknown = sorted(set(self.cases.class_names) - set(info.class_names))
    if unknown:
      raise ts_format.TsFormatError(
        f'{path}: @classLabel names {unknown}, which are not classes of the model '
        f'({" ".join(info.class_names)}).'
      )
    # cases longer than the model was trained on are batched at the longest (`longest`)
    self.longest = max((len(self.cases[i][0]) for i in range(len(self.cases))), default=0)
    self.label_ids = [info.class_names.index(name) for name in self.cases.class_names]
    self.errors: dict[int, str] = {}

  def __len__(self) -> int:
    return len(self.cases)

  def name(self, i: int) -> str:
    return str(i)

  def __getitem__(self, i):
    sequence, label = self.cases[i]
    return {'sequence': sequence, 'label': self.label_ids[label] if label >= 0 else UNLABELLED}


class SplitInputs:
  """A prepared split's examples, named by their index."""

  def __init__(self, source):
    self.source, self.errors = source, {}
    self.longest = pipeline.longest_sequence(source)

  def __len__(self) -> int:
    return len(self.source)

  def name(self, i: int) -> str:
    return str(i)

  def __getitem__(self, i):
    return self.source[i]


def open_inputs(path: str | None, split_source, info, resize: bool = True):
  """The data source of `path` (a .ts file, an image folder or archive), or of a prepared split."""
  if path is None:
    return SplitInputs(split_source)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'--input={path}: no such file or folder; give an image folder, a .tar(.gz) archive of '
      'images or a .ts file.'
    )
  if path.endswith('.ts'):
    if info.kind != 'sequence':
      raise ConfigError(f'--input={path}: a .ts file, but the model classifies images.')
    return SequenceInputs(path, info)
  if info.kind != 'image':
    raise ConfigError(f'--input={path}: images, but the model classifies .ts sequences.')
  return ImageInputs(path, info, resize)
