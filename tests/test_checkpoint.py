"""Fault tolerance: exact resume after SIGKILL, SIGTERM/SIGINT, restore onto other device counts,
no pickle, and guarded training (non-finite loss, unwritable or incompatible work directory)."""

import json
import os
import random
import signal
import time

import entry_point
import helpers
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from dlearn import checkpoint, configs, train

pytestmark = pytest.mark.slow  # subprocesses and end-to-end runs

SMOKE = 'experiments/configs/seed_dcnn_cifar10.py:smoke'


def _args(workdir, *overrides):
  return (
    f'--config={SMOKE}',
    f'--workdir={workdir}',
    '--config.data.name=cifar10',
    '--config.log_every_steps=1',
    '--config.eval_every_steps=1000',
    *overrides,
  )


def _steps_logged(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [
      json.loads(line)['step'] for line in f if line.strip().endswith('}') and 'train/loss' in line
    ]


def _final_arrays(workdir):
  manager = ocp.CheckpointManager(checkpoint.directory(workdir), item_names=('state', 'data'))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, [np.asarray(x) for x in jax.tree.leaves(restored['state'])]


def _snapshot(workdir):
  root = checkpoint.directory(workdir)
  files = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


def _wait_for_step(process, workdir, step, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    logged = _steps_logged(workdir)
    if logged and logged[-1] >= step:
      return logged[-1]
    assert process.poll() is None, f'the run ended early: {process.stderr.read()[-2000:]}'
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


@pytest.mark.parametrize(
  'rule',
  [(), ('--config.sharding=fsdp', '--config.fsdp_min_size_mib=0')],
  ids=['replicate', 'fsdp'],
)
def test_sigkill_at_random_steps_then_resume_is_bitwise_identical(tmp_path, rule):
  steps = 36
  overrides = (f'--config.num_train_steps={steps}', '--config.checkpoint_every_steps=2', *rule)
  reference = str(tmp_path / 'reference')
  entry_point.run('main', *_args(reference, *overrides))

  killed = str(tmp_path / 'killed')
  rng = random.Random(0)
  targets = sorted(rng.sample(range(3, steps - 3), 3))
  for target in targets:
    process = entry_point.start('main', *_args(killed, *overrides))
    _wait_for_step(process, killed, target)
    process.send_signal(signal.SIGKILL)  # no chance to clean up, possibly mid-save
    process.wait()
  entry_point.run('main', *_args(killed, *overrides))

  reference_step, reference_arrays = _final_arrays(reference)
  killed_step, killed_arrays = _final_arrays(killed)
  assert reference_step == killed_step == steps
  assert len(reference_arrays) == len(killed_arrays)
  for a, b in zip(reference_arrays, killed_arrays):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert _steps_logged(killed) == list(range(1, steps + 1))  # no gap, no duplicate


def _stop_with(signum, workdir, steps=400):
  """Starts a run, sends `signum` once it has logged step 5; returns the step it stopped at."""
  overrides = (f'--config.num_train_steps={steps}', '--config.checkpoint_every_steps=1000')
  process = entry_point.start('main', *_args(workdir, *overrides))
  _wait_for_step(process, workdir, 5)
  process.send_signal(signum)
  assert process.wait(timeout=120) == checkpoint.PREEMPTED_EXIT_STATUS
  stopped_at, _ = _final_arrays(workdir)
  assert 5 <= stopped_at < steps
  assert _steps_logged(workdir)[-1] == stopped_at
  return stopped_at


def test_sigterm_saves_exits_75_and_resumes(tmp_path):
  workdir = str(tmp_path / 'workdir')
  stopped_at = _stop_with(signal.SIGTERM, workdir)
  resumed = entry_point.run(
    'main', *_args(workdir, '--config.num_train_steps=' + str(stopped_at + 3))
  )
  assert f'Resumed from the checkpoint of step {stopped_at}' in resumed.stderr
  assert _steps_logged(workdir) == list(range(1, stopped_at + 4))


def test_ctrl_c_saves_and_exits_75(tmp_path):
  _stop_with(signal.SIGINT, str(tmp_path / 'workdir'))


@pytest.fixture(scope='module')
def trained_on_8_devices(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained') / 'workdir')
  entry_point.run('main', *_args(workdir, '--config.num_train_steps=6'))
  return workdir


def test_checkpoint_from_8_devices_restores_on_4_and_1(trained_on_8_devices):
  workdir = trained_on_8_devices
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    on_8 = json.load(f)['eval']  # evaluated on 8 devices at the end of training
  for devices in (4, 1):
    words = entry_point.run('evaluate', f'--workdir={workdir}', devices=devices).stdout.split()
    accuracy, loss, count = float(words[1]), float(words[3]), int(words[5])
    assert count == on_8['count'] == entry_point.NUM_EXAMPLES
    assert accuracy == pytest.approx(on_8['accuracy'], abs=5e-5)  # printed to 4 decimals
    assert loss == pytest.approx(on_8['loss'], abs=5e-5)
  # ...and training continues there.
  continued = entry_point.run('main', *_args(workdir, '--config.num_train_steps=9'), devices=4)
  assert 'Resumed from the checkpoint of step 6' in continued.stderr
  assert _final_arrays(workdir)[0] == 9


def test_a_restore_of_other_shapes_is_one_error_line(trained_on_8_devices):
  result = entry_point.run(
    'evaluate', f'--workdir={trained_on_8_devices}', '--set=model=resnet', check=False
  )
  assert 'holds a train state of other shapes' in helpers.the_error_line(result)
  assert 'in the checkpoint' in result.stderr  # the arrays that differ, on the lines below


def test_no_pickle_in_checkpoints(trained_on_8_devices):
  # Every file is JSON, orbax's commit note, or tensorstore's OCDBT/zstd data: formats that
  # run no code when read (a pickle would start with 0x80).
  files = _snapshot(trained_on_8_devices)
  assert files
  for name, content in files.items():
    if content.startswith(b'{'):
      json.loads(content)
    else:
      assert content.startswith((b'Checkpoint commit', b'\x0c\xdb', b'\x28\xb5\x2f\xfd')), (
        name,
        content[:8],
      )


# ---- guarded training, in this process ---------------------------------------------------------
def _config(**overrides):
  config = configs.finish(configs.base(), 'smoke')
  config.model = 'seed_dcnn'
  config.num_train_steps, config.checkpoint_every_steps, config.eval_every_steps = 3, 1, 1000
  for key, value in overrides.items():
    config[key] = value
  return config


def _train(config, workdir):
  with tfds.testing.mock_data(num_examples=entry_point.NUM_EXAMPLES):
    return train.train_and_evaluate(config, workdir)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'workdir')
  _train(_config(), workdir)
  before = _snapshot(workdir)
  with pytest.raises(
    train.NonFiniteError,
    match=r'Non-finite loss or gradient at step 4;.*last good checkpoint, step 3',
  ):
    _train(_config(num_train_steps=6, learning_rate=float('inf')), workdir)
  assert _snapshot(workdir) == before


def test_non_finite_steps_can_be_skipped_and_counted(tmp_path):
  result = _train(
    _config(learning_rate=float('inf'), skip_nonfinite_steps=True), str(tmp_path / 'workdir')
  )
  assert result['skipped_nonfinite_steps'] == 3
  params = jax.tree.leaves(jax.device_get(result['state'].params))
  assert all(np.isfinite(p).all() for p in params)


def test_unwritable_work_directory_is_a_clear_error(tmp_path):
  workdir = str(tmp_path / 'workdir')
  _train(_config(), workdir)
  before = _snapshot(workdir)
  # The tests run as root, for whom permissions do not stop a write: block the probe file instead.
  os.makedirs(os.path.join(workdir, '.write_test'))
  with pytest.raises(checkpoint.CheckpointWriteError, match='cannot be written'):
    _train(_config(num_train_steps=6), workdir)
  assert _snapshot(workdir) == before
  with pytest.raises(checkpoint.CheckpointWriteError, match='cannot be written'):
    _train(_config(), os.path.join(workdir, 'config.json', 'below_a_file'))


def test_incompatible_config_is_refused_with_the_differences(tmp_path):
  workdir = str(tmp_path / 'workdir')
  _train(_config(), workdir)
  before = _snapshot(workdir)
  config = _config(num_train_steps=6, model='resnet')
  config.resnet.width = 8
  with pytest.raises(train.IncompatibleConfigError) as error:
    _train(config, workdir)
  message = str(error.value)
  assert "model: 'seed_dcnn' in the checkpoint's config, 'resnet' now" in message
  assert "resnet.width: 64 in the checkpoint's config, 8 now" in message
  assert '--config.fresh=True' in message
  assert _snapshot(workdir) == before


@pytest.mark.parametrize('field, value', [('seed', 1), ('train_split', 'train[:50%]')])
def test_a_run_on_other_examples_is_not_resumed(tmp_path, field, value):
  """Same shapes, other examples (another seed's order and folds, another split): resuming would
  go on training on them (a fold's model on cases it now holds out), so it is refused."""
  workdir = str(tmp_path / 'workdir')
  _train(_config(), workdir)
  before = _snapshot(workdir)
  config = _config(num_train_steps=6)
  (config.data if field == 'train_split' else config)[field] = value
  with pytest.raises(train.IncompatibleConfigError, match='run on other examples') as error:
    _train(config, workdir)
  assert f'{value!r} now' in str(error.value)
  assert _snapshot(workdir) == before
  config.fresh = True
  assert int(_train(config, workdir)['state'].step) == 6  # discarded, trained afresh


def test_fresh_and_init_from(tmp_path):
  first = str(tmp_path / 'first')
  trained = _train(_config(), first)
  fresh = _train(_config(fresh=True), first)  # starts over: same steps, not resumed
  assert int(fresh['state'].step) == 3
  second = _train(
    _config(num_train_steps=1, learning_rate=0.0, init_from=first), str(tmp_path / 'second')
  )
  assert int(second['state'].step) == 1
  for a, b in zip(
    jax.tree.leaves(jax.device_get(trained['state'].params)),
    jax.tree.leaves(jax.device_get(second['state'].params)),
  ):
    np.testing.assert_array_equal(a, b)  # lr 0: the parameters it started from


def test_a_deadline_stops_a_run_once_its_pace_says_it_would_pass_it(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(checkpoint.time, 'monotonic', lambda: clock[0])
  for total_steps, expected in ((100, 'config.max_train_seconds'), (8, None)):
    signals = checkpoint.StopSignals(deadline=110.0)  # 10 s; the steps take 1 s each
    reasons = []
    for step in range(1, 6):
      reasons.append(signals.stop_reason(None, step - 1, step, total_steps))
      clock[0] += 1.0
    # no verdict before 2.5 s of pace (a quarter of the 10 s); then 100 steps would take 96 s
    # more, 8 steps 4 s
    assert reasons[:3] == [None] * 3 and reasons[3:] == [expected] * 2, (total_steps, reasons)
    signals.restore()
    clock[0] = 100.0
