"""Prediction: a work directory's newest checkpoint on new inputs (an image folder or archive, a
`.ts` file, a prepared split: `dlearn.inputs`), on every device of every process with
evaluation's sharding, in input order, written as CSV. The library behind `dlearn.predict`.
"""

from __future__ import annotations

import csv
import functools
import os
import tempfile

import jax
import numpy as np

from dlearn import evaluation, metrics, parallel, steps
from dlearn.data import image_folder, pipeline
from dlearn.inputs import UNLABELLED, UNREADABLE, SplitInputs, open_inputs


def _predict_step(state, batch, *, graphdef, config, info, axis):
  """`steps.each_example` of the body's batch."""
  logits = steps.eval_logits(
    state.params, state.model_state, batch, graphdef=graphdef, config=config, info=info
  )
  return steps.each_example(logits, batch, axis)


def predictions(inputs, info, state, graphdef, config, mesh, progress=None):
  """(position, probabilities [classes], label) of every input, in input order, on every
  process; each input is computed once, on one device of one process (evaluation's sharding:
  `evaluation.device_batches`). `progress` (a `metrics.Progress`) counts the inputs done."""
  mapped = parallel.map_over_devices(
    functools.partial(_predict_step, graphdef=graphdef, config=config, info=info),
    mesh,
    config.mapping,
  )
  progress = progress or metrics.Progress(len(inputs))

  def rows(out):
    out = evaluation.held_out([out])
    progress.advance(len(out['index']))
    yield from zip(out['index'].tolist(), out['probabilities'], out['label'].tolist())

  pending = None  # the previous step's output, read while the next one runs
  # New inputs are read in this process (threads): they keep their errors and open files here.
  workers = None if isinstance(inputs, SplitInputs) else 0
  for batch in evaluation.device_batches(inputs, info, config, mesh, workers):
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
  restored = evaluation.restore_workdir(workdir, dataset, split, data_dir, overrides)
  inputs = open_inputs(
    input_path, restored.source if input_path is None else None, restored.info, resize
  )
  # batched with room for the inputs' longest sequence (the model keeps its trained shape)
  info = pipeline.with_room_for(restored.info, inputs.longest, restored.config.partition.parts)
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
  progress = metrics.Progress(len(inputs))
  skipped, count, labelled = [], 0, False
  confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
  sums = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  try:
    writer = csv.writer(partial)
    header = ['input']
    for k in range(1, top_k + 1):
      header += [f'class_{k}', f'probability_{k}']
    for index, probabilities, label in predictions(
      inputs, info, restored.state, restored.graphdef, restored.config, restored.mesh, progress
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
