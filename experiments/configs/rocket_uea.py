"""MiniRocket (or MultiRocket) for any UEA/UCR dataset prepared by `python -m dlearn.prepare` (or
fetched by name): 10,000 features of fixed dilated kernels (dlearn/models/minirocket.py), scaled by
their training standard deviations, and a ridge classifier fitted in closed form with its
regularisation chosen by leave-one-out error, as aeon's MiniRocketClassifier
(dlearn/models/rocket.py). No gradient steps: the run fits, evaluates and saves step 0.
MultiRocket (50,000 features): `--config.rocket.transform=multirocket
--config.rocket.num_features=50000`.

  python -m dlearn.main --config=experiments/configs/rocket_uea.py:GunPoint --workdir=workdirs/rocket_gun_point
  python -m dlearn.evaluate --workdir=workdirs/rocket_gun_point --split=validation

The argument is as rnn_uea.py's: a prepared name or a UEA/UCR archive name (fetched when
missing), optionally ',smoke' (840 features). For large data, a logistic head trained by the
ordinary dlearn step: `--config.rocket.head=logistic --config.num_epochs=100`.
"""

import ml_collections

from dlearn import configs
from dlearn.data import fetch


def get_config(arg=None):
  names = [a for a in (arg or '').split(',') if a]
  dataset = next((a for a in names if a != 'smoke'), 'japanese_vowels')
  config = configs.base()
  config.model = 'rocket'
  config.rocket = ml_collections.ConfigDict(
    {'transform': 'minirocket', 'num_features': 10_000, 'max_dilations': 32, 'head': 'ridge'}
  )
  config.data.name = fetch.prepared_name(dataset) if fetch.archive_name(dataset) else dataset
  config.data.data_dir = 'data/tfds'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # MiniRocket's reference takes the series as they are (the UCR ones are z-normalised already).
  config.data.standardize = 'train_split'
  config.data.augment = False
  config.batch_size = 0  # from the data
  config.eval_batch_size = 64
  config.optimizer = 'adamw'
  config.learning_rate = 1e-3
  config.schedule = 'constant'
  config.num_epochs = 0  # the ridge head is fitted when the run starts
  config.write_plots = False
  if 'smoke' in names:
    config.rocket.num_features = 840
  return configs.finish(config, None)
