"""`dlearn.ensemble` (dlearn/ensemble.py, dlearn/models/weighted_ensemble.py): members of different
kinds cross-validated, weighted by accuracy^4, and combined in one work directory that predict
reads like any other; a member that does not fit the time budget is left out, and saying so."""

import csv
import json
import os
import re

import entry_point
import helpers
import numpy as np
import pytest

from dlearn.models import weighted_ensemble

ROCKET = 'experiments/configs/rocket_uea.py:minirocket,smoke'
FCN = 'experiments/configs/rnn_uea.py:smoke'


def test_cawpe_weights_are_accuracies_to_the_fourth():
  np.testing.assert_allclose(weighted_ensemble.cawpe_weights([1.0, 0.5, 0.9]), [1, 1 / 16, 0.6561])
  # every member 0 (one example a class: no fold's training has the class it holds out)
  np.testing.assert_array_equal(weighted_ensemble.cawpe_weights([0.0, 0.0]), [1, 1])


def _ensemble(tmp_path, data_dir, *args, check=True):
  return entry_point.run(
    'ensemble',
    '--dataset=toy_sequences',
    f'--workdir={tmp_path / "ensemble"}',
    '--folds=2',
    f'--set=data.data_dir={data_dir}',
    '--set=data.max_length=12',  # MiniRocket's kernels need 9 steps; the toy cases have 3-6
    # each case standardised on its own, inside the ensemble (which reads train-split statistics)
    '--set=data.standardize=each_case',
    '--set=rnn.conv_filters=(4,)',
    '--set=rnn.conv_kernels=(3,)',
    '--compilation_cache=',
    *args,
    devices=1,
    check=check,
    mock=False,
  )


