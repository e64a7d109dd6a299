"""The ROCKET family as a dlearn model (dlearn/models/rocket.py): the ridge head's leave-one-out
choice against refitting without each case, and the recipe (MiniRocket and MultiRocket) trained
in 0 steps, evaluated and read back."""

import importlib.util
import json
import os

import helpers
import numpy as np
import pytest

from dlearn import evaluation, train
from dlearn.models import rocket


@pytest.mark.parametrize('features', [30, 9])  # more features than cases (the Gram path), fewer
def test_leave_one_out_error_equals_refitting_without_each_case(features):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(14, features))
  labels = np.arange(14) % 3
  y = -np.ones((14, 3))
  y[np.arange(14), labels] = 1
  alphas = (0.01, 1.0, 100.0)

  def refit_error(alpha):
    errors = []
    for i in range(len(x)):
      keep = np.arange(len(x)) != i
      xm, ym = x[keep].mean(0), y[keep].mean(0)
      # ridge with an unpenalised intercept on the other cases, in its primal form
      kernel = np.linalg.solve(
        (x[keep] - xm).T @ (x[keep] - xm) + alpha * np.eye(x.shape[1]),
        (x[keep] - xm).T @ (y[keep] - ym),
      )
      errors.append(((x[i] - xm) @ kernel + ym - y[i]) ** 2)
    return np.mean(errors)

  refit = [refit_error(a) for a in alphas]
  kernel, bias, alpha = rocket.ridge_loo(x, labels, 3, alphas)
  assert alpha == alphas[int(np.argmin(refit))]
  xm, ym = x.mean(0), y.mean(0)
  expected = np.linalg.solve(
    (x - xm).T @ (x - xm) + alpha * np.eye(features), (x - xm).T @ (y - ym)
  )
  np.testing.assert_allclose(kernel, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bias, ym - xm @ expected, rtol=1e-4, atol=1e-5)


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
