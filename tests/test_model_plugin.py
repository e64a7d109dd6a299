"""A model plugs in without touching the trainer: a tiny family defined here, registered, trains,
resumes and evaluates through the ordinary entry points."""

import json
import os

import helpers
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dlearn import configs, evaluation, exporting, models, parallel, prediction, train
from dlearn.models.family import ModelFamily, image_inputs


class TinyLinear(nnx.Module):
  def __init__(self, num_classes, image_shape, *, rngs):
    self.dense = nnx.Linear(int(np.prod(image_shape)), num_classes, rngs=rngs)
    # Computed from training data by the family (as a whitening layer would be): the mean image.
    self.mean = nnx.BatchStat(jax.numpy.zeros(image_shape))

  def __call__(self, x, *, train):
    del train
    return self.dense((x - self.mean[...]).reshape(x.shape[0], -1))


class TinyFamily(ModelFamily):
  """Overrides inputs (no augmentation, ever), evaluation (the mean of the image and its flip)
  and the data-dependent initialisation."""

  def __init__(self):
    self.inputs_calls = []

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    return TinyLinear(num_classes, input_shape, rngs=rngs)

  def inputs(self, batch, config, info, *, rng, run_rng, train, epoch):
    self.inputs_calls.append(train)
    return (image_inputs(batch['image'], config, info, rng, train=False),)

  def logits(self, model, inputs, config, *, train):
    (x,) = inputs
    # The family's own config section, which must survive config.json for evaluation.
    scale = config.tiny_linear.logit_scale
    if train:
      return scale * model(x, train=True)
    return scale * (model(x, train=False) + model(x[:, :, ::-1], train=False)) / 2

  def init_from_data(self, model, config, source, info):
    images = np.stack([source[i]['image'] for i in range(len(source))]).astype(np.float32)
    normalised = (images / 255 - np.float32(config.data.mean)) / np.float32(config.data.std)
    model.mean[...] = normalised.mean(axis=0)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return helpers.prepared_images(tmp_path_factory.mktemp('data'))


@pytest.fixture
def tiny():
  family = TinyFamily()
  models.register('tiny_linear', family)
  return family


def _config(data_dir, **overrides):
  config = configs.base()
  config.model = 'tiny_linear'
  config.data.name, config.data.data_dir = 'toy_images', data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.batch_size, config.eval_batch_size = 16, 16
  config.num_train_steps, config.log_every_steps = 12, 4
  config.learning_rate, config.write_plots = 0.05, False
  config.tiny_linear = ml_collections.ConfigDict({'logit_scale': 2.0})
  config.update(overrides)
  return config


@pytest.mark.slow
def test_a_registered_model_trains_resumes_and_evaluates(tmp_path, data_dir, tiny):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(data_dir, num_train_steps=6), workdir)
  result = train.train_and_evaluate(_config(data_dir), workdir)  # resumes at 6
  assert int(result['state'].step) == 12
  assert result['eval']['count'] == 12 and result['eval']['accuracy'] > 0.5
  assert True in tiny.inputs_calls and False in tiny.inputs_calls
  # The data-dependent value is in the checkpoint: evaluation restores it, not a fresh zero.
  mean = jax.device_get(result['state'].model_state['mean'][...])
  assert np.abs(mean).sum() > 0
  summary, _, _, _ = evaluation.evaluate_workdir(workdir)
  assert summary == pytest.approx(result['eval'])
  # The plug-in's config section came back from config.json: predict and export read it too.
  assert configs.load(workdir).tiny_linear.logit_scale == 2.0
  predicted = prediction.predict(workdir, None, str(tmp_path / 'p.csv'), split='validation')
  assert predicted['summary'] == pytest.approx(result['eval'])
  function, specs, _ = exporting.exported_function(workdir)
  assert function(np.zeros((1, *specs[0].shape[1:]), np.uint8)).shape == (1, 3)


@pytest.mark.slow
def test_the_first_progress_line_after_a_resume_has_a_real_rate(tmp_path, data_dir, tiny):
  # Resumed at 3 with a log every step: the first dispatch is itself a log step, which the loop
  # times without its compilation (compiled ahead), so the rate is real, not 0.
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(data_dir, num_train_steps=3, log_every_steps=1), workdir)
  train.train_and_evaluate(_config(data_dir, num_train_steps=5, log_every_steps=1), workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rates = {
      r['step']: r['train/steps_per_second'] for r in map(json.loads, f) if 'train/loss' in r
    }
  assert sorted(rates) == [1, 2, 3, 4, 5]
  assert rates[1] > 0 and rates[4] > 0


def test_a_model_that_cannot_split_examples_says_so(data_dir, tiny):
  config = _config(data_dir, mapping='shard_map')
  config.partition.parts = 2
  info = helpers.IMAGES
  with pytest.raises(ValueError, match="config.model='tiny_linear' cannot split examples"):
    train.check_partition(config, info, parallel.make_mesh(parts=2))


def test_an_unknown_model_names_the_registered_ones(tmp_path, data_dir):
  with pytest.raises(ValueError, match=r"Unknown config.model 'tiny_lin'.*'seed_dcnn'"):
    train.train_and_evaluate(_config(data_dir, model='tiny_lin'), str(tmp_path / 'run'))


def test_a_saved_config_keeps_a_plug_in_section_and_drops_retired_fields():
  saved = configs.base().to_dict()
  saved['tiny_linear'] = {'logit_scale': 3.0, 'widths': [4, 8]}
  saved['retired_flag'] = True  # a field an older dlearn wrote: ignored
  saved['data']['retired_field'] = 1
  config = configs.from_dict(saved)
  assert config.tiny_linear.logit_scale == 3.0 and list(config.tiny_linear.widths) == [4, 8]
  assert 'retired_flag' not in config and 'retired_field' not in config.data
  configs.override(config, {'tiny_linear.logit_scale': 0.5})  # --set reaches it
  assert config.tiny_linear.logit_scale == 0.5
