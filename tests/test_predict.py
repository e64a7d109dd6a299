"""`dlearn.predict` and `dlearn.export` on tiny trained runs: every input once and in order on 1
and 8 devices and on 2 processes, labels, bad inputs, and the exported model run with jax and
numpy alone."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import entry_point
import helpers
import numpy as np
import pytest
from PIL import Image

from dlearn import evaluation, exporting, prediction
from dlearn.data import dataset_writer, image_folder, pipeline, ts_format

pytestmark = pytest.mark.slow  # subprocesses and end-to-end runs

# The README's lines that run an exported model without dlearn, as the GPU check extracts them.
_spec = importlib.util.spec_from_file_location(
  'export_on_gpu',
  os.path.join(os.path.dirname(__file__), '..', 'experiments', 'benchmarks', 'export_on_gpu.py'),
)
export_on_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_on_gpu)

NEW_IMAGES = 37  # no global batch of 16 divides it: the last batch is padded


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Trained CNN and RNN work directories (a few steps), a fitted ROCKET one, the data they were
  prepared from, and new inputs: a flat folder of images, the same as a .tar.gz, a labelled
  folder, .ts files."""
  root = tmp_path_factory.mktemp('predict')
  data_dir = helpers.prepared_images(root)
  helpers.prepared_sequences(root)
  common = [
    '--config.eval_batch_size=16',
    '--config.num_train_steps=3',
    '--config.write_plots=False',
  ]
  entry_point.run(
    'main',
    '--config=experiments/configs/seed_dcnn_cifar10.py',
    f'--workdir={root / "cnn"}',
    '--config.data.name=toy_images',
    f'--config.data.data_dir={data_dir}',
    '--config.batch_size=16',
    *common,
    mock=False,
  )
  entry_point.run(
    'main',
    f'--workdir={root / "rnn"}',
    *helpers.tiny_lstm_fcn_flags(data_dir),
    # Each case by its own steps' statistics: the export must compute them past a padding.
    '--config.data.standardize=each_case',
    '--config.batch_size=8',
    '--config.warmup_steps=0',
    *common,
    mock=False,
  )
  entry_point.run(  # fitted when it starts; its cases (3-6 steps) zero-padded to its kernels
    'main',
    '--config=experiments/configs/rocket_uea.py:toy_sequences,smoke',
    f'--workdir={root / "rocket"}',
    f'--config.data.data_dir={data_dir}',
    mock=False,
  )
  flat = root / 'new'
  flat.mkdir()
  rng = np.random.default_rng(1)
  for i in range(NEW_IMAGES):
    size = (10, 12) if i == 5 else (8, 8)  # one of another size: resized as at preparation
    Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(flat / f'{i:03d}.png')
  with tarfile.open(root / 'new.tar.gz', 'w:gz') as archive:
    for name in sorted(os.listdir(flat)):
      archive.add(flat / name, arcname=name)
  with open(root / 'toy_sequences.ts') as f:
    lines = f.read().splitlines()
  data = lines.index('@data')
  unlabelled = [line.replace('@classLabel true a b c', '@classLabel false') for line in lines]
  unlabelled = unlabelled[: data + 1] + [line.rsplit(':', 1)[0] for line in lines[data + 1 :]]
  (root / 'unlabelled.ts').write_text('\n'.join(unlabelled) + '\n')
  return root


def _predict(*args, devices=8, check=True):
  return entry_point.run('predict', *args, devices=devices, check=check, mock=False)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _probabilities(rows, class_names):
  """[inputs, classes] from a predictions CSV whose top-k covers every class."""
  k = len(class_names)
  return np.array(
    [
      [
        float(row[f'probability_{j}'])
        for c in class_names
        for j in range(1, k + 1)
        if row[f'class_{j}'] == c
      ]
      for row in rows
    ]
  )


