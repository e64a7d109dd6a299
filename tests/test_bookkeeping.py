"""The loop's bookkeeping: intervals, periodic actions, the non-finite check's messages."""

import numpy as np
import pytest

from dlearn import bookkeeping, configs


def test_intervals_and_durations_resolve_to_steps():
  assert bookkeeping.interval(-1, 22) == 22 and bookkeeping.interval(5, 22) == 5
  config = configs.base()
  config.num_epochs, config.num_train_steps = 2.5, -1
  assert bookkeeping.total_steps(config, 22) == 55
  config.max_train_steps = 40  # bounds the epochs' steps...
  assert bookkeeping.total_steps(config, 22) == 40 and bookkeeping.total_steps(config, 10) == 25
  config.num_train_steps = 7  # ...not an explicit number of steps
  assert bookkeeping.total_steps(config, 22) == 7
  assert [s for s in range(1, 13) if bookkeeping.itstime(s, 5, 12)] == [5, 10, 12]


def _sums(nonfinite, first=0):
  return {'nonfinite': np.float32(nonfinite), 'first_nonfinite_step': np.int32(first)}


def test_a_non_finite_step_before_any_checkpoint_says_so():
  check = bookkeeping.NonFiniteCheck(skip=False, last_checkpoint=lambda: (None, '/w/checkpoints'))
  check.push(1, 1, _sums(0))
  check.push(2, 2, _sums(1))  # checks step 1: fine
  with pytest.raises(bookkeeping.NonFiniteError) as error:
    check.flush()
  message = str(error.value)
  assert 'at step 2;' in message and 'No checkpoint was written yet' in message
  assert 'None' not in message


def test_a_non_finite_step_in_a_dispatch_names_it_and_the_last_checkpoint():
  check = bookkeeping.NonFiniteCheck(skip=False, last_checkpoint=lambda: (8, '/w/checkpoints'))
  check.push(9, 16, _sums(2, first=13))
  with pytest.raises(bookkeeping.NonFiniteError, match=r'at step 13 \(steps 9-16 ran as one'):
    check.flush()
  skipping = bookkeeping.NonFiniteCheck(skip=True, last_checkpoint=lambda: (8, '/w'))
  skipping.push(9, 16, _sums(2, first=13))
  skipping.push(17, 24, _sums(1, first=20))
  skipping.flush()
  assert skipping.skipped == 3


def test_a_batch_size_of_zero_is_derived_from_the_data():
  from dlearn.train import derived_batch_size

  # A tenth of the cases, at least 1, at most 16, then a multiple of the devices.
  assert [derived_batch_size(n, 1) for n in (5, 40, 50, 270, 100_000)] == [1, 4, 5, 16, 16]
  assert [derived_batch_size(n, 8) for n in (5, 50, 270)] == [8, 8, 16]
