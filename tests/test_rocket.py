"""The ROCKET family as a dlearn model (dlearn/models/rocket.py): the ridge head's leave-one-out
choice against refitting without each case, and the recipe (MiniRocket and MultiRocket) trained
in 0 steps, evaluated and read back."""

import importlib.util
import json
import os
import subprocess
import sys

import helpers
import numpy as np
import pytest

from dlearn import configs, evaluation, train
from dlearn.data import pipeline
from dlearn.models import rocket


@pytest.fixture(autouse=True)
def counting_afresh(monkeypatch):
  """Each test's fits count Hydra's responses themselves (the tests compare transforms), but
  the memo's own tests, which set their own."""
  monkeypatch.setattr(rocket, 'HYDRA_COUNTS', rocket.CountsMemo(limit=0))


@pytest.mark.parametrize('features', [30, 9])  # more features than cases (the Gram path), fewer
def test_leave_one_out_error_equals_refitting_without_each_case(monkeypatch, features):
  monkeypatch.setattr(rocket, 'GRAM_BLOCK', 7)  # the Gram path's features in 5 blocks
  rng = np.random.default_rng(0)
  features32 = rng.normal(size=(14, features)).astype(np.float32)  # as the model's features
  x = features32.astype(np.float64)
  labels = np.arange(14) % 3
  y = -np.ones((14, 3))
  y[np.arange(14), labels] = 1
  alphas = (0.01, 1.0, 100.0)

  def refit_scores(alpha):
    scores = []
    for i in range(len(x)):
      keep = np.arange(len(x)) != i
      xm, ym = x[keep].mean(0), y[keep].mean(0)
      # ridge with an unpenalised intercept on the other cases, in its primal form
      kernel = np.linalg.solve(
        (x[keep] - xm).T @ (x[keep] - xm) + alpha * np.eye(x.shape[1]),
        (x[keep] - xm).T @ (y[keep] - ym),
      )
      scores.append((x[i] - xm) @ kernel + ym)
    return np.array(scores)

  refit = [np.mean((refit_scores(a) - y) ** 2) for a in alphas]
  kernel, bias, alpha, left_out = rocket.ridge_loo(features32, labels, 3, alphas)
  assert alpha == alphas[int(np.argmin(refit))]
  np.testing.assert_allclose(left_out, refit_scores(alpha), rtol=1e-6, atol=1e-8)
  xm, ym = x.mean(0), y.mean(0)
  expected = np.linalg.solve(
    (x - xm).T @ (x - xm) + alpha * np.eye(features), (x - xm).T @ (y - ym)
  )
  np.testing.assert_allclose(kernel, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bias, ym - xm @ expected, rtol=1e-4, atol=1e-5)


def test_the_temperature_follows_how_often_the_scores_are_right():
  rng = np.random.default_rng(0)
  labels = np.arange(200) % 2
  scores = np.where(np.arange(2) == labels[:, None], 1.0, -1.0)  # every case right by 2
  assert rocket.temperature(scores, labels) > 10  # sure: softmax(2 t) rounds to 1
  wrong = rng.random(200) < 0.2  # a fifth wrong: p = 0.8 at a margin of 2, t = log(4) / 2
  assert abs(rocket.temperature(np.where(wrong[:, None], -scores, scores), labels) - np.log(4) / 2) < 0.05  # fmt: skip
  assert rocket.temperature(rng.normal(size=(200, 2)), labels) == rocket.TEMPERATURES[0]


