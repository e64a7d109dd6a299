"""ViT-S/16 on ImageNet-class data, DeiT's recipe (Touvron et al. 2021) as far as dlearn has it:
AdamW at 5e-4 x batch/512, weight decay 0.05 on the matrices only, 5 epochs of warm-up then
cosine decay, 300 epochs, batch 1,024, label smoothing 0.1, mixup 0.8 and CutMix 1.0 (one of the
two per batch), random-resized 224x224 crops and flips decoded on the host.

  python -m dlearn.main --config=experiments/configs/imagenet_vit.py --workdir=workdirs/vit_s16
  python -m dlearn.main --config=experiments/configs/imagenet_vit.py:smoke --workdir=workdirs/vit_smoke

DeiT reports 79.8% top-1 for this model (DeiT-S) with its whole recipe, which also has
RandAugment, random erasing, repeated augmentation and stochastic depth (0.1): dlearn has none of
these yet, so expect less. Not run here: no ImageNet and no accelerator on this project's
machines. `:smoke` is 20 steps of a ViT-Ti with 8x8 patches on the CIFAR-10 JPEG data.

`:cifar10` is ViT-S with 8x8 patches (16 tokens) on the CIFAR-10 JPEG data for as long as this
project's CPU allows: batch 128, AdamW 1e-3, 100 steps of warm-up, cosine over 2 epochs, no
mixing:
  python -m dlearn.main --config=experiments/configs/imagenet_vit.py:cifar10 --workdir=workdirs/vit_s8_cifar10
reached 23.6% validation accuracy after epoch 1 and 26.7% after epoch 2 (5,000 images carved from
train), 74 minutes on the project's 2-core CPU machine (one CPU device, 0.1-0.2 steps/s with the
test suite beside it), 2026-12-02: a ViT from scratch on 45,000 small images in two epochs learns
slowly, as expected; a check that the recipe trains, not a CIFAR-10 result.
"""

import ml_collections

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  config.model = 'vit'
  config.vit = ml_collections.ConfigDict({'size': 'S', 'patch': 16, 'pool': 'token'})
  configs.use_imagenet(config)
  config.data.mixup_alpha, config.data.cutmix_alpha = 0.8, 1.0
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.optimizer = 'adamw'
  config.learning_rate = 5e-4 * config.batch_size / 512
  config.weight_decay = 0.05
  config.weight_decay_mask = 'matrices'
  config.schedule = 'cosine'
  config.warmup_steps = 5 * configs.IMAGENET_TRAIN_IMAGES // config.batch_size  # 5 epochs
  config.label_smoothing = 0.1
  config.num_epochs = 300
  config.log_every_steps = 100
  if arg == 'cifar10':  # ViT-S on 32x32 images in 8x8 patches (16 tokens), as run on this CPU
    configs.use_cifar10_jpeg(config)
    config.vit.patch = 8
    config.data.mixup_alpha, config.data.cutmix_alpha = 0.0, 0.0
    config.batch_size, config.eval_batch_size = 128, 500
    config.learning_rate = 1e-3
    config.warmup_steps = 100
    config.num_epochs = 2
    config.log_every_steps = 50
  if arg == 'smoke':
    configs.use_cifar10_jpeg(config)
    config.vit.size, config.vit.patch = 'Ti', 8
    config.warmup_steps = 5
  return configs.finish(config, None if arg == 'cifar10' else arg)
