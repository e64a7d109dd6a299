"""An RNN on a UEA/UCR time-series dataset prepared by `python -m dlearn.prepare`. Validation: the
last 10% of each class of the training file (the official test splits are held back).

  python -m dlearn.prepare --name=japanese_vowels \
      --train=../shared/data/JapaneseVowels_TRAIN.ts --data_dir=data/tfds
  python -m dlearn.main --config=experiments/configs/rnn_uea.py --workdir=workdirs/japanese_vowels

The config argument names the dataset (default japanese_vowels: 9 speakers, 12 LPC channels, 7-29
steps), e.g. `rnn_uea.py:basic_motions`, `rnn_uea.py:gun_point`, `rnn_uea.py:gun_point,smoke`.
Other cells: --config.rnn.cell=simple|lstm|gru.

Validation accuracy, 2026-11-26, the project's 2-core CPU machine, under a minute each:
JapaneseVowels 96.3% (26/27), BasicMotions 75.0% (3/4), GunPoint 80.0% (4/5). The carved
validation splits of the two small ones are 4 and 5 cases: one case is 20-25 points.
"""

from dlearn import configs

# The small ones need small batches to take enough steps: their train splits hold 36 and 45 cases.
DATASETS = {
  'japanese_vowels': dict(batch_size=32, num_epochs=60),
  'basic_motions': dict(batch_size=8, num_epochs=150),
  'gun_point': dict(batch_size=8, num_epochs=150),
}


def get_config(arg=None):
  names = [a for a in (arg or '').split(',') if a]
  dataset = next((a for a in names if a in DATASETS), 'japanese_vowels')
  config = configs.base()
  config.model = 'rnn'
  config.rnn.cell = 'lstm'
  config.rnn.hidden_size = 64
  config.rnn.bidirectional = True
  config.data.name = dataset
  config.data.data_dir = 'data/tfds'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.eval_batch_size = 64
  config.optimizer = 'adamw'
  config.learning_rate = 3e-3
  config.weight_decay = 1e-4
  config.schedule = 'cosine'
  config.warmup_steps = 20
  config.log_every_steps = 50
  config.eval_every_steps = 70  # epochs are a few steps long here
  config.checkpoint_every_steps = 140
  config.update(DATASETS[dataset])
  return configs.finish(config, ','.join(a for a in names if a != dataset))
