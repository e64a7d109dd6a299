"""Defaults shared by every experiment config, and the `smoke` shrink for a quick CPU run.

An experiment file in experiments/configs/ starts from `base()`, sets what it varies, and ends with
`return configs.finish(config, arg)`, so that `--config=experiments/configs/X.py:smoke` runs the
same experiment in a minute on a laptop CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os

import ml_collections

from dlearn.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN_IMAGES = 1_281_167


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = 'seed_dcnn'  # a name in dlearn.models' registry: 'seed_dcnn' | 'resnet' | 'rnn'
  config.resnet = ml_collections.ConfigDict({'stage_sizes': (2, 2, 2, 2), 'width': 64})
  config.rnn = ml_collections.ConfigDict(
    {
      'cell': 'lstm',
      'hidden_size': 128,
      'num_layers': 1,
      'bidirectional': False,
      'unroll': 1,
      'implementation': 'scan',
      # The convolutional branch over time beside the recurrent layers (LSTM-FCN; num_layers=0:
      # the convolutions alone, FCN): filters and kernel size of each (conv, BatchNorm, ReLU).
      'conv_filters': (),
      'conv_kernels': (8, 5, 3),
    }
  )
  # The fast CIFAR-10 recipe (airbench94; experiments/configs/fast_cifar10.py, dlearn/models/
  # fast_cnn.py and its optimizer 'fast_cnn' in dlearn/optimizers.py).
  config.fast_cnn = ml_collections.ConfigDict(
    {
      'widths': (64, 256, 256),
      'sync_batch_norm': True,  # False: each device's own statistics (250 images at 2000 on 8)
      'translate': 2,  # pixels, with reflected edges
      'whitening_images': 5000,  # the first training images, for the whitening layer
      'whitening_eps': 5e-4,
      'tta_level': 2,  # evaluation: 0 none, 1 flip, 2 flip and 1-pixel translations
      'whitening_bias_epochs': 3,  # the whitening bias trains for these first epochs only
      'filter_lr': 0.24,  # Muon, for the convolution filters
      'filter_momentum': 0.6,
      'bias_lr': 0.053,  # Nesterov SGD for the BatchNorm and whitening biases
      'head_lr': 0.67,  # ... and for the head
      'sgd_momentum': 0.85,
      'weight_decay': 2e-6,  # per example of the batch (the reference's 2e-6 x batch size)
      'muon_dtype': 'float32',  # of the Newton-Schulz iteration; the reference uses bfloat16
    }
  )
  # unroll: time steps per loop iteration of the scan (speed only). implementation: 'scan', or
  # 'cudnn' for float32 LSTMs on a GPU (JAX's cuDNN kernel; same parameters, same results).

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'  # any tfds name, or a dataset prepared by `python -m dlearn.prepare`
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS_DATA_DIR
  # Test splits are held back: model selection uses validation carved from train.
  config.data.train_split = 'train[:90%]'
  config.data.eval_split = 'train[90%:]'
  # Cross-validation (`python -m dlearn.cross_validate`): folds = k > 0 cuts train_split into k
  # folds stratified by class (seeded by config.seed); the run trains on all but fold `fold` and
  # evaluates on it, and eval_split is not read. 0: off.
  config.data.folds = 0
  config.data.fold = 0
  config.data.max_length = ml_collections.FieldReference(None, field_type=int)  # sequences only
  # Sequences: 'train_split' standardises each channel with the train split's mean and std (stored
  # by dlearn.prepare); 'each_case' z-normalises each channel of each case over its own steps, as
  # the UCR archive's series are (Dau et al. 2019) and dl-4-tsc does for those that are not;
  # 'auto': 'each_case' for univariate data, 'train_split' for multivariate (where a channel's
  # level can tell the classes apart, as in the UEA archive, which is not z-normalised).
  config.data.standardize = 'train_split'
  config.data.mean = CIFAR10_MEAN
  config.data.std = CIFAR10_STD
  config.data.augment = True  # random crop with zero padding, and horizontal flip
  # Sequences, in training (with data.augment; Um et al. 2017): Gaussian jitter of this std (in
  # standardised units), each channel of each example scaled by a factor of mean 1 and this std,
  # and a random window of this fraction of each sequence's length (1: the whole sequence).
  config.data.jitter = 0.0
  config.data.scaling = 0.0
  config.data.window_slice = 1.0
  config.data.crop_padding = 4
  # Images, in training: mixup and CutMix (each example with the batch's reverse, one
  # Beta(alpha, alpha) ratio a batch, one of the two a batch when both are set; timm's defaults
  # for DeiT: 0.8 and 1.0), on the device, with soft targets. 0: off.
  config.data.mixup_alpha = 0.0
  config.data.cutmix_alpha = 0.0
  # Images of the encoded store (`dlearn.prepare --store=encoded`, tfds' imagenet2012): decoded,
  # cropped and resized to image_size x image_size on the host, in worker processes
  # (dlearn/data/image_codec.py). Training: a random-resized crop of crop_scale of the area and
  # crop_ratio (width/height), then a flip ('center': evaluation's crop, no flip; data.augment
  # False does the same); evaluation: a centre crop of center_crop_fraction of the shorter side.
  config.data.image_size = 224
  config.data.train_crop = 'random_resized'
  config.data.crop_scale = (0.08, 1.0)
  config.data.crop_ratio = (3 / 4, 4 / 3)
  config.data.center_crop_fraction = 0.875
  # Processes making the host's batches (grain's worker processes); 0: threads of this process;
  # -1: one per CPU core for encoded images, 0 for arrays.
  config.data.worker_count = -1
  # True: the whole train split resident on the devices (each holds a shard; the remainder that the
  # devices do not divide is dropped), batches drawn and augmented inside the compiled step, no
  # host transfer per step. Refused if it takes more than half a device's memory. Evaluation
  # always streams from the host.
  config.data.on_device = False

  # 'bfloat16': mixed precision, computing in bf16 with float32 parameters, optimizer state,
  # normalisation statistics and loss.
  config.dtype = 'float32'
  # True: the CNNs use XLA's own max pooling and convolution gradient instead of the CPU-fast
  # versions in dlearn/models/layers.py (same numbers; experiments/benchmarks/suite.py compares).
  config.plain_layers = False
  # How the step runs on every device (dlearn/parallel.py): 'jit', one step over global arrays,
  # the state placed by config.sharding and the collectives XLA's; 'pmap' or 'shard_map', the
  # article's per-device step with lax.pmean over the devices (a replicated state).
  config.mapping = 'jit'
  # Where the train state lives (dlearn/sharding.py): 'replicate', a copy on every device; 'fsdp',
  # each array of at least fsdp_min_size_mib split over the devices (config.mapping='jit').
  config.sharding = 'replicate'
  config.fsdp_min_size_mib = 0.0625  # 64 KiB: BatchNorm vectors and biases stay whole
  # K train steps per dispatch, in a lax.scan on the device: less launch and Python overhead for
  # small models. The steps before a log/eval/checkpoint boundary (or the end) that is not a
  # multiple of K run one per dispatch, so any interval works; multiples of K are fastest.
  config.steps_per_dispatch = 1
  # True: the K steps compiled as straight-line code (the scan unrolled; compile time grows with
  # K). False: one loop over them, compiled once. XLA:CPU runs convolution steps inside a loop
  # much slower than unrolled; an LSTM (already a loop over time) runs as fast either way
  # (experiments/benchmarks/epoch_time.py measures it; README, "Fast paths").
  config.unroll_dispatch = True
  # Examples split across devices (the article's distributed networks): with parts > 1 the
  # devices form groups of `parts`, each group sharing its examples — a CNN's images in bands of
  # rows, an RNN's sequences in time chunks run as a pipeline of `micro_batches` micro-batches —
  # and the groups are data-parallel. Needs mapping='shard_map'. README: "Splitting one example".
  config.partition = ml_collections.ConfigDict({'parts': 1, 'micro_batches': 1})
  config.batch_size = 128  # global, over every device of every process; 0: from the data
  # (train.derived_batch_size: a tenth of the train split, at most 16)
  config.eval_batch_size = 512
  config.optimizer = 'sgd'  # 'sgd' | 'adamw'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 0.0
  # 'all': every parameter decays; 'matrices': kernels only (not norms, biases, embeddings).
  config.weight_decay_mask = 'all'
  config.grad_clip_norm = 0.0  # > 0: gradients clipped to this global norm (any optimizer)
  config.schedule = 'constant'  # 'constant' | 'cosine'
  config.warmup_steps = 0
  config.label_smoothing = 0.0
  # 'mean': each step minimises the mean loss over the global batch; 'sum': the summed loss (the
  # gradient is then the sum over devices of each device's summed loss).
  config.loss_reduction = 'mean'
  config.num_epochs = 10.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.max_train_steps = -1  # > 0: num_epochs' steps, but at most this many
  # > 0: stop after a checkpoint once the loop has run this long, or once its pace says it would
  # (rerun to resume), as a signal stops it; the time budget of dlearn.ensemble's members. A run
  # of no steps (a fit) is not stopped.
  config.max_train_seconds = 0.0
  # Above num_epochs: a dlearn.ensemble member trains as many epochs as its share of the budget
  # affords, from num_epochs up to this many (HIVE-COTE 2's contracted members); other commands
  # train num_epochs.
  config.max_num_epochs = 0.0
  config.eval_every_steps = -1  # -1: once per epoch, and at the end
  config.log_every_steps = 100
  config.checkpoint_every_steps = -1  # -1: once per epoch, and at the end
  config.max_checkpoints_to_keep = 3  # the newest ones...
  config.best_checkpoint_metric = ''  # ...and, e.g. 'eval/accuracy', the best by this metric
  config.fresh = False  # True: discard the work directory's checkpoints and metrics first
  config.init_from = ''  # a work directory whose newest parameters start this run (step 0)
  config.skip_nonfinite_steps = False  # False: a non-finite loss or gradient stops the run
  config.seed = 0
  # > 1: that many models from different draws, trained at once and averaged at evaluation.
  config.ensemble_size = 1
  config.write_plots = True  # curves.png in the work directory at the end
  return config


def use_cifar10_jpeg(config: ml_collections.ConfigDict) -> None:
  """The CIFAR-10 JPEG training images as prepared by `python -m dlearn.prepare` (README):
  'train' (45,000) and 'validation' (the last 10% of each class, 5,000)."""
  config.data.name = 'cifar10_jpeg'
  config.data.data_dir = 'data/tfds'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'


def use_imagenet(config: ml_collections.ConfigDict) -> None:
  """ImageNet as `dlearn.prepare --name=imagenet` writes it from the train and val folders
  (encoded store) into data/tfds, normalised with its own statistics, 224x224 crops."""
  config.data.name, config.data.data_dir = 'imagenet', 'data/tfds'
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
  config.data.image_size = 224


def dataset_and_options(arg: str | None, options, default: str) -> tuple[str, list[str]]:
  """(dataset, options) of an experiment config's argument `DATASET,OPTION,...` (in any order):
  the words in `options` are options, the one other word names the dataset (`default` without
  one). Two other words are an error rather than one of them ignored."""
  words = [w for w in (arg or '').split(',') if w]
  others = [w for w in words if w not in options]
  if len(others) > 1:
    raise ConfigError(
      f'config argument {arg!r}: {others[0]!r} and {others[1]!r} cannot both name the dataset: '
      f'give one dataset name and options from {", ".join(options)}.'
    )
  return (others[0] if others else default), [w for w in words if w in options]


def finish(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the config-file argument: '' for the experiment as written, 'smoke' for a run of a
  few steps with small batches (the real code path, on a laptop CPU)."""
  if arg == 'smoke':
    config.batch_size = 16  # small enough for the smallest train split (36 cases)
    config.eval_batch_size = 32
    config.num_train_steps = 20
    config.log_every_steps = 5
  elif arg:
    raise ConfigError(f"Unknown config argument {arg!r}: use ':smoke' or nothing.")
  return config


