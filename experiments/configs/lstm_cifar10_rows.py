"""CIFAR-10 read as sequences (each image's 32 rows are 32 time steps of 96 features), classified
by an LSTM: the RNN counterpart of the article's CNN recipe.

  python -m dlearn.main --config=experiments/configs/lstm_cifar10_rows.py --workdir=workdirs/lstm_rows
Any cell: --config.rnn.cell=simple (the article's Elman cell) | lstm | gru;
stacked and bidirectional: --config.rnn.num_layers=2 --config.rnn.bidirectional=True

Reaches 58.0% validation accuracy (5,000 images carved from train) in 7 minutes on the project's
2-core CPU machine, one CPU device (2026-11-26).
"""

from dlearn import configs


def get_config(arg=None):
  config = configs.base()
  configs.use_cifar10_jpeg(config)  # see seed_dcnn_cifar10.py for preparing it
  config.model = 'rnn'
  config.rnn.cell = 'lstm'
  config.rnn.hidden_size = 256
  config.data.augment = False
  config.batch_size = 256
  config.optimizer = 'adamw'
  config.learning_rate = 2e-3
  config.weight_decay = 1e-4
  config.schedule = 'cosine'
  config.warmup_steps = 100
  config.num_epochs = 10
  return configs.finish(config, arg)