@pytest.mark.parametrize('transform', ['multirocket_hydra', 'minirocket'])
def test_the_logistic_heads_scaling_streamed_in_chunks_equals_the_whole_fit(monkeypatch, transform):
  """Without the features kept (config.rocket.head='logistic'), the scaling is fitted from
  moments merged chunk by chunk: the same as from every case's features at once."""
  from flax import nnx

  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 20, 3)).astype(np.float32)
  lengths = rng.integers(12, 21, 50)
  models = [
    rocket.RocketClassifier(
      2, (20, 3), transform=transform, num_features=1344, max_dilations=32, seed=0, rngs=nnx.Rngs(0)
    )  # fmt: skip
    for _ in range(2)
  ]
  for model in models:
    model.fit_biases(lambda index: (x[index], lengths[index]), len(x), 0)
  features = models[0].fit_scaling(x, lengths, np.arange(50))
  monkeypatch.setattr(rocket, 'FEATURE_BATCH', 16)  # 4 chunks
  assert models[1].fit_scaling(x, lengths, np.arange(50), keep_features=False) is None
  np.testing.assert_allclose(models[1].scale[...], models[0].scale[...], rtol=1e-5)
  if transform == 'multirocket_hydra':
    np.testing.assert_allclose(models[1].hydra.mean[...], models[0].hydra.mean[...], rtol=1e-5)
    np.testing.assert_allclose(models[1].hydra.std[...], models[0].hydra.std[...], rtol=1e-5)
  assert np.asarray(models[0].scale[...]).std() > 0  # features of their own scales
  assert features.shape[0] == 50


@pytest.mark.parametrize('transform', ['multirocket_hydra', 'minirocket'])
def test_series_shorter_than_the_kernels_are_zero_padded_as_the_references_pad(transform):
  """UEA's PenDigits has 8 steps: a model made for 8 has the features of one made for series
  zero-padded to 10, the cases' lengths as they are."""
  from flax import nnx

  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 8, 2)).astype(np.float32)
  lengths = rng.integers(5, 9, 12)
  padded = np.pad(x, ((0, 0), (0, 2), (0, 0)))
  features = []
  for series in (x, padded):
    model = rocket.RocketClassifier(
      2, series.shape[1:], transform=transform, num_features=1344, max_dilations=32, seed=0, rngs=nnx.Rngs(0)
    )  # fmt: skip
    model.fit_biases(lambda index: (series[index], lengths[index]), len(series), 0)
    features.append(model.fit_scaling(series, lengths, np.arange(12)))
  np.testing.assert_allclose(features[0], features[1], rtol=1e-6)
  assert features[0].std() > 0


@pytest.mark.parametrize('transform', ['multirocket_hydra', 'minirocket'])
def test_a_case_of_one_step_has_finite_features_and_leaves_the_others_as_they_are(transform):
  """A case of one step (a .ts case whose other values are trailing missing ones) has an empty
  first difference: the biases fitted to it and its features are finite (they were NaN, and the
  ridge's decomposition failed on them), and the other cases' features are as without it."""
  from flax import nnx

  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 20, 1)).astype(np.float32)
  lengths = rng.integers(10, 21, 12)
  one_step = lengths.copy()
  one_step[0] = 1

  def model_fitted_to(n):
    model = rocket.RocketClassifier(
      2, x.shape[1:], transform=transform, num_features=1344, max_dilations=32, seed=0, rngs=nnx.Rngs(0)
    )  # fmt: skip
    model.fit_biases(lambda index: (x[index], n[index]), len(x), 0)
    return model

  model = model_fitted_to(lengths)
  before, after = (np.asarray(rocket.feature_parts(*nnx.split(model), x, n)[0]) for n in (lengths, one_step))  # fmt: skip
  assert np.isfinite(after).all()
  np.testing.assert_array_equal(after[1:], before[1:])
  # every kernel's biases drawn from the one-step case
  model = model_fitted_to(np.ones_like(lengths))
  assert all(np.isfinite(r.biases[...]).all() for r in model.representations)
  assert np.isfinite(np.asarray(rocket.feature_parts(*nnx.split(model), x, one_step)[0])).all()