def _probabilities(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  classes = sorted({row['class_1'] for row in rows})
  out = np.zeros((len(rows), len(classes)))
  for i, row in enumerate(rows):
    for k in range(1, len(classes) + 1):
      out[i, classes.index(row[f'class_{k}'])] = float(row[f'probability_{k}'])
  return out


@pytest.mark.slow  # members trained and cross-validated, each command its own process
def test_the_ensemble_weighs_its_members_by_cross_validated_accuracy(tmp_path):
  data_dir = helpers.prepared_sequences(tmp_path, per_class=(16, 16, 16))
  result = _ensemble(tmp_path, data_dir, f'--member={ROCKET}', f'--member={FCN}', '--minutes=20')
  with open(tmp_path / 'ensemble' / 'ensemble.json') as f:
    summary = json.load(f)
  members = summary['members']
  assert [m['name'] for m in members] == ['rocket_uea-minirocket-smoke', 'rnn_uea-smoke']
  for m in members:
    assert m['weight'] == pytest.approx(np.mean(m['fold_accuracies']) ** 4)
  # by default every member is cross-validated and fitted on the whole training file (48 cases),
  # and the evaluation split is said to be part of it
  assert 'validation accuracy' in result.stdout and 'a split it was trained on' in result.stdout
  folds = [np.load(os.path.join(members[0]['cv_workdir'], f'fold_{i}', 'held_out.npz')) for i in range(2)]  # fmt: skip
  assert sorted(np.concatenate([f['index'] for f in folds])) == list(range(48))
  # its own k-fold accuracy: on each held-out fold, its members' probabilities from the runs that
  # did not see it, weighted
  assert len(summary['fold_accuracies']) == 2 and '2-fold accuracy' in result.stdout
  weights = np.array([m['weight'] for m in members])
  for fold, accuracy in enumerate(summary['fold_accuracies']):
    held = [dict(np.load(os.path.join(m['cv_workdir'], f'fold_{fold}', 'held_out.npz'))) for m in members]  # fmt: skip
    for m, h in zip(members, held):
      right = np.argmax(h['probabilities'], -1) == h['label']
      assert np.mean(right) == pytest.approx(m['fold_accuracies'][fold])
    combined = sum(w * h['probabilities'] for w, h in zip(weights, held))
    assert accuracy == pytest.approx(np.mean(np.argmax(combined, -1) == held[0]['label']))
  # predict reads the ensemble's work directory alone; its probabilities are the members',
  # weighted: the ridge member's softmax of its scores at their leave-one-out temperature, the
  # FCNs' averaged softmax. The ridge member's features count comparisons with its biases, which
  # the rounding of standardising each case again inside the ensemble (1e-6 here) flips on some
  # of these toy cases of 3-6 steps: its share agrees to 0.01, the FCN's exactly.
  predicted = {}
  for name, workdir in [('ensemble', tmp_path / 'ensemble')] + [
    (m['name'], m['workdir']) for m in members
  ]:
    output = tmp_path / f'{name}.csv'
    entry_point.run(
      'predict', f'--workdir={workdir}', '--split=train', f'--output={output}', '--top_k=3',
      '--compilation_cache=', devices=1, mock=False,
    )  # fmt: skip
    predicted[name] = _probabilities(output)
  weights = np.array([m['weight'] for m in members])
  expected = sum(w * predicted[m['name']] for w, m in zip(weights, members)) / weights.sum()
  share = weights[0] / weights.sum()  # members[0] is the ridge member
  np.testing.assert_allclose(predicted['ensemble'], expected, atol=2e-5 + 0.01 * share)
  # rerun on other examples (the train split alone), its runs are refused before any work
  held = os.path.join(members[0]['cv_workdir'], 'fold_0', 'held_out.npz')
  written = os.path.getmtime(held)
  result = _ensemble(tmp_path, data_dir, f'--member={ROCKET}', f'--member={FCN}', '--split=train', check=False)  # fmt: skip
  assert 'run on other examples' in helpers.the_error_line(result)
  assert "'train' now" in result.stderr and '--set=fresh=True' in result.stderr
  assert os.path.getmtime(held) == written  # the ridge member's folds (no checkpoints) not rerun


def test_members_whose_folds_held_out_other_examples_are_refused_naming_the_seed(tmp_path):
  from dlearn import ensemble
  from dlearn.errors import ConfigError

  records = []
  for name, index in [('a', [0, 2]), ('b', [1, 2])]:  # fold 0 of each
    os.makedirs(tmp_path / name / 'fold_0')
    np.savez(tmp_path / name / 'fold_0' / 'held_out.npz', index=np.array(index), label=np.zeros(2, int), probabilities=np.full((2, 2), 0.5))  # fmt: skip
    records.append({'name': name, 'cv_accuracy': 1.0, 'cv_workdir': str(tmp_path / name)})
  with pytest.raises(ConfigError, match=r'a and b held out other examples in fold 0.*--set=seed='):
    ensemble.cross_validated_ensemble(records, 4.0, 1, print)


@pytest.mark.slow  # a process
def test_a_member_beyond_the_time_budget_is_left_out_saying_why(tmp_path):
  data_dir = helpers.prepared_sequences(tmp_path, per_class=(16, 16, 16))
  result = _ensemble(tmp_path, data_dir, f'--member={FCN}', '--minutes=0.01', check=False)
  line = helpers.the_error_line(result)
  assert 'left out' in line and '--minutes' in line, line
  assert re.search(r'share of --minutes \(0\.\d\d s\)', line), line  # not '(0 s)'
  assert 'member rnn_uea-smoke: left out' in result.stdout
  assert not os.path.exists(tmp_path / 'ensemble' / 'ensemble.json')


@pytest.mark.slow  # a process
def test_a_missing_dataset_is_one_error_line_in_the_ensembles_own_flags(tmp_path):
  result = _ensemble(tmp_path, str(tmp_path / 'empty'), f'--member={ROCKET}', check=False)
  assert 'toy_sequences' in helpers.the_error_line(result)
  message = result.stderr[result.stderr.index('error: ') :]
  assert '--set=data.data_dir=' in message and '--config.' not in message, message


@pytest.mark.slow  # a process
def test_folds_the_split_cannot_hold_are_refused_before_any_member_is_announced(tmp_path):
  data_dir = helpers.prepared_sequences(tmp_path, per_class=(2, 2, 2))
  result = _ensemble(tmp_path, data_dir, f'--member={ROCKET}', '--folds=7', check=False)
  assert '--folds=7: use from 2 to 6 folds' in helpers.the_error_line(result)
  assert 'member' not in result.stdout  # it printed the member's line first
  assert not os.path.exists(tmp_path / 'ensemble' / 'members')


def test_a_set_field_one_member_lacks_names_that_member_and_where_its_own_settings_go():
  from dlearn import ensemble
  from dlearn.errors import ConfigError

  with pytest.raises(ConfigError, match=r"--set: member rnn_uea-quick .*no field 'rocket.transform'.*rocket_uea.py:minirocket"):  # fmt: skip
    ensemble.member_config('experiments/configs/rnn_uea.py:quick', 'gun_point', {'rocket.transform': 'x'})  # fmt: skip
  name, config = ensemble.member_config('experiments/configs/rocket_uea.py', 'gun_point', {'rocket.transform': 'minirocket'})  # fmt: skip
  assert name == 'rocket_uea' and config.rocket.transform == 'minirocket'


@pytest.mark.slow  # a process
@pytest.mark.parametrize('minutes', ['0', '-1', 'nan'])
def test_a_budget_of_no_time_is_refused_before_any_work(tmp_path, minutes):
  result = entry_point.run(
    'ensemble', '--dataset=toy_sequences', f'--workdir={tmp_path / "e"}', f'--minutes={minutes}',
    devices=1, check=False, mock=False,
  )  # fmt: skip
  assert f'--minutes={minutes}' in helpers.the_error_line(result)
  assert not os.path.exists(tmp_path / 'e')


def test_a_contracted_member_trains_the_epochs_its_share_affords_and_keeps_the_choice(tmp_path, monkeypatch):  # fmt: skip
  from dlearn import ensemble, train

  timed = []

  def timed_run(config, workdir):  # 10 steps, 2.5 an epoch: 9 after the first, 0.1 s each
    timed.append(config.num_epochs)
    timing = {'steps_after_first_dispatch': 9, 'eval_seconds': 0.5}
    return {'steps': 10, 'steps_per_epoch': 2.5, 'timing': timing, 'seconds_after_first_step': 1.4}

  monkeypatch.setattr(train, 'train_and_evaluate', timed_run)
  _, config = ensemble.member_config('experiments/configs/rnn_uea.py:quick', 'gun_point', {})
  assert (config.num_epochs, config.max_num_epochs) == (100, 1000)
  # 0.8 x 100 s at 0.1 s a step, 2.5 steps an epoch: 320 (+3 for the fake run's taking no time)
  assert 315 <= ensemble.affordable_epochs(config, str(tmp_path), 100.0) <= 324
  assert timed == [ensemble.PACE_EPOCHS]
  # a rerun resumes the same runs: the choice is read back, not timed again
  assert 315 <= ensemble.affordable_epochs(config, str(tmp_path), 1000.0) <= 324
  assert len(timed) == 1
  config.fresh = True  # chosen again: at most max_num_epochs, at least num_epochs
  assert ensemble.affordable_epochs(config, str(tmp_path), 1e6) == 1000
  assert ensemble.affordable_epochs(config, str(tmp_path), 1.0) == 100
  config.max_num_epochs = 0  # not contracted: num_epochs, nothing timed
  assert ensemble.affordable_epochs(config, str(tmp_path / 'plain'), 1e6) == 100
  assert len(timed) == 3


def test_a_member_that_would_not_fit_in_memory_is_left_out_saying_why(tmp_path, monkeypatch):
  from dlearn import cross_validate, ensemble
  from dlearn.errors import DoesNotFit

  def too_big(*_):
    raise DoesNotFit('config.rocket.head=ridge: its closed form ... needs about 34.5 GB')

  monkeypatch.setattr(cross_validate, 'run_folds', too_big)
  name, config = ensemble.member_config(ROCKET, 'gun_point', {})
  record = ensemble.train_member(name, config, str(tmp_path), 5, ensemble.Budget(3), print)
  assert record['left_out'].endswith('needs about 34.5 GB') and 'cv_accuracy' not in record