def test_8_devices_and_2_processes_predict_every_input_once_in_order_as_1_device(runs, tmp_path):
  outputs = {}
  for devices, source in ((1, 'new'), (8, 'new'), (8, 'new.tar.gz')):
    output = tmp_path / f'{devices}_{source}.csv'
    result = _predict(
      f'--workdir={runs / "cnn"}', f'--input={runs / source}', f'--output={output}', devices=devices
    )
    assert 'inputs/s' in result.stderr and 'ETA' in result.stderr
    outputs[devices, source] = _rows(output)
  # Two processes of 4 devices (jax.distributed on loopback), as two hosts would run it.
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'dlearn.launch',
      '--command=predict',
      '--processes=2',
      '--devices_per_process=4',
      '--',
      f'--workdir={runs / "cnn"}',
      f'--input={runs / "new"}',
      f'--output={tmp_path / "two.csv"}',
    ],
    env=entry_point.environment(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  outputs['two processes'] = _rows(tmp_path / 'two.csv')
  names = [f'{i:03d}.png' for i in range(NEW_IMAGES)]
  for rows in outputs.values():
    assert [row['input'] for row in rows] == names  # each once, in input order
    assert 'label' not in rows[0]  # a flat folder has no labels
  one, eight = (_probabilities(outputs[d, 'new'], 'abc') for d in (1, 8))
  np.testing.assert_allclose(eight, one, atol=2e-6)
  np.testing.assert_allclose(_probabilities(outputs['two processes'], 'abc'), eight, atol=2e-6)
  np.testing.assert_allclose(_probabilities(outputs[8, 'new.tar.gz'], 'abc'), eight, atol=0)
  np.testing.assert_allclose(eight.sum(1), 1, atol=1e-5)


def test_labelled_inputs_print_accuracy_as_evaluate_does(runs, tmp_path):
  output = tmp_path / 'validation.csv'
  predicted = _predict(f'--workdir={runs / "cnn"}', '--split=validation', f'--output={output}')
  evaluated = entry_point.run(
    'evaluate', f'--workdir={runs / "cnn"}', '--split=validation', '--nopng', mock=False
  )
  accuracy_line = next(line for line in evaluated.stdout.splitlines() if line.startswith('acc'))
  assert accuracy_line in predicted.stdout.splitlines()
  with open(runs / 'cnn' / 'confusion_toy_images_validation.csv') as f:
    expected = f.read()
  with open(tmp_path / 'validation_confusion.csv') as f:
    assert f.read() == expected
  rows = _rows(output)
  assert [row['input'] for row in rows] == [str(i) for i in range(len(rows))]
  # A <class>/<image> folder is labelled by its class folders; here inside one split folder, as
  # `dlearn.prepare` reads it.
  labelled = _predict(
    f'--workdir={runs / "cnn"}',
    f'--input={runs / "images"}',
    f'--output={tmp_path / "folder.csv"}',
    '--top_k=1',
  )
  rows = _rows(tmp_path / 'folder.csv')
  assert len(rows) == 120 and set(rows[0]) == {'input', 'class_1', 'probability_1', 'label'}
  assert rows[0]['input'] == 'train/a/000.jpg' and rows[0]['label'] == 'a'
  assert 'accuracy ' in labelled.stdout and 'examples 120' in labelled.stdout


def test_ts_files_with_and_without_labels(runs, tmp_path):
  labelled, unlabelled = tmp_path / 'labelled.csv', tmp_path / 'unlabelled.csv'
  result = _predict(
    f'--workdir={runs / "rnn"}', f'--input={runs / "toy_sequences.ts"}', f'--output={labelled}'
  )
  assert 'examples 15' in result.stdout
  result = _predict(
    f'--workdir={runs / "rnn"}', f'--input={runs / "unlabelled.ts"}', f'--output={unlabelled}'
  )
  assert 'accuracy' not in result.stdout
  with_labels, without = _rows(labelled), _rows(unlabelled)
  assert [row['label'] for row in with_labels] == ['a'] * 6 + ['b'] * 5 + ['c'] * 4
  assert [{k: v for k, v in row.items() if k != 'label'} for row in with_labels] == without
  with pytest.raises(ts_format.TsFormatError, match='classLabel false: a dataset to train'):
    dataset_writer.write_dataset('x', {'train': str(runs / 'unlabelled.ts')}, str(tmp_path))


def test_bad_inputs_stop_before_writing_or_are_skipped_and_listed(runs, tmp_path):
  folder = tmp_path / 'mixed'
  folder.mkdir()
  for name in ('a.png', 'c.png'):
    (folder / name).write_bytes(helpers.image_bytes(10, '.png', size=(8, 8)))
  (folder / 'b.jpg').write_bytes(b'not an image')
  (folder / 'd.png').write_bytes(helpers.image_bytes(10, '.png', size=(9, 8)))
  # 16 bits a channel: dlearn.prepare refuses it, and so does predict (it was clipped to white)
  Image.fromarray(np.full((8, 8), 40_000, np.uint16)).save(folder / 'e.png')
  output = tmp_path / 'out.csv'
  cnn = f'--workdir={runs / "cnn"}'
  result = _predict(cnn, f'--input={folder}', f'--output={output}', check=False)
  assert result.returncode == 1 and 'error:' in result.stderr and 'b.jpg' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not output.exists() and os.listdir(tmp_path) == ['mixed']  # nothing partial either
  result = _predict(
    cnn, f'--input={folder}', f'--output={output}', '--skip_bad_inputs', '--noresize'
  )
  assert [row['input'] for row in _rows(output)] == ['a.png', 'c.png']
  skipped = result.stderr[result.stderr.index('skipped 3') :]
  assert 'b.jpg: cannot decode' in skipped and 'd.png is 9x8, not 8x8: refused' in skipped
  assert 'e.png: 16-bit PNG: dlearn reads 8 bits per channel' in skipped

  # Library errors are the `error:` lines' messages.
  bad_ts = helpers.ts_file(tmp_path / 'bad.ts', ['1,2:3,4:a', '1,2:3,4:5,6:b'])
  with pytest.raises(ts_format.TsFormatError, match=r'bad\.ts:11: 3 channel'):
    prediction.predict(str(runs / 'rnn'), bad_ts, str(output))
  wrong = helpers.ts_file(
    tmp_path / 'three.ts',
    ['1,2:3,4:5,6:a'],
    header=['@dimensions 3', '@classLabel true a', '@data'],
  )
  with pytest.raises(
    ts_format.TsFormatError, match=r'3 channel\(s\), but the model was trained on 2'
  ):
    prediction.predict(str(runs / 'rnn'), wrong, str(output))
  empty = tmp_path / 'empty_workdir'
  empty.mkdir()
  (empty / 'config.json').write_text((runs / 'cnn' / 'config.json').read_text())
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    prediction.predict(str(empty), str(folder), str(output))
  with pytest.raises(image_folder.ImageFolderError, match=r'class folders \[.x.\]'):
    (tmp_path / 'labelled' / 'x').mkdir(parents=True)
    (tmp_path / 'labelled' / 'x' / 'a.png').write_bytes((folder / 'a.png').read_bytes())
    prediction.predict(str(runs / 'cnn'), str(tmp_path / 'labelled'), str(output))
  with pytest.raises(FileExistsError, match='already exists'):
    exporting.export(str(runs / 'cnn'), str(tmp_path))


@pytest.mark.parametrize('model', ['rnn', 'rocket'])
def test_cases_longer_than_the_training_files_are_predicted_and_evaluated(runs, tmp_path, model):
  """A test file's case may be longer than every training case (UEA's JapaneseVowels: 7-26 steps
  in training, up to 29 in test): predict batches at the longest case, and a test split
  (prepared later, or with the training file: its length shapes no model) is evaluated, the
  model keeping the length it was trained at (config.json); the other cases' probabilities are
  those they have batched at the trained length."""
  run = runs / model
  assert json.loads((run / 'config.json').read_text())['data']['max_length'] == 6
  lines = (runs / 'toy_sequences.ts').read_text().splitlines()
  cases = lines[lines.index('@data') + 1 :]
  rng = np.random.default_rng(2)
  long_case = ':'.join(','.join(map(str, rng.normal(1, 0.3, 9).round(3))) for _ in range(2))
  longer = helpers.ts_file(tmp_path / 'longer.ts', [*cases, f'{long_case}:b'])
  short = prediction.predict(str(run), str(runs / 'toy_sequences.ts'), str(tmp_path / 's.csv'))
  long = prediction.predict(str(run), longer, str(tmp_path / 'l.csv'))
  assert (short['count'], long['count']) == (15, 16)
  rows = _rows(tmp_path / 'l.csv')
  np.testing.assert_allclose(
    _probabilities(rows[:15], 'abc'), _probabilities(_rows(tmp_path / 's.csv'), 'abc'), atol=1e-5
  )
  data_dir = str(tmp_path / 'tfds')
  train = str(runs / 'toy_sequences.ts')
  dataset_writer.write_dataset('toy_sequences', {'train': train, 'test': longer}, data_dir)
  metadata = pipeline.load_split('toy_sequences', 'test', data_dir).dataset_info.metadata
  assert metadata['max_length'] == 6  # the training file's: models are built for it
  assert metadata['split_max_length']['test'] == 9
  summary, confusion, *_ = evaluation.evaluate_workdir(str(run), split='test', data_dir=data_dir)
  assert confusion.sum() == 16
  assert summary['accuracy'] == pytest.approx(long['summary']['accuracy'])


@pytest.mark.parametrize('model', ['cnn', 'rnn', 'rocket'])
def test_the_readme_runs_the_export_without_dlearn_as_predict_does(runs, tmp_path, model):
  exported = tmp_path / 'exported'
  entry_point.run('export', f'--workdir={runs / model}', f'--output={exported}', mock=False)
  assert sorted(os.listdir(exported)) == ['classes.json', 'model.bin']
  if model == 'cnn':
    source = runs / 'new'
    images = [
      image_folder.decode('', name, str(source / name), channels=3, size=(8, 8))
      for name in sorted(os.listdir(source))
    ]
    np.savez(tmp_path / 'inputs.npz', images=np.stack(images))
  else:
    source = runs / 'unlabelled.ts'
    sequences = ts_format.read_ts(str(source)).sequences
    padded = np.full((len(sequences), 6, 2), 7.0, np.float32)  # past each end: ignored
    for i, sequence in enumerate(sequences):
      padded[i, : len(sequence)] = sequence
    lengths = np.array([len(s) for s in sequences], np.int32)
    np.savez(tmp_path / 'inputs.npz', sequences=padded, lengths=lengths)
  _predict(f'--workdir={runs / model}', f'--input={source}', f'--output={tmp_path / "p.csv"}')
  expected = _probabilities(_rows(tmp_path / 'p.csv'), 'abc')

  # A process in which dlearn cannot be imported (the venv's editable install included).
  hide = tmp_path / 'hide'
  hide.mkdir()
  (hide / 'sitecustomize.py').write_text(
    'import sys\n'
    'class NoDlearn:\n'
    '  def find_spec(self, name, path=None, target=None):\n'
    "    if name.split('.')[0] == 'dlearn':\n"
    "      raise ModuleNotFoundError(f'no {name} here')\n"
    'sys.meta_path.insert(0, NoDlearn())\n'
  )
  (tmp_path / 'run_model.py').write_text(export_on_gpu.readme_lines())
  env = dict(os.environ, PYTHONPATH=str(hide), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  check = subprocess.run(
    [sys.executable, '-c', 'import dlearn'], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert check.returncode == 1 and 'no dlearn here' in check.stderr
  result = subprocess.run(
    [sys.executable, 'run_model.py', 'exported', 'inputs.npz'],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  printed = [line.split() for line in result.stdout.splitlines()]
  got = np.array([[float(p.split('=')[1]) for p in line[1:]] for line in printed])
  np.testing.assert_allclose(got, expected, atol=2e-6)
  assert [line[0] for line in printed] == [row['class_1'] for row in _rows(tmp_path / 'p.csv')]