@pytest.mark.parametrize('transform', ['multirocket_hydra', 'hydra'])
def test_hydras_counts_are_counted_once_a_case_over_the_folds(monkeypatch, transform):
  """A fold's fit whose cases an earlier fit (of the same kernels) counted takes Hydra's counts
  from the memo, in any order and batch, and has the features of a fit that counts them; other
  kernels (another seed) or any case not counted yet count afresh; past its limit, the oldest
  cases are dropped."""
  from flax import nnx

  memo = rocket.CountsMemo(limit=2**24)
  monkeypatch.setattr(rocket, 'HYDRA_COUNTS', memo)
  counted = []
  parts = rocket.feature_parts
  monkeypatch.setattr(rocket, 'feature_parts', lambda *a, counts=True: counted.append(counts) or parts(*a, counts=counts))  # fmt: skip
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 40, 2)).astype(np.float32)
  lengths = rng.integers(20, 41, 30)

  def features(cases, seed=0):
    model = rocket.RocketClassifier(
      2, (40, 2), transform=transform, num_features=1344, max_dilations=32, seed=seed, rngs=nnx.Rngs(0)
    )  # fmt: skip
    model.fit_biases(lambda index: (x[cases][index], lengths[cases][index]), len(cases), 0)
    counted.clear()
    return model.fit_scaling(x[cases], lengths[cases], np.arange(len(cases)))

  first = np.arange(25)
  memo.limit = 0
  fresh = features(first[::-1])  # counted by no memo
  memo.limit = 2**24
  features(first)
  assert counted == [True] and len(memo.rows) == 25
  known = [False] if transform == 'multirocket_hydra' else []  # the kernels' features alone
  again = features(first[::-1])  # every case known: not counted, in another order and batch
  assert counted == known
  np.testing.assert_array_equal(again, fresh)
  features(np.arange(5, 30))  # five cases never counted: the batch is counted
  assert counted == [True] and len(memo.rows) == 30
  features(first, seed=1)  # other kernels
  assert counted == [True] and len(memo.rows) == 55
  memo.limit = 10 * memo.bytes // 55  # ten cases' counts: the newest ten of the next fit kept
  features(first, seed=2)
  assert counted == [True] and len(memo.rows) == 10
  features(first[15:], seed=2)
  assert counted == known


@pytest.mark.slow  # a whole run
@pytest.mark.parametrize('transform', ['minirocket', 'multirocket', 'hydra', 'multirocket_hydra'])
def test_the_recipe_fits_in_zero_steps_and_evaluates_from_its_checkpoint(tmp_path, transform):
  data_dir = helpers.prepared_sequences(tmp_path, per_class=(12, 12, 12))
  spec = importlib.util.spec_from_file_location('rocket_uea', 'experiments/configs/rocket_uea.py')
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  config = recipe.get_config('toy_sequences,smoke')
  config.data.data_dir = data_dir
  config.data.max_length = 12  # the toy cases have 3-6 steps; MiniRocket needs 9 (zero-padded)
  config.rocket.transform = transform
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  assert result['steps'] == 0
  assert result['eval']['accuracy'] == 1.0  # three classes at three levels
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert json.load(f)['eval']['accuracy'] == 1.0
  again, *_ = evaluation.evaluate_workdir(workdir, split='train')
  assert again['accuracy'] == 1.0 and again['count'] == 33


@pytest.mark.parametrize(
  'field, value',
  [('num_features', -5), ('max_dilations', 0), ('transform', 'rocket')],  # fmt: skip
)
def test_a_setting_out_of_range_is_refused_naming_it(field, value):
  from dlearn import configs
  from dlearn.errors import ConfigError

  config = configs.load_file('experiments/configs/rocket_uea.py', 'gun_point')
  config.rocket[field] = value
  with pytest.raises(ConfigError, match=f'config.rocket.{field}={value!r}'):
    rocket.settings(config)


@pytest.mark.parametrize('arg', ['gun_point,bogus', 'gun_point,minirocket,hydra'])
def test_a_config_argument_with_a_word_too_many_is_refused_not_ignored(arg):
  from dlearn import configs
  from dlearn.errors import ConfigError

  with pytest.raises(ConfigError, match=f'config argument {arg!r}'):
    configs.load_file('experiments/configs/rocket_uea.py', arg)
  config = configs.load_file('experiments/configs/rocket_uea.py', 'minirocket,gun_point')
  assert (config.data.name, config.rocket.transform) == ('gun_point', 'minirocket')


