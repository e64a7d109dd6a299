"""The article's recipe: `seed_dcnn` on CIFAR-10, SGD lr 0.01 momentum 0.9, batch 32, 10 epochs.

Data: CIFAR-10 from its canonical archive (cifar-10-python.tar.gz, SHA-256 checked), fetched and
prepared into data/tfds/cifar10_fetched by the first run (dlearn/data/fetch.py; or beforehand with
`python -m dlearn.prepare --fetch=cifar10 --data_dir=data/tfds`): the official 50,000 training
images, the last 10% of each class carved into validation, the official test split kept.
  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py --workdir=workdirs/seed_dcnn
A one-minute CPU check of the same code path:
  python -m dlearn.main --config=experiments/configs/seed_dcnn_cifar10.py:smoke --workdir=workdirs/smoke
On a machine without internet, the JPEG copy of the training images in ../shared/data instead
(prepared as in the README): --config.data.name=cifar10_jpeg. On tfds' own build of CIFAR-10
(`tfds build cifar10 --file_format=array_record`):
  --config.data.name=cifar10 --config.data.data_dir=~/tensorflow_datasets \
  --config.data.train_split='train[:90%]' --config.data.eval_split='train[90%:]'

The article's recipe has no augmentation; it is off here to match.

On the JPEG copy (--config.data.name=cifar10_jpeg) it reaches 68.4% validation accuracy (5,000
images carved from train) after 10 epochs; it overfits after epoch 5 (70.3%). Measured 2026-11-26
on the project's 2-core CPU machine, one CPU device, 18 minutes (19 steps/s). Not yet run on the
fetched original (no internet on that machine).
"""

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  config.model = 'seed_dcnn'
  configs.use_cifar10_jpeg(config)
  config.data.name = 'cifar10_fetched'  # splits as cifar10_jpeg's: train, validation (+ test)
  config.batch_size = 32
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.num_epochs = 10
  config.data.augment = False
  config.log_every_steps = 200
  return configs.finish(config, arg)
