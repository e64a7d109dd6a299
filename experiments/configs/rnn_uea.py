"""An RNN on a UEA/UCR time-series dataset prepared by `python -m dlearn.prepare` (default:
JapaneseVowels; 9 speakers, 12 LPC channels, 7-29 steps). Validation: the last 10% of each class of
the training file (the official test split is held back).

  python -m dlearn.prepare --name=japanese_vowels \\
      --train=../shared/data/JapaneseVowels_TRAIN.ts --data_dir=data/tfds
  python -m dlearn.main --config=experiments/configs/rnn_uea.py --workdir=workdirs/japanese_vowels

Other datasets: --config.data.name=basic_motions or gun_point (prepared the same way);
other cells: --config.rnn.cell=simple|lstm|gru.
"""
from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  config.model = 'rnn'
  config.rnn.cell = 'lstm'
  config.rnn.hidden_size = 64
  config.rnn.bidirectional = True
  config.data.name = 'japanese_vowels'
  config.data.data_dir = 'data/tfds'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.batch_size = 32
  config.eval_batch_size = 64
  config.optimizer = 'adamw'
  config.learning_rate = 3e-3
  config.weight_decay = 1e-4
  config.schedule = 'cosine'
  config.warmup_steps = 20
  config.num_epochs = 60
  config.log_every_steps = 50
  config.eval_every_steps = 70  # epochs are a few steps long here
  config.checkpoint_every_steps = 140
  return configs.finish(config, arg)
