"""experiments/benchmarks/uea_vs_minirocket.py: MiniRocket on the split dlearn.prepare carves.

Needs aeon (`pip install -e ".[benchmark]"`; CI installs `.[test]` only, and skips) and the real
data in ../shared/data. Slow: aeon's first MiniRocket call compiles its numba kernels (about 50 s
on the project's 2-core machine; a few seconds once numba's cache holds them).
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

from dlearn.data import dataset_writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'benchmarks', 'uea_vs_minirocket.py')
GUN_POINT = os.path.join(ROOT, '..', 'shared', 'data', 'GunPoint_TRAIN.ts')


def _script():
  if 'uea_vs_minirocket' not in sys.modules:  # its dataclasses look their module up there
    spec = importlib.util.spec_from_file_location('uea_vs_minirocket', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
  return sys.modules['uea_vs_minirocket']


def test_snake_case_names():
  script = _script()
  assert script.snake_case('GunPoint') == 'gun_point'
  assert script.snake_case('JapaneseVowels') == 'japanese_vowels'
  assert script.snake_case('BasicMotions') == 'basic_motions'
  assert script.snake_case('ECG200') == 'ecg200'
  assert script.snake_case('UWaveGestureLibraryX') == 'u_wave_gesture_library_x'


@pytest.mark.slow
def test_minirocket_on_the_carved_validation_split():
  pytest.importorskip(
    'aeon', reason='aeon is in the benchmark extra: pip install -e ".[benchmark]"'
  )
  if not os.path.exists(GUN_POINT):
    pytest.skip(f'{GUN_POINT} is absent (../shared/data is only on the project machines)')
  script = _script()
  problem = script.load_problem(GUN_POINT, None, 0.1)

  # The evaluation cases are those dlearn.prepare writes as 'validation', in the same order.
  _, splits, _ = dataset_writer._sequence_dataset({'train': GUN_POINT}, 0.1)
  for split, sequences, labels in (
    ('validation', problem.eval_sequences, problem.eval_labels),
    ('train', problem.train_sequences, problem.train_labels),
  ):
    written = [example for _, example in splits[split]()]
    assert [int(e['label']) for e in written] == list(labels)
    for example, sequence in zip(written, sequences, strict=True):
      np.testing.assert_array_equal(example['sequence'], sequence)
  assert problem.eval_split == 'validation'
  assert (len(problem.train_labels), len(problem.eval_labels)) == (45, 5)

  result = script.run_minirocket(problem, n_kernels=840, warmup=False)
  assert 0.0 <= result['accuracy'] <= 1.0
  assert result['correct'] == round(result['accuracy'] * 5)
  assert result['padded_length'] == 150 and result['seconds'] > 0


def test_padding_to_one_length():
  pytest.importorskip(
    'aeon', reason='aeon is in the benchmark extra: pip install -e ".[benchmark]"'
  )
  script = _script()
  sequences = [np.arange(n * 2, dtype=np.float32).reshape(n, 2) for n in (3, 5)]
  problem = script.Problem(
    ('a', 'b'), sequences, np.array([0, 1]), sequences[:1], np.array([0]), 'x'
  )
  x_train, x_eval, length = script.padded(problem)
  assert length == 9 and x_train.shape == (2, 2, 9) and x_eval.shape == (1, 2, 9)
  # Each channel continues with its own last value.
  np.testing.assert_array_equal(x_train[0, 0], [0, 2, 4, 4, 4, 4, 4, 4, 4])
  np.testing.assert_array_equal(x_train[1, 1], [1, 3, 5, 7, 9, 9, 9, 9, 9])
