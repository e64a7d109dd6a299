"""`metrics.Progress`, the one progress line of training (logged steps/s) and prediction (inputs/s
on stderr), on a clock the test moves."""

import logging

import pytest

from dlearn import metrics


@pytest.fixture
def clock(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(metrics.time, 'perf_counter', lambda: now[0])
  return now


def test_training_reports_steps_per_second_since_the_last_report_or_restart(clock, caplog):
  progress = metrics.Progress(100, 3)
  clock[0] += 10  # compilation: not counted
  progress.restart(3)
  clock[0] += 1
  scalars = {'loss': 0.5, 'accuracy': 0.25}
  with caplog.at_level(logging.INFO):
    assert progress.report(5, scalars) == 2.0
    clock[0] += 2
    assert progress.report(10, scalars) == 2.5
    clock[0] += 5  # an evaluation
    progress.restart(10)
    clock[0] += 1
    assert progress.report(20, scalars) == 10.0
  assert caplog.messages == [
    'step 5/100  2.00 steps/s  ETA 00:00:47  loss 0.5000  accuracy 0.2500',
    'step 10/100  2.50 steps/s  ETA 00:00:36  loss 0.5000  accuracy 0.2500',
    'step 20/100  10.00 steps/s  ETA 00:00:08  loss 0.5000  accuracy 0.2500',
  ]


def test_prediction_counts_from_the_first_batch_and_redraws_at_most_once_a_second(clock, capsys):
  progress = metrics.Progress(50)
  for seconds in (4, 0.5, 0.6, 0.2, 1.5):  # the first batch includes compilation
    clock[0] += seconds
    progress.advance(10)
  assert progress.rate() == pytest.approx(40 / 2.8)
  assert capsys.readouterr().err.splitlines() == [
    'predict: 10/50 inputs  2.5 inputs/s  ETA 00:00:16',  # the first batch: from the start
    'predict: 30/50 inputs  18.2 inputs/s  ETA 00:00:01',
    'predict: 50/50 inputs  14.3 inputs/s  ETA 00:00:00',  # every input done: always drawn
  ]
  single = metrics.Progress(10)
  clock[0] += 4
  single.advance(10)
  assert single.rate() == 2.5  # a single batch: from the start