def _known(saved: dict, defaults: ml_collections.ConfigDict, prefix: str = '') -> dict:
  """`saved` without the fields `defaults` does not have (written by an older dlearn), except a
  whole top-level section: a plug-in model's own settings (e.g. `config.my_model`, set by its
  experiment config), which its family reads again at evaluation, prediction and export."""
  known = {}
  for key, value in saved.items():
    if key not in defaults and not prefix and isinstance(value, dict):
      known[key] = ml_collections.ConfigDict(value)
    elif key not in defaults:
      logging.warning(
        'Ignoring config field %s%s, which this version of dlearn does not have.', prefix, key
      )
    elif isinstance(value, dict) and isinstance(defaults[key], ml_collections.ConfigDict):
      known[key] = _known(value, defaults[key], f'{prefix}{key}.')
    else:
      known[key] = value
  return known


def from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A config as written to a work directory's config.json, read back on top of `base()`: every
  field exists, with its default where the saved config predates it."""
  config = base()
  known = _known(saved, config)
  for key in [key for key in known if key not in config]:
    config[key] = known.pop(key)  # update() sets only fields the config has
  config.update(known)
  return config


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of an experiment config file, as `--config=PATH:ARG` gives it."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def load(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config of the run in `workdir` (its config.json), on top of `base()`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: --workdir must be the work directory of a training run.'
    )
  with open(path) as f:
    return from_dict(json.load(f))


def program_key(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """`config` as the programs of a run see it: a cross-validation's runs differ only in the fold
  they hold out (config.data.fold), which no program reads."""
  program = config.copy_and_resolve_references()
  program.data.fold = 0
  return ml_collections.FrozenConfigDict(program)


def per_program(make):
  """`make(config, *args)`, made once for the runs of one program in a process (`program_key`,
  and `args`), so that the runs of a cross-validation or an ensemble share what it compiles
  (traced and loaded once); made for each call where config or args cannot be hashed."""
  shared = functools.lru_cache(maxsize=16)(make)

  @functools.wraps(make)
  def get(config, *args):
    try:
      key = program_key(config)
      hash((key, *args))
    except TypeError:  # e.g. a model with unhashable static attributes (lists)
      return make(config, *args)
    return shared(key, *args)

  return get


def override(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Sets {'section.field': value} in `config`; a field it does not have is a ValueError."""
  for path, value in values.items():
    *sections, name = path.split('.')
    parent = config
    for section in sections:
      parent = parent.get(section) if isinstance(parent, ml_collections.ConfigDict) else None
    if not isinstance(parent, ml_collections.ConfigDict) or name not in parent:
      raise ConfigError(
        f'The config has no field {path!r}: the fields are those of dlearn/configs.py:base().'
      )
    try:
      parent[name] = value
    except TypeError as e:
      raise ConfigError(f'Config field {path!r} cannot take {value!r}: {e}') from e
  return config
