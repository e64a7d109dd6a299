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
from absl import app, flags

from dlearn import metrics, parallel, train
from dlearn.data import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Work directory of a training run.', required=True)
flags.DEFINE_string('dataset', None, 'tfds dataset name (default: the one trained on).')
flags.DEFINE_string('split', None, 'Split, e.g. validation, test, train[:10%] (default: the '
                    "run's evaluation split).")
flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: the one trained with).')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: --workdir must be the work directory of a '
                            'training run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate_workdir(workdir: str, dataset: str | None = None, split: str | None = None,
                     data_dir: str | None = None):
  """(metrics, confusion matrix, class names, CSV path) of the newest checkpoint in `workdir`."""
  config = load_config(workdir)
  dataset = dataset or config.data.name
  split = split or config.data.eval_split
  data_dir = data_dir or config.data.data_dir
  mesh = parallel.make_mesh()
  parallel.per_device_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  source = pipeline.load_split(dataset, split, data_dir)
  info = pipeline.dataset_info(source, dataset, config.data.max_length)
  graphdef, state = train.restore_for_evaluation(workdir, config, info, mesh)
  step = parallel.map_over_devices(
      lambda s, b: train.eval_step(s, b, graphdef=graphdef, config=config, info=info), mesh,
      config.mapping)
  summary, confusion = train.evaluate(step, state, source, info, config, mesh)
  path = os.path.join(workdir, f'confusion_{dataset}_{re.sub(r"[^A-Za-z0-9_.-]+", "_", split)}.csv')
  if jax.process_index() == 0:
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['true \\ predicted', *info.class_names])
      for name, row in zip(info.class_names, confusion):
        writer.writerow([name, *row.tolist()])
  return summary, confusion, info.class_names, path


def main(argv):
  del argv
  metrics.quiet_library_logs()
  try:
    summary, _, _, path = evaluate_workdir(FLAGS.workdir, FLAGS.dataset, FLAGS.split,
                                           FLAGS.data_dir)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  print(f"accuracy {summary['accuracy']:.4f}  loss {summary['loss']:.4f}  "
        f"examples {summary['count']}")
  print(f'confusion matrix: {path}')


if __name__ == '__main__':
  app.run(main)
