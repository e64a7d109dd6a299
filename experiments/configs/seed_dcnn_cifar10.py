"""The article's recipe: `seed_dcnn` on CIFAR-10, SGD lr 0.01 momentum 0.9, batch 32, 10 epochs.

Data: the CIFAR-10 training images as JPEG (../shared/data), prepared once; the validation split
is the last 10% of each class, carved by `dlearn.prepare` (the test split is held back):
  python -m dlearn.prepare --name=cifar10_jpeg \
      --train=../shared/data/cifar10_jpeg_train.tar.gz --data_dir=data/tfds
Train on every local device:
  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py --workdir=workdirs/seed_dcnn
A one-minute CPU check of the same code path:
  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py:smoke --workdir=workdirs/smoke
On the tfds catalogue CIFAR-10 instead (`tfds build cifar10 --file_format=array_record`):
  --config.data.name=cifar10 --config.data.data_dir=~/tensorflow_datasets \
  --config.data.train_split='train[:90%]' --config.data.eval_split='train[90%:]'

The article's recipe has no augmentation; it is off here to match.

Reaches 68.4% validation accuracy (5,000 images carved from train) after 10 epochs; it overfits
after epoch 5 (70.3%). Measured 2026-11-26 on the project's 2-core CPU machine, one CPU device,
18 minutes (19 steps/s).
"""

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  config.model = 'seed_dcnn'
  configs.use_cifar10_jpeg(config)
  config.batch_size = 32
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.num_epochs = 10
  config.data.augment = False
  config.log_every_steps = 200
  return configs.finish(config, arg)
