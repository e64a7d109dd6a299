"""Prediction: a work directory's newest checkpoint on new inputs (an image folder or archive, a
`.ts` file, a prepared split), on every device of every process with evaluation's sharding, and
the same model as one self-contained `jax.export` artifact. The library behind `dlearn.predict`
and `dlearn.export`.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlearn import evaluation, metrics, parallel, steps
from dlearn.data import image_folder, pipeline, ts_format

# Labels of inputs without one, and of inputs that could not be read (a placeholder example).
UNLABELLED = ts_format.UNLABELLED
UNREADABLE = -2


class ImageInputs:
  """Every file of an image folder or archive as a data source (`len`, `[i]`), flat (no labels)
  or laid out as <class>/<image> (labels by class name), converted as `dlearn.prepare` converts:
  RGB or grey and the trained size. A file that cannot be read becomes a placeholder labelled
  UNREADABLE, its reason kept in `errors`, so that every process keeps the same steps."""

  def __init__(self, path: str, info, resize: bool):
    self.path, self.info, self.resize = path, info, resize
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
    try:
      image = image_folder.decode(
        self.path,
        self.files.names[i],
        self.files.content(i),
        channels=channels,
        size=(height, width),
        resize=self.resize,
      )
      return {'image': image, 'label': self.labels[i]}
    except image_folder.ImageFolderError as e:
      self.errors[i] = str(e)
      return {'image': np.zeros(self.info.example_shape, np.uint8), 'label': UNREADABLE}


class SequenceInputs:
  """The cases of a `.ts` file as a data source, labelled by class name or unlabelled
  (`@classLabel false`), each parsed when read (a file larger than memory streams). Every case is
  checked against the trained channels and length first, one at a time, so that a bad line stops
  every process before any prediction."""

  def __init__(self, path: str, info):
    self.cases = ts_format.TsCases(path)
    max_length, channels = info.example_shape
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
    for i, line in enumerate(self.cases.lines):
      length = len(self.cases[i][0])
      if length > max_length:
        raise ts_format.TsFormatError(
          f'{path}:{line}: {length} steps, more than the {max_length} the model was trained '
          'with (config.data.max_length).'
        )
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
      raise ValueError(f'--input={path}: a .ts file, but the model classifies images.')
    return SequenceInputs(path, info)
  if info.kind != 'image':
    raise ValueError(f'--input={path}: images, but the model classifies .ts sequences.')
  return ImageInputs(path, info, resize)


def _predict_step(state, batch, *, graphdef, config, info, axis):
  """Probabilities of the body's batch, gathered with their positions and labels from every
  device, so that every process holds the whole global batch."""
  logits = steps.eval_logits(
    state.params, state.model_state, batch, graphdef=graphdef, config=config, info=info
  )
  out = {
    'probabilities': jax.nn.softmax(logits, -1),
    'index': batch['index'],
    'label': batch['label'],
    'mask': batch['mask'],
  }
  return axis.gather(out)


class Progress:
  """A console line on process 0, redrawn at most once a second (a new line each time where
  stderr is not a terminal): inputs done, inputs/s and ETA. The rate counts from the end of the
  first batch, which includes compilation; with a single batch, from the start."""

  def __init__(self, total: int):
    self.total, self.done, self.active = total, 0, jax.process_index() == 0
    self.begin, self.start, self.last, self.first = time.perf_counter(), None, None, 0
    self.redraw = '\r' if sys.stderr.isatty() else ''

  def advance(self, count: int):
    self.done += count
    now = time.perf_counter()
    if self.start is None:
      self.start, self.first = now, self.done
    if self.active and (now - (self.last or 0) >= 1 or self.done == self.total):
      self.last = now
      rate = self.rate()
      eta = metrics.eta(self.total - self.done, rate)
      print(
        f'{self.redraw}predict: {self.done}/{self.total} inputs  {rate:.1f} inputs/s  ETA {eta}',
        end='\n' if self.done == self.total or not self.redraw else '',
        file=sys.stderr,
        flush=True,
      )

  def rate(self) -> float:
    now = time.perf_counter()
    if self.done > self.first:
      return (self.done - self.first) / max(now - self.start, 1e-9)
    return self.done / max(now - self.begin, 1e-9)


def predictions(inputs, info, state, graphdef, config, mesh, progress=None):
  """(position, probabilities [classes], label) of every input, in input order, on every
  process; each input is computed once, on one device of one process (evaluation's sharding:
  `evaluation.device_batches`). `progress` (a `Progress`) counts the inputs done."""
  mapped = parallel.map_over_devices(
    functools.partial(_predict_step, graphdef=graphdef, config=config, info=info),
    mesh,
    config.mapping,
  )
  progress = progress or Progress(len(inputs))

  def rows(out):
    out = jax.device_get(out)
    valid = out['mask'] > 0
    order = np.argsort(out['index'][valid], kind='stable')
    probabilities, indices = out['probabilities'][valid][order], out['index'][valid][order]
    labels = out['label'][valid][order]
    progress.advance(len(indices))
    yield from zip(indices.tolist(), probabilities, labels.tolist())

  pending = None  # the previous step's output, read while the next one runs
  for batch in evaluation.device_batches(inputs, info, config, mesh):
    out = mapped(state, batch)
    if pending is not None:
      yield from rows(pending)
    pending = out
  if pending is not None:
    yield from rows(pending)


def predict(
  workdir: str,
  input_path: str | None,
  output: str,
  *,
  top_k: int = 3,
  dataset: str | None = None,
  split: str | None = None,
  data_dir: str | None = None,
  resize: bool = True,
  skip_bad_inputs: bool = False,
  overrides: dict | None = None,
) -> dict:
  """Writes `output` (CSV, process 0): per input in input order, its name (a path inside
  `input_path`, or an index), the top-k classes with probabilities and, when labelled, its label;
  returns {'count', 'skipped': [(name, reason)], 'summary' and 'confusion' (labelled inputs),
  'confusion_path', 'rate' (inputs/s)}. `input_path` None: the prepared split `split` of
  `dataset`. Nothing is written when an input cannot be read, unless `skip_bad_inputs`."""
  if os.path.isdir(output):
    raise IsADirectoryError(f'--output={output} is a folder; name a .csv file.')
  config, source, info, graphdef, state, _, _, mesh = evaluation.restore_workdir(
    workdir, dataset, split, data_dir, overrides
  )
  inputs = open_inputs(input_path, source if input_path is None else None, info, resize)
  top_k = min(top_k, info.num_classes)
  writing = jax.process_index() == 0
  folder = os.path.dirname(os.path.abspath(output))
  os.makedirs(folder, exist_ok=True)
  # Written beside `output` and renamed when complete: a failed run leaves no partial file.
  partial = (
    tempfile.NamedTemporaryFile(
      'w', dir=folder, prefix='.predict_', suffix='.csv', delete=False, newline=''
    )
    if writing
    else open(os.devnull, 'w')
  )
  progress = Progress(len(inputs))
  skipped, count, labelled = [], 0, False
  confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
  sums = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  try:
    writer = csv.writer(partial)
    header = ['input']
    for k in range(1, top_k + 1):
      header += [f'class_{k}', f'probability_{k}']
    for index, probabilities, label in predictions(
      inputs, info, state, graphdef, config, mesh, progress
    ):
      if label == UNREADABLE:
        reason = inputs.errors.get(
          index,
          f'{input_path}: {inputs.name(index)}: cannot be read (by another process; its log '
          'says why).',
        )
        if not skip_bad_inputs:
          raise image_folder.ImageFolderError(
            f'{reason}\nNothing was written; remove the file or pass --skip_bad_inputs.'
          )
        skipped.append((inputs.name(index), reason))
        continue
      if not count:  # every input of a source is labelled, or none is
        labelled = label != UNLABELLED
        writer.writerow(header + (['label'] if labelled else []))
      count += 1
      top = np.argsort(-probabilities, kind='stable')[:top_k]
      row = [inputs.name(index)]
      for c in top:
        row += [info.class_names[c], f'{probabilities[c]:.6f}']
      if labelled:
        row.append(info.class_names[label])
        confusion[label, int(np.argmax(probabilities))] += 1
        sums['loss_sum'] -= float(np.log(max(probabilities[label], 1e-30)))
        sums['correct'] += float(np.argmax(probabilities) == label)
        sums['count'] += 1
      writer.writerow(row)
    partial.close()
    if writing:
      os.replace(partial.name, output)
  finally:
    partial.close()
    if writing and os.path.exists(partial.name):
      os.remove(partial.name)
  result = {'count': count, 'skipped': skipped, 'rate': progress.rate()}
  if labelled:
    result['summary'] = metrics.summarize(sums)
    result['confusion'] = confusion
    result['confusion_path'] = os.path.splitext(output)[0] + '_confusion.csv'
    if writing:
      evaluation.write_confusion(result['confusion_path'], confusion, info.class_names)
  return result


def exported_function(workdir: str, data_dir: str | None = None, overrides: dict | None = None):
  """(f, argument specs with a symbolic batch size, class names): f is the whole inference of the
  newest checkpoint in `workdir`, preprocessing included, parameters as constants. Images: uint8
  [batch, height, width, channels] → probabilities [batch, classes]. Sequences: raw float32
  [batch, time, channels] (time: the trained max_length; values past a case's length are
  ignored) and int32 lengths [batch] → probabilities."""
  config, _, info, graphdef, state, *_ = evaluation.restore_workdir(
    workdir,
    data_dir=data_dir,
    overrides={**(overrides or {}), 'partition.parts': 1},
    devices=jax.local_devices(),
  )
  # Each array to the host from the devices that hold its shards (an 'fsdp' state is never whole
  # on one device); the artifact holds them as constants.
  params, model_state = jax.device_get((state.params, state.model_state))
  (batch,) = jax.export.symbolic_shape('batch')

  def probabilities(*arrays):
    size = arrays[0].shape[0]
    batch = {
      'label': jnp.zeros(size, jnp.int32),
      'mask': jnp.ones(size, jnp.float32),
      'index': jnp.zeros(size, jnp.int32),
    }
    if info.kind == 'image':
      batch['image'] = arrays[0]
    else:
      sequences, lengths = arrays
      # As `pipeline.example`: standardised, then zeros past each case's end.
      valid = jnp.arange(sequences.shape[1])[None, :, None] < lengths[:, None, None]
      batch['sequence'] = jnp.where(valid, pipeline.standardize(sequences, info, valid), 0.0)
      batch['length'] = lengths
    # The parameters as values of this trace (constants of the artifact): nnx's scan over
    # time (the RNNs) refuses arrays from outside the trace it runs in.
    traced = jax.tree.map(jnp.asarray, (params, model_state))
    logits = steps.eval_logits(*traced, batch, graphdef=graphdef, config=config, info=info)
    return jax.nn.softmax(logits, -1)

  if info.kind == 'image':
    specs = (jax.ShapeDtypeStruct((batch, *info.example_shape), jnp.uint8),)
  else:
    specs = (
      jax.ShapeDtypeStruct((batch, *info.example_shape), jnp.float32),
      jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
  return probabilities, specs, info.class_names


def export(
  workdir: str,
  output: str,
  *,
  data_dir: str | None = None,
  overrides: dict | None = None,
  platforms=('cpu', 'cuda'),
) -> str:
  """Writes `output/model.bin` (the serialized `jax.export` of `exported_function`, lowered for
  `platforms`) and `output/classes.json` (class names in label order); returns `output`. An
  existing `output` is refused, before any work."""
  if os.path.exists(output):
    raise FileExistsError(f'--output={output} already exists: name a new folder.')
  function, specs, class_names = exported_function(workdir, data_dir, overrides)
  exported = jax.export.export(jax.jit(function), platforms=platforms)(*specs)
  serialized = exported.serialize()
  os.makedirs(output)
  with open(os.path.join(output, 'model.bin'), 'wb') as f:
    f.write(serialized)
  with open(os.path.join(output, 'classes.json'), 'w') as f:
    json.dump(list(class_names), f)
  return output
