"""End to end through the real entry point, on tfds mock data."""

import json
import os

import entry_point
import pytest
from entry_point import NUM_EXAMPLES

pytestmark = pytest.mark.slow  # subprocesses and end-to-end runs


@pytest.fixture
def run_main(tmp_path):
  def run(config_file, *overrides):
    workdir = str(tmp_path / 'workdir')
    result = entry_point.run(
      'main',
      f'--config=experiments/configs/{config_file}:smoke',
      f'--workdir={workdir}',
      '--config.data.name=cifar10',
      *overrides,
    )
    return workdir, result.stderr

  return run


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize(
  'config_file,overrides',
  [
    ('seed_dcnn_cifar10.py', ()),
    ('resnet_cifar10.py', ('--config.mapping=shard_map',)),
    ('lstm_cifar10_rows.py', ('--config.rnn.cell=gru', '--config.rnn.bidirectional=True')),
  ],
)
def test_train_and_evaluate_writes_config_metrics_and_tensorboard(run_main, config_file, overrides):
  workdir, log = run_main(config_file, *overrides)
  assert '8 devices (cpu)' in log and 'ETA' in log
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['num_train_steps'] == 20
  for override in overrides:
    key, value = override.removeprefix('--config.').split('=')
    section = config
    for part in key.split('.')[:-1]:
      section = section[part]
    assert str(section[key.split('.')[-1]]) == value
  records = _read_metrics(workdir)
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  assert train_steps == [5, 10, 15, 20]
  final_eval = [r for r in records if 'eval/accuracy' in r][-1]
  assert final_eval['step'] == 20
  assert final_eval['eval/count'] == NUM_EXAMPLES  # every example once, none dropped
  assert 0.0 <= final_eval['eval/accuracy'] <= 1.0
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert json.load(f)['eval']['count'] == NUM_EXAMPLES
