"""A ResNet-18-style CNN with BatchNorm (statistics synchronised over every device) on CIFAR-10:
SGD with Nesterov momentum, cosine schedule, weight decay, crop-and-flip augmentation.

  python -m dlearn.main --config=experiments/configs/resnet_cifar10.py --workdir=workdirs/resnet
Narrower and shorter, for a CPU:
  python -m dlearn.main --config=experiments/configs/resnet_cifar10.py --workdir=workdirs/resnet_w16 \
      --config.resnet.width=16 --config.num_epochs=6
reaches 78.6% validation accuracy (5,000 images carved from train) in 22 minutes on the project's
2-core CPU machine, one CPU device (2026-11-26). The full width was not run on a CPU.
"""

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  configs.use_cifar10_jpeg(config)  # see seed_dcnn_cifar10.py for preparing it
  config.model = 'resnet'
  config.resnet.stage_sizes = (2, 2, 2, 2)
  config.resnet.width = 64
  config.batch_size = 256
  config.learning_rate = 0.2
  config.nesterov = True
  config.weight_decay = 5e-4
  config.schedule = 'cosine'
  config.warmup_steps = 200
  config.label_smoothing = 0.1
  config.num_epochs = 30
  if arg == 'smoke':  # a ResNet small enough for a CPU minute
    config.resnet.stage_sizes, config.resnet.width = (1, 1), 8
  return configs.finish(config, arg)
