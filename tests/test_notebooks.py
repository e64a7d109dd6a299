"""Every notebook runs top to bottom on small data, and is committed without outputs."""

import glob
import os

import helpers
import nbformat
import pytest
from nbclient import NotebookClient

from dlearn import configs, train
from dlearn.data import dataset_writer

pytestmark = pytest.mark.slow  # subprocesses and end-to-end runs

NOTEBOOKS = os.path.join(os.path.dirname(__file__), '..', 'notebooks')


@pytest.fixture(scope='module')
def small_runs(tmp_path_factory):
  """A prepared image and sequence dataset, and a short training run on each."""
  root = tmp_path_factory.mktemp('notebooks')
  data_dir = helpers.prepared_images(root, name='tiny_images', per_class=20)
  lines = [
    f'{",".join(["1"] * (2 + i % 4))}:{",".join([str(i % 3)] * (2 + i % 4))}:{"abc"[i % 3]}'
    for i in range(60)
  ]
  with open(root / 'toy.ts', 'w') as f:
    f.write('@problemName toy\n@dimensions 2\n@classLabel true a b c\n@data\n' + '\n'.join(lines))
  dataset_writer.write_dataset('tiny_sequences', {'train': str(root / 'toy.ts')}, data_dir)
  workdirs = {}
  for name, model in (('tiny_images', 'seed_dcnn'), ('tiny_sequences', 'rnn')):
    config = configs.finish(configs.base(), 'smoke')
    config.model, config.rnn.hidden_size = model, 8
    config.data.name, config.data.data_dir = name, data_dir
    config.data.train_split, config.data.eval_split = 'train', 'validation'
    config.num_train_steps = 4
    workdirs[name] = str(root / name)
    train.train_and_evaluate(config, workdirs[name])
  return {'data_dir': data_dir, 'workdirs': workdirs, 'root': str(root)}


def _parameters(name, runs):
  return {
    '01_data': dict(
      image_dataset='tiny_images', sequence_dataset='tiny_sequences', data_dir=runs['data_dir']
    ),
    '02_train_multi_device': dict(
      dataset='tiny_images', data_dir=runs['data_dir'], num_steps=20, batch_size=16
    ),
    '03_inspect_model': dict(
      workdir=runs['workdirs']['tiny_images'], sequence_workdir=runs['workdirs']['tiny_sequences']
    ),
    '04_results': dict(workdirs=runs['root']),
  }[name]


@pytest.mark.parametrize(
  'name', ['01_data', '02_train_multi_device', '03_inspect_model', '04_results']
)
def test_notebook_runs_top_to_bottom(name, small_runs):
  notebook = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  cell = next(c for c in notebook.cells if 'parameters' in c.metadata.get('tags', []))
  cell.source += '\n# injected by the test\n' + '\n'.join(
    f'{key} = {value!r}' for key, value in _parameters(name, small_runs).items()
  )
  NotebookClient(
    notebook, timeout=300, kernel_name='python3', resources={'metadata': {'path': NOTEBOOKS}}
  ).execute()
  errors = [o for c in notebook.cells for o in c.get('outputs', []) if o.output_type == 'error']
  assert not errors
  images = [
    o for c in notebook.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})
  ]
  assert images, 'each notebook draws at least one picture'


def test_notebooks_are_committed_without_outputs():
  paths = glob.glob(os.path.join(NOTEBOOKS, '*.ipynb'))
  assert len(paths) == 4
  for path in paths:
    for cell in nbformat.read(path, as_version=4).cells:
      if cell.cell_type == 'code':
        assert not cell.outputs and cell.execution_count is None, path
