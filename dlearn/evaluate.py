"""Evaluate a trained work directory on any prepared dataset split.

  python -m dlearn.evaluate --workdir=workdirs/seed_dcnn [--split=validation] [--dataset=NAME]
      [--data_dir=DIR]

Prints accuracy, loss and the number of examples, and writes the confusion matrix (rows: true
class, columns: predicted) as CSV into the work directory.
"""

import csv
import json
import os
import re
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from dlearn import metrics, parallel, train
from dlearn.data import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Work directory of a training run.', required=True)
flags.DEFINE_string('dataset', None, 'tfds dataset name (default: the one trained on).')
flags.DEFINE_string(
  'split', None, "Split, e.g. validation, test, train[:10%] (default: the run's evaluation split)."
)
flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: the one trained with).')
flags.DEFINE_bool('png', True, 'Also write the confusion matrix as a PNG.')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: --workdir must be the work directory of a training run.'
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _restore(workdir, dataset, split, data_dir, mesh):
  config = load_config(workdir)
  if 'partition' in config and parallel.parts(mesh) == 1:
    # A run that split examples over devices has the same parameters as an unsplit one.
    config.partition.parts = 1
  dataset = dataset or config.data.name
  split = split or config.data.eval_split
  source = pipeline.load_split(dataset, split, data_dir or config.data.data_dir)
  info = pipeline.dataset_info(source, dataset, config.data.max_length)
  graphdef, state = train.restore_for_evaluation(workdir, config, info, mesh)
  return config, source, info, graphdef, state, dataset, split


def evaluate_workdir(
  workdir: str,
  dataset: str | None = None,
  split: str | None = None,
  data_dir: str | None = None,
  png: bool = False,
):
  """(metrics, confusion matrix, class names, CSV path) of the newest checkpoint in `workdir`
  on every device; with `png`, the confusion matrix also as a picture beside the CSV."""
  config = load_config(workdir)
  mesh = parallel.make_mesh(parts=config.partition.parts if 'partition' in config else 1)
  parallel.per_device_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  config, source, info, graphdef, state, dataset, split = _restore(
    workdir, dataset, split, data_dir, mesh
  )
  step = parallel.map_over_devices(
    lambda s, b: train.eval_step(s, b, graphdef=graphdef, config=config, info=info),
    mesh,
    config.mapping,
  )
  summary, confusion = train.evaluate(step, state, source, info, config, mesh)
  path = os.path.join(workdir, f'confusion_{dataset}_{re.sub(r"[^A-Za-z0-9_.-]+", "_", split)}.csv')
  if jax.process_index() == 0:
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['true \\ predicted', *info.class_names])
      for name, row in zip(info.class_names, confusion):
        writer.writerow([name, *row.tolist()])
    if png:
      from dlearn import plots  # matplotlib only when asked for

      plots.plot_confusion(
        confusion,
        info.class_names,
        path.removesuffix('.csv') + '.png',
        title=f'{dataset} {split}: accuracy {summary["accuracy"]:.4f}',
      )
  return summary, confusion, info.class_names, path


def predict_workdir(
  workdir: str, dataset: str | None = None, split: str | None = None, data_dir: str | None = None
) -> dict:
  """Per-example results on one device, for looking at a model (notebooks): 'logits',
  'labels', the model 'inputs' as stored ('image' uint8 or 'sequence'), 'lengths' for sequences,
  and the dataset 'info'."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  config, source, info, graphdef, state, _, _ = _restore(workdir, dataset, split, data_dir, mesh)

  @jax.jit
  def forward(state, batch):
    model = nnx.merge(graphdef, state.params, state.model_state)
    return model(*train.model_inputs(batch, config, info, None, train=False), train=False)

  outputs = {'logits': [], 'labels': [], 'inputs': [], 'lengths': []}
  key = 'image' if info.kind == 'image' else 'sequence'
  for batch in pipeline.eval_iterator(
    source, info, global_batch_size=config.eval_batch_size, local_device_count=1
  ):
    batch = {k: v[0] for k, v in batch.items()}  # the one device's share
    valid = batch['mask'] > 0
    outputs['logits'].append(np.asarray(forward(state, batch))[valid])
    outputs['labels'].append(batch['label'][valid])
    outputs['inputs'].append(batch[key][valid])
    if 'length' in batch:
      outputs['lengths'].append(batch['length'][valid])
  result = {k: np.concatenate(v) for k, v in outputs.items() if v}
  return {**result, 'info': info}


def main(argv):
  del argv
  metrics.quiet_library_logs()
  try:
    summary, _, _, path = evaluate_workdir(
      FLAGS.workdir, FLAGS.dataset, FLAGS.split, FLAGS.data_dir, FLAGS.png
    )
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  print(
    f'accuracy {summary["accuracy"]:.4f}  loss {summary["loss"]:.4f}  examples {summary["count"]}'
  )
  print(f'confusion matrix: {path}' + (' and .png' if FLAGS.png else ''))


if __name__ == '__main__':
  app.run(main)
