"""MultiRocket-Hydra for any UEA/UCR dataset prepared by `python -m dlearn.prepare` (or fetched by
name): MultiRocket's features of fixed dilated kernels on each series and its first difference
(dlearn/models/multirocket.py; 49,728, as aeon's) and Hydra's competing-kernel
counts (hydra.py), scaled as aeon's MultiRocketHydraClassifier scales them, and a ridge
classifier fitted in closed form with its regularisation chosen by leave-one-out error
(dlearn/models/rocket.py). No gradient steps: the run fits, evaluates and saves step 0.
MiniRocket alone (10,000 features, aeon's MiniRocketClassifier): `rocket_uea.py:NAME,minirocket`;
MultiRocket's paper's smaller variant beside Hydra's (9,408; faster on long series, less accurate
on larger data): `--config.rocket.num_features=10000`.

  python -m dlearn.main --config=experiments/configs/rocket_uea.py:GunPoint --workdir=workdirs/rocket_gun_point
  python -m dlearn.evaluate --workdir=workdirs/rocket_gun_point --split=validation

The argument is as rnn_uea.py's: a prepared name or a UEA/UCR archive name (fetched when
missing), optionally with a transform (`:gun_point,multirocket_hydra`; minirocket, multirocket,
hydra, multirocket_hydra) and ',smoke' (fewer features). For large data, a logistic head trained by the
ordinary dlearn step: `--config.rocket.head=logistic --config.num_epochs=100` (the ridge's fit
refuses, before reading any case, data whose features it could not hold in memory).
"""

import ml_collections

from dlearn import configs
from dlearn.data import fetch
from dlearn.errors import ConfigError
from dlearn.models import rocket

# The references' sizes: MiniRocket's 10,000 features; MultiRocket's 50,000, beside Hydra's too
# (aeon's MultiRocketHydraClassifier, the bake-off's); Hydra's own depend on the length (512 per
# dilation and series). MultiRocket's smaller variant (10,000) was as accurate on the small
# training files but fell below MiniRocket on a larger one, where the 50,000 stayed above it
# (README, the bullet "Back to MultiRocket's 50,000").
FEATURES = {'minirocket': 10_000, 'multirocket': 50_000, 'hydra': 0, 'multirocket_hydra': 50_000}


def get_config(arg=None):
  dataset, names = configs.dataset_and_options(
    arg, (*rocket.TRANSFORMS, 'smoke'), 'japanese_vowels'
  )
  transforms = [a for a in names if a in rocket.TRANSFORMS]
  if len(transforms) > 1:
    raise ConfigError(
      f'config argument {arg!r}: give one transform, not {" and ".join(transforms)}.'
    )
  # MultiRocket-Hydra: 5-fold accuracy >= MiniRocket's on each of the three training files (README)
  transform = transforms[0] if transforms else 'multirocket_hydra'
  config = configs.base()
  config.model = 'rocket'
  config.rocket = ml_collections.ConfigDict(
    {
      'transform': transform,
      'num_features': FEATURES[transform],
      'max_dilations': 32,
      'head': 'ridge',
    }
  )
  config.data.name = fetch.prepared_name(dataset) if fetch.archive_name(dataset) else dataset
  config.data.data_dir = 'data/tfds'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # MiniRocket's reference takes the series as they are (the UCR ones are z-normalised already).
  config.data.standardize = 'train_split'
  config.data.augment = False
  config.batch_size = 0  # from the data
  # the transform's cost is per case: small batches pad less of a small evaluation split
  config.eval_batch_size = 16
  # the logistic head's (the ridge takes no steps): at 1e-3 its k-fold accuracy was several
  # points lower, its losses several times higher (README)
  config.optimizer = 'adamw'
  config.learning_rate = 1e-4
  config.schedule = 'constant'
  config.num_epochs = 0  # the ridge head is fitted when the run starts
  config.write_plots = False
  if 'smoke' in names:
    config.rocket.num_features = 840 if transform == 'minirocket' else 1344
  return configs.finish(config, None)
