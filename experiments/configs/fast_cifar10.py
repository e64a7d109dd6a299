"""The fast CIFAR-10 recipe: airbench94 (Keller Jordan, arXiv 2404.00498; reference
../shared/peers/airbench/airbench94_muon.py) as a dlearn model and experiment, data-parallel on
every device.

FastCNN (dlearn/models/fast_cnn.py: a frozen 2x2 whitening convolution, three conv groups of
64/256/256, BatchNorm without scale), Muon for the convolution filters and Nesterov SGD for the
biases and head (dlearn/optimizers.py, 'fast_cnn'), label smoothing 0.2, the loss summed over the
batch, batch 2000, 8 epochs, alternating flips and 2-pixel reflected translations, the train split
resident on the devices, test-time augmentation at evaluation (config.fast_cnn.tta_level).

  python -m dlearn.prepare --name=cifar10_jpeg \
      --train=../shared/data/cifar10_jpeg_train.tar.gz --data_dir=data/tfds
  python -m dlearn.main --config=experiments/configs/fast_cifar10.py --workdir=workdirs/fast
  python -m dlearn.evaluate --workdir=workdirs/fast --split=validation
On all 50,000 training images, as the reference trains (evaluate on a test split prepared later):
  python -m dlearn.main --config=experiments/configs/fast_cifar10.py --workdir=workdirs/fast_all \
      --config.data.train_split=train+validation
A CPU minute on the same code path (narrow network):
  python -m dlearn.main --config=experiments/configs/fast_cifar10.py:smoke --workdir=workdirs/fast_smoke

Results: README, "Results".
"""

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  configs.use_cifar10_jpeg(config)
  config.model = 'fast_cnn'
  config.optimizer = 'fast_cnn'  # its settings: config.fast_cnn
  config.batch_size = 2000
  config.eval_batch_size = 2000
  config.num_epochs = 8
  config.label_smoothing = 0.2
  config.loss_reduction = 'sum'
  config.data.on_device = True
  config.steps_per_dispatch = 1
  config.log_every_steps = 11
  config.max_checkpoints_to_keep = 2
  if arg == 'smoke':
    config.fast_cnn.widths = (16, 32, 32)
    config.fast_cnn.whitening_images = 500
  config = configs.finish(config, arg)
  if arg == 'smoke':
    config.eval_batch_size = 256  # whole batches of the 5,000 validation images' TTA views
  return config