def test_numpys_blas_threads_leave_the_cores_after_the_ridge():
  # OpenBLAS's threads spin for ~0.1 s after each call by default, taking the cores from the next
  # fold's transform; importing dlearn (before NumPy) shortens that wait (dlearn/__init__.py).
  program = (
    'import time, dlearn, numpy as np; from dlearn.models import rocket\n'
    'x = np.random.default_rng(0).normal(size=(200, 400))\n'
    'rocket.ridge_loo(x, np.arange(200) % 3, 3, (1.0,))\n'
    'start = time.process_time(); time.sleep(0.3); print(time.process_time() - start)\n'
  )
  env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_THREAD_TIMEOUT'}
  out = subprocess.run([sys.executable, '-c', program], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert float(out.stdout) < 0.03  # CPU seconds while the process sleeps: ~0.1 without it


@pytest.mark.parametrize(
  'head, memory, message',
  [('logistic', None, r'config.num_epochs=0\): add'), ('ridge', 1000, 'needs about 0.0 GB')],
)
def test_a_head_that_could_not_be_fitted_is_refused_before_any_case_is_read(tmp_path, monkeypatch, head, memory, message):  # fmt: skip
  from dlearn import configs
  from dlearn.errors import UserError

  config = configs.load_file('experiments/configs/rocket_uea.py', 'toy_sequences,smoke')
  config.data.data_dir = helpers.prepared_sequences(tmp_path, per_class=(12, 12, 12))
  config.data.max_length = 12
  config.rocket.head = head
  monkeypatch.setattr(rocket, 'available_memory', lambda: memory)
  monkeypatch.setattr(rocket, '_read', lambda *_: pytest.fail('a case was read'))
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints' / '0')


def test_the_ridge_heads_memory_estimate_grows_with_cases_and_features():
  small, more_cases, more_features = (rocket.ridge_bytes(n, f) for n, f in ((100, 1000), (200, 1000), (100, 2000)))  # fmt: skip
  assert small < more_cases and small < more_features
  # InsectWingbeat's 25,000 cases at MultiRocket-Hydra's 54,848 features: the [N, F] copies and
  # the [N, N] Gram alone are over 20 GB
  assert rocket.ridge_bytes(25_000, 54_848) > 20 * 2**30


@pytest.mark.slow  # three fitted runs
def test_a_cross_validation_keeps_each_folds_held_out_probabilities_not_its_fit(tmp_path):
  from dlearn import cross_validate

  data_dir = helpers.prepared_sequences(tmp_path, per_class=(6, 6, 6))
  config = configs.load_file('experiments/configs/rocket_uea.py', 'toy_sequences,minirocket,smoke')
  config.data.data_dir = data_dir
  config.data.max_length = 12
  workdir = tmp_path / 'cv'
  summary = cross_validate.run_folds(config, str(workdir), 3, 'train+validation', lambda *_: None)
  labels = pipeline.labels(pipeline.load_split('toy_sequences', 'train+validation', data_dir))
  positions = []
  for fold in summary['folds']:
    with np.load(workdir / f'fold_{fold["fold"]}' / cross_validate.HELD_OUT) as held:
      assert held['probabilities'].shape == (fold['count'], 3)
      np.testing.assert_allclose(held['probabilities'].sum(-1), 1.0, rtol=1e-5)
      np.testing.assert_array_equal(held['label'], labels[held['index']])
      predicted = np.argmax(held['probabilities'], -1)
      assert np.mean(predicted == held['label']) == pytest.approx(fold['accuracy'])
      positions.extend(held['index'].tolist())
    # a fitted fold keeps no checkpoint: a rerun fits it again
    assert not os.listdir(workdir / f'fold_{fold["fold"]}' / 'checkpoints')
  assert sorted(positions) == list(range(len(labels)))  # every example held out once
