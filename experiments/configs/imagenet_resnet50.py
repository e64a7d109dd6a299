"""ResNet-50 v1.5 on ImageNet-class data, the field's standard recipe (Goyal et al. 2017; the Flax
ImageNet example): SGD with momentum 0.9 at 0.1 x batch/256, 5 epochs of linear warm-up then cosine
decay, weight decay 1e-4 on every parameter, 100 epochs, batch 1,024 over every device;
random-resized 224x224 crops and flips decoded on the host (the encoded store), evaluation's
0.875 centre crop; BatchNorm synchronised over the devices.

  python -m dlearn.prepare --name=imagenet --train=/data/imagenet/train --validation=/data/imagenet/val --data_dir=data/tfds
  python -m dlearn.main --config=experiments/configs/imagenet_resnet50.py --workdir=workdirs/resnet50
  python -m dlearn.main --config=experiments/configs/imagenet_resnet50.py:smoke --workdir=workdirs/resnet50_smoke

(`--config.data.name=imagenet2012` reads tfds' own build instead; any prepared image dataset
works.) The reference: the Flax example reaches 76.5% top-1 on ImageNet's validation set in 2.1
hours on a TPU v3-32 (its README). Not run here: no ImageNet and no accelerator on this project's
machines. `:smoke` is 20 steps of a narrow ResNet-50 (width 8) on the CIFAR-10 JPEG data (prepared as
in the README).

`:cifar10` is the same network, unchanged (ImageNet's stem on 32x32 images), on the CIFAR-10 JPEG
data for as long as this project's CPU allows: batch 128, SGD 0.1 with Nesterov momentum, weight
decay 5e-4, label smoothing 0.1, 100 steps of warm-up, cosine over 2 epochs:
  python -m dlearn.main --config=experiments/configs/imagenet_resnet50.py:cifar10 --workdir=workdirs/resnet50_cifar10
reached 37.9% validation accuracy after epoch 1 and 49.8% after epoch 2 (5,000 images carved from
train), 53 minutes on the project's 2-core CPU machine (one CPU device, 0.2-0.3 steps/s, other jobs
beside it), 2026-12-02: a check that the recipe learns, not a CIFAR-10 result.
"""

import ml_collections

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  config.model = 'resnet50'
  config.imagenet_resnet = ml_collections.ConfigDict(
    {'stage_sizes': (3, 4, 6, 3), 'width': 64, 'zero_init_last_norm': True}
  )
  configs.use_imagenet(config)
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.optimizer = 'sgd'
  config.learning_rate = 0.1 * config.batch_size / 256
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4
  config.schedule = 'cosine'
  config.warmup_steps = 5 * configs.IMAGENET_TRAIN_IMAGES // config.batch_size  # 5 epochs
  config.num_epochs = 100
  config.log_every_steps = 100
  if arg == 'cifar10':  # the same network on 32x32 images, as run on this project's CPU
    configs.use_cifar10_jpeg(config)
    config.batch_size, config.eval_batch_size = 128, 500
    config.learning_rate = 0.1
    config.weight_decay = 5e-4
    config.label_smoothing = 0.1
    config.warmup_steps = 100
    config.num_epochs = 2
    config.log_every_steps = 50
  if arg == 'smoke':
    configs.use_cifar10_jpeg(config)
    config.imagenet_resnet.width = 8
    config.warmup_steps = 5
  return configs.finish(config, None if arg == 'cifar10' else arg)
