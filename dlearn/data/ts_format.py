"""Reader for the sktime/aeon `.ts` text format of the UEA/UCR time-series archives.

A file has `#` comments, `@` header lines (`@problemName`, `@dimensions`, `@equalLength`,
`@classLabel true a b c`, ...), then `@data` and one case per line: channels separated by `:`,
values within a channel by `,`, the class label last. Univariate or multivariate, equal or
variable length.

Missing values (`?` or `NaN`), a documented rule:
  1. missing values at the end of a case, in every channel, are not part of it: the case ends at
     its last step where some channel has a value (this is how some archives pad unequal lengths);
  2. any other missing value is linearly interpolated from the nearest observed values of its
     channel, and repeats the nearest observed value at a channel's ends;
  3. a channel with no observed value at all is zeros.
An infinite value, or one beyond float32's range, is refused (TsFormatError): a model's features
of it would be NaN.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dlearn.errors import UserError

_MISSING = ('?', 'nan', 'NaN', 'NAN')
_KNOWN_HEADERS = {
  'problemname',
  'timestamps',
  'missing',
  'univariate',
  'dimension',
  'dimensions',
  'equallength',
  'serieslength',
  'classlabel',
  'targetlabel',
  'data',
}


# The label of a case in a file without class labels.
UNLABELLED = -1


class TsFormatError(UserError, ValueError):
  """A `.ts` file that does not follow the format; the message names the file and line."""


@dataclasses.dataclass
class TsData:
  class_names: tuple[str, ...]  # empty for a file without labels (`@classLabel false`)
  sequences: list[np.ndarray]  # each [length, channels] float32
  labels: list[int]  # indices into class_names; UNLABELLED without labels
  lines: list[int]  # the line each case came from


def _fill_missing(values: np.ndarray) -> np.ndarray:
  """Rules 2 and 3 above, for one channel [length]."""
  observed = ~np.isnan(values)
  if not observed.any():
    return np.zeros_like(values)
  if observed.all():
    return values
  steps = np.arange(len(values))
  return np.interp(steps, steps[observed], values[observed]).astype(values.dtype)


def _parse_case(
  line: str, path: str, number: int, num_channels: int | None, class_index: dict[str, int]
) -> tuple[np.ndarray, int]:
  fields = line.split(':')
  if not class_index:  # no labels: every field is a channel
    fields.append(None)
  *channels, label = fields
  if num_channels is not None and len(channels) != num_channels:
    raise TsFormatError(
      f'{path}:{number}: {len(channels)} channel(s) before the class label, '
      f'but the header declares @dimensions {num_channels}.'
    )
  label = label.strip() if class_index else None
  if class_index and label not in class_index:
    raise TsFormatError(
      f'{path}:{number}: class label {label!r} is not declared in '
      f'@classLabel ({" ".join(class_index)}).'
    )
  columns = []
  for channel, text in enumerate(channels):
    values = []
    for position, value in enumerate(text.split(',')):
      value = value.strip()
      if value in _MISSING:
        values.append(np.nan)
        continue
      try:
        values.append(float(value))
      except ValueError:
        raise TsFormatError(
          f'{path}:{number}: channel {channel + 1}, value {position + 1} is '
          f'{value!r}, not a number (missing values are written ? or NaN).'
        ) from None
    columns.append(values)
  lengths = {len(values) for values in columns}
  if len(lengths) != 1:
    raise TsFormatError(
      f'{path}:{number}: the channels of this case have different lengths '
      f'{sorted(lengths)}; every channel of a case needs one value per step.'
    )
  with np.errstate(over='ignore'):  # beyond float32's range: refused below, naming the value
    sequence = np.asarray(columns, np.float32).T  # [length, channels]
  if np.isinf(sequence).any():  # inf, or beyond float32's range: no model reads it (NaN out)
    step, channel = np.argwhere(np.isinf(sequence))[0]
    raise TsFormatError(
      f'{path}:{number}: channel {channel + 1}, value {step + 1} is '
      f"{channels[channel].split(',')[step].strip()!r}, not a finite number within float32's "
      'range (about ±3.4e38); write missing values as ? or NaN.'
    )
  observed_steps = np.flatnonzero(~np.isnan(sequence).all(axis=1))
  if not len(observed_steps):
    raise TsFormatError(f'{path}:{number}: this case has no observed value.')
  sequence = sequence[: observed_steps[-1] + 1]  # rule 1
  sequence = (
    np.stack([_fill_missing(c) for c in sequence.T], axis=1)
    if np.isnan(sequence).any()
    else sequence
  )
  return sequence, class_index[label] if class_index else UNLABELLED


class TsCases:
  """A `.ts` file's header and where each case is, found in one pass; each case is parsed when it
  is read (`[i]`: (sequence [length, channels], label)), so that a file larger than memory streams.
  Raises TsFormatError naming the file and line."""

  def __init__(self, path: str):
    self.path = path
    header: dict[str, str] = {}
    class_names = None
    num_channels = None
    self._places = []  # (line number, byte offset, size) of each case
    in_data = False
    offset = 0
    with open(path, 'rb') as f:
      for number, raw in enumerate(f, start=1):
        start, offset = offset, offset + len(raw)
        line = raw.decode('utf-8', errors='replace').strip()
        if number == 1:  # a byte order mark, as editors on Windows write one
          line = line.removeprefix('\ufeff')
        if not line or line.startswith('#'):
          continue
        if in_data:
          self._places.append((number, start, len(raw)))
          continue
        if not line.startswith('@'):
          raise TsFormatError(
            f'{path}:{number}: expected an @ header line or @data before the '
            f'cases, found {line[:40]!r}.'
          )
        key, _, value = line[1:].partition(' ')
        key, value = key.lower(), value.strip()
        if key not in _KNOWN_HEADERS:
          raise TsFormatError(f'{path}:{number}: unknown header @{key}.')
        header[key] = value
        if key == 'timestamps' and value.lower() == 'true':
          raise TsFormatError(
            f'{path}:{number}: @timeStamps true is not supported; write the '
            'values without time stamps.'
          )
        if key in ('dimension', 'dimensions'):
          if not value.isdigit() or int(value) < 1:
            raise TsFormatError(
              f'{path}:{number}: @{key} must be a positive whole number, not {value!r}.'
            )
          num_channels = int(value)
        if key == 'univariate' and value.lower() == 'true':
          num_channels = num_channels or 1
        if key == 'classlabel':
          flag, *names = value.split() or ['']
          if flag.lower() == 'false' and not names:  # new cases to classify
            class_names = ()
          elif flag.lower() != 'true' or not names:
            raise TsFormatError(
              f'{path}:{number}: @classLabel must be `true` followed by the class '
              f'labels, or `false` for cases without labels.'
            )
          else:
            class_names = tuple(names)
        if key == 'data':
          if class_names is None:
            raise TsFormatError(f'{path}:{number}: @data comes before any @classLabel line.')
          in_data = True
    if not in_data:
      raise TsFormatError(f'{path}: no @data line; is this a .ts file?')
    if not self._places:
      raise TsFormatError(f'{path}: no cases after @data (an empty split).')
    self.class_names = class_names
    self._class_index = {name: i for i, name in enumerate(class_names)}
    self.num_channels = num_channels
    if num_channels is None:  # every later case must match the first
      self.num_channels = self[0][0].shape[1]

  def __len__(self) -> int:
    return len(self._places)

  @property
  def lines(self) -> list[int]:
    """The line of each case."""
    return [number for number, _, _ in self._places]

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    number, offset, size = self._places[i]
    with open(self.path, 'rb') as f:
      f.seek(offset)
      line = f.read(size).decode('utf-8', errors='replace').strip()
    return _parse_case(line, self.path, number, self.num_channels, self._class_index)


def read_ts(path: str) -> TsData:
  """Parses and checks a whole `.ts` file; raises TsFormatError naming the file and line."""
  cases = TsCases(path)
  parsed = [cases[i] for i in range(len(cases))]
  return TsData(
    cases.class_names,
    [sequence for sequence, _ in parsed],
    [label for _, label in parsed],
    cases.lines,
  )
