"""The article's recipe: `seed_dcnn` on CIFAR-10, SGD lr 0.01 momentum 0.9, batch 32, 10 epochs.

Train (every local device; validation is the last 10% of the training images):
  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py --workdir=/tmp/seed_dcnn
A one-minute CPU check of the same code path:
  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py:smoke --workdir=/tmp/smoke

The article's recipe has no augmentation; it is off here to match.
"""
from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  config.model = 'seed_dcnn'
  config.batch_size = 32
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.num_epochs = 10
  config.data.augment = False
  config.log_every_steps = 200
  return configs.finish(config, arg)
