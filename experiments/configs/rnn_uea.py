"""One recipe for any UEA/UCR time-series dataset prepared by `python -m dlearn.prepare`: an
ensemble of five FCNs (convolutions over time, Wang et al. 2017), every setting that depends on the
data derived from it (batch size from the number of cases, sequence length from the prepared data,
standardisation from the number of channels), the others fixed once, chosen by cross-validation on
training files only (README: an LSTM beside the convolutions, LSTM-FCN, did worse on every training
file it was cross-validated on).

  python -m dlearn.prepare --name=gun_point --train=../shared/data/GunPoint_TRAIN.ts \\
      --data_dir=data/tfds
  python -m dlearn.main --config=experiments/configs/rnn_uea.py:gun_point --workdir=workdirs/gun_point
  python -m dlearn.evaluate --workdir=workdirs/gun_point --split=validation

The config argument is the prepared dataset's name (default japanese_vowels), or a UEA/UCR
archive name (`rnn_uea.py:ArrowHead`, the same as `:arrow_head`), which training fetches and
prepares first when the data directory lacks it (dlearn/data/fetch.py); optionally with ',smoke'
(a few steps) or ',quick' (one FCN of 100 epochs, about a point below 1,000 epochs on
JapaneseVowels: README; as `dlearn.ensemble`'s member, as many epochs from 100 to 1,000 as its
share of the time budget affords). To train the final
model on the whole training file, as for a test split: `--config.data.train_split=train+validation`. To estimate accuracy on the training file:
`python -m dlearn.cross_validate --config=experiments/configs/rnn_uea.py:gun_point
--workdir=workdirs/cv_gun_point --folds=5`. LSTM-FCN (an LSTM of 64 units beside the
convolutions): `--config.rnn.num_layers=1`; the article's recurrent network alone:
`--config.rnn.num_layers=1 --config.rnn.conv_filters='()'` (Elman cell: `--config.rnn.cell=simple`).
"""

from dlearn import configs
from dlearn.data import fetch


def get_config(arg=None):
  dataset, names = configs.dataset_and_options(arg, ('smoke', 'quick'), 'japanese_vowels')
  config = configs.base()
  config.model = 'rnn'
  config.rnn.cell = 'lstm'
  config.rnn.hidden_size = 64
  config.rnn.bidirectional = False
  # No recurrent layer: an LSTM beside the convolutions lost 4 to 14 points of 5-fold accuracy on
  # ArrowHead and PickupGestureWiimoteZ and 0.8 on JapaneseVowels (README), and it is the slow part.
  config.rnn.num_layers = 0
  config.rnn.conv_filters = (128, 256, 128)  # FCN's (Wang et al. 2017)
  config.rnn.conv_kernels = (8, 5, 3)
  config.data.name = fetch.prepared_name(dataset) if fetch.archive_name(dataset) else dataset
  config.data.data_dir = 'data/tfds'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # Univariate cases z-normalised each on its own, multivariate ones by the train split's
  # statistics: on PickupGestureWiimoteZ (univariate, not z-normalised) each case's own
  # normalisation gained 4 points of 5-fold accuracy (8 at 300 epochs); on JapaneseVowels
  # (multivariate) it lost 7 to 22 points a fold (README).
  config.data.standardize = 'auto'
  config.batch_size = 0  # from the data: a tenth of the cases, at most 16
  # Five models averaged, as InceptionTime does (cross-validated for LSTM-FCNs on JapaneseVowels,
  # not yet for FCNs: README); one step trains all five, at 4-6x the cost of one model on a CPU
  # (ensemble_step.py): --config.ensemble_size=1.
  config.ensemble_size = 5
  config.eval_batch_size = 64
  config.optimizer = 'adamw'
  config.learning_rate = 1e-3
  config.weight_decay = 1e-4
  config.schedule = 'cosine'
  config.warmup_steps = 50
  # 1,000 epochs, not 300: ArrowHead's 29 training cases were still underfit after 300 (train
  # accuracy 98%, 5-fold 81.1% -> 86.4%); PickupGestureWiimoteZ unchanged (README).
  config.num_epochs = 1000
  config.max_train_steps = 20000  # large datasets: enough steps, in bounded time
  config.log_every_steps = 500
  config.eval_every_steps = 10**9  # at the end (the validation splits are a handful of cases)
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 1
  config.write_plots = False
  if 'quick' in names:
    config.ensemble_size, config.num_epochs = 1, 100
    config.max_num_epochs = 1000  # in dlearn.ensemble, where its share of the budget affords them
  return configs.finish(config, ','.join(a for a in names if a == 'smoke'))
