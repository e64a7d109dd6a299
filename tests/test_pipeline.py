"""The input pipeline: batch shapes, per-process shares, eval that counts every example
once, and the errors a user meets first."""

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest

from dlearn.data import pipeline

IMAGES = pipeline.DatasetInfo('synthetic', 'image', (4, 4, 3), 5, tuple('abcde'))
SEQUENCES = pipeline.DatasetInfo('synthetic', 'sequence', (6, 2), 3, ('x', 'y', 'z'))


def _images(n):
  # Each record remembers its index in its label and first pixel, so tests can tell which it is.
  return [{'image': np.full((4, 4, 3), i % 256, np.uint8), 'label': i} for i in range(n)]


def test_train_batches_have_the_local_batch_shape():
  batch = next(pipeline.train_iterator(_images(50), IMAGES, local_batch_size=16, seed=0))
  assert batch['image'].shape == (16, 4, 4, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (16,) and batch['mask'].shape == (16,)


def test_each_process_trains_on_its_own_part():
  seen = []
  for process in range(2):
    batches = pipeline.train_iterator(
      _images(40),
      IMAGES,
      local_batch_size=4,
      seed=0,
      process_index=process,
      process_count=2,
    )
    seen.append({int(label) for _ in range(5) for label in next(batches)['label'].ravel()})
  assert seen[0] and seen[1] and not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(40))


def test_each_epoch_has_a_new_order_and_every_example():
  batches = pipeline.train_iterator(_images(16), IMAGES, local_batch_size=16, seed=0)
  first, second = (next(batches)['label'].ravel().tolist() for _ in range(2))
  assert sorted(first) == sorted(second) == list(range(16))
  assert first != second


@pytest.mark.parametrize(
  'num_examples,global_batch,processes', [(37, 16, 1), (37, 16, 2), (5, 16, 2), (64, 16, 2)]
)
def test_eval_counts_every_example_exactly_once(num_examples, global_batch, processes):
  steps, counts = [], np.zeros(num_examples, int)
  for process in range(processes):
    batches = list(
      pipeline.eval_iterator(
        _images(num_examples),
        IMAGES,
        global_batch_size=global_batch,
        process_index=process,
        process_count=processes,
      )
    )
    steps.append(len(batches))
    for batch in batches:
      assert batch['label'].shape == (global_batch // processes,)
      for label, mask in zip(batch['label'].ravel(), batch['mask'].ravel()):
        counts[label] += int(mask)
  assert len(set(steps)) == 1, 'every process must run the same number of eval steps'
  assert steps[0] == pipeline.eval_steps(num_examples, global_batch)
  np.testing.assert_array_equal(counts, 1)


def test_sequences_are_padded_with_their_lengths():
  records = [{'sequence': np.ones((n, 2), np.float32), 'label': n % 3} for n in (1, 6, 3, 2)]
  batch = next(pipeline.eval_iterator(records, SEQUENCES, global_batch_size=4))
  assert batch['sequence'].shape == (4, 6, 2)
  np.testing.assert_array_equal(batch['length'].ravel(), [1, 6, 3, 2])
  np.testing.assert_array_equal(batch['sequence'][0, 1:], 0)  # padding is zeros


def test_each_case_standardisation_uses_each_case_own_steps_only():
  info = dataclasses.replace(SEQUENCES, standardize='each_case')
  rng = np.random.default_rng(0)
  case = rng.normal(size=(4, 2)).astype(np.float32)
  records = [
    {'sequence': case, 'label': 0},
    {'sequence': 5 + 3 * case, 'label': 1},  # shifted and scaled: the same after
    {'sequence': np.full((3, 2), 2.5, np.float32), 'label': 2},  # constant: zeros
  ]
  batch = next(pipeline.eval_iterator(records, info, global_batch_size=3))
  sequences = batch['sequence']
  np.testing.assert_allclose(sequences[0, :4].mean(0), 0, atol=1e-6)
  np.testing.assert_allclose(sequences[0, :4].std(0), 1, atol=1e-5)
  np.testing.assert_allclose(sequences[1], sequences[0], atol=1e-5)
  np.testing.assert_array_equal(sequences[:, 4:], 0)  # padding stays zeros
  np.testing.assert_array_equal(sequences[2], 0)
  # On padded jax arrays (exported models), with the valid steps given: the same numbers.
  padded = np.full((1, 6, 2), 9.0, np.float32)
  padded[0, :4] = case
  valid = (np.arange(6) < 4)[None, :, None]
  np.testing.assert_allclose(
    np.asarray(pipeline.standardize(jnp.asarray(padded), info, jnp.asarray(valid)))[0, :4],
    sequences[0, :4],
    atol=1e-6,
  )


def test_a_sequence_longer_than_max_length_is_a_clear_error():
  records = [{'sequence': np.ones((7, 2), np.float32), 'label': 0}]
  with pytest.raises(ValueError, match='7 steps, more than config.data.max_length=6'):
    next(pipeline.eval_iterator(records, SEQUENCES, global_batch_size=2))


def test_room_for_longer_sequences_pads_the_batches_not_the_model():
  assert pipeline.with_room_for(SEQUENCES, 6) is SEQUENCES  # the trained length: as it is
  assert pipeline.with_room_for(SEQUENCES, 4) is SEQUENCES
  assert pipeline.with_room_for(SEQUENCES, 7).example_shape == (7, 2)
  assert pipeline.with_room_for(SEQUENCES, 7, multiple=4).example_shape == (8, 2)  # time parts
  assert pipeline.with_room_for(IMAGES, 99) is IMAGES
  records = [{'sequence': np.ones((7, 2), np.float32), 'label': 0}]
  room = pipeline.with_room_for(SEQUENCES, 7)
  batch = next(pipeline.eval_iterator(records, room, global_batch_size=2))
  assert batch['sequence'].shape == (2, 7, 2) and batch['length'][0] == 7


def test_a_splits_longest_sequence_is_its_own():
  info = types.SimpleNamespace(
    metadata={'max_length': 26, 'split_max_length': {'train': 25, 'validation': 26, 'test': 29}}
  )
  split = lambda name: types.SimpleNamespace(dataset_info=info, split=name)  # noqa: E731
  assert pipeline.longest_sequence(split('test')) == 29
  assert pipeline.longest_sequence(split('train')) == 25
  assert pipeline.longest_sequence(split('train+validation')) == 26
  assert pipeline.longest_sequence(pipeline.Subset(split('train'), [0])) == 25  # a fold
  assert pipeline.longest_sequence(split('train[:10]')) == 29  # not recorded: every split's
  info.metadata = {'max_length': 26}  # prepared before split_max_length
  assert pipeline.longest_sequence(split('test')) == 26
  assert pipeline.longest_sequence([]) == 0


def test_a_missing_dataset_says_where_it_looked_and_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    pipeline.load_split('cifar10', 'train', str(tmp_path))
  message = str(error.value)
  assert str(tmp_path) in message
  assert f'tfds build cifar10 --file_format=array_record --data_dir={tmp_path}' in message


def test_two_processes_together_read_what_one_process_reads():
  one = pipeline.train_iterator(_images(40), IMAGES, local_batch_size=8, seed=3)
  halves = [
    pipeline.train_iterator(
      _images(40),
      IMAGES,
      local_batch_size=4,
      seed=3,
      process_index=p,
      process_count=2,
    )
    for p in range(2)
  ]
  for _ in range(7):  # across an epoch boundary
    expected = next(one)['label'].ravel().tolist()
    assert [int(x) for h in halves for x in next(h)['label'].ravel()] == expected
