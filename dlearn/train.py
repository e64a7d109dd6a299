"""Training and evaluation: the train state, the per-device step bodies, and the loop.

The step bodies are pure functions written for one device; `parallel.map_over_devices` runs them on
every device (pmap or jit of shard_map, by `config.mapping`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax import lax

from dlearn import checkpoint as checkpoint_lib
from dlearn import metrics as metrics_lib
from dlearn import models, parallel
from dlearn.data import augment, on_device, pipeline
from dlearn.models import pipelined_rnn

AXIS, PART_AXIS = parallel.AXIS, parallel.PART_AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  model_state: nnx.State  # everything of the model that is not a parameter: BatchNorm statistics
  opt_state: optax.OptState
  rng: jax.Array  # base key; a step folds in its number and the device index


# ----------------------------------------------------------------------------------------------
# Model, optimizer, state
# ----------------------------------------------------------------------------------------------
def model_input_shape(config, info: pipeline.DatasetInfo):
  if info.kind == 'image' and config.model == 'rnn':
    height, width, channels = info.example_shape
    return (height, width * channels)  # rows as time steps: 32x32x3 → 32 steps of 96
  if info.kind == 'sequence' and config.model != 'rnn':
    raise ValueError(
      f'config.model={config.model!r} takes images, but dataset '
      f'{info.name!r} holds sequences: use model "rnn".'
    )
  return info.example_shape


def create_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  warmup_steps = int(config.warmup_steps)
  if config.schedule == 'constant':
    schedule = optax.constant_schedule(config.learning_rate)
  elif config.schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
    )
  else:
    raise ValueError(f"Unknown config.schedule {config.schedule!r}: 'constant' or 'cosine'.")
  if config.optimizer == 'sgd':
    return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
    )
  if config.optimizer == 'adamw':
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  raise ValueError(f"Unknown config.optimizer {config.optimizer!r}: 'sgd' or 'adamw'.")


def abstract_train_state(config, info, tx):
  """(graphdef, state of shapes and dtypes only): the restore target of a checkpoint."""
  graphdef = None

  def create():
    nonlocal graphdef
    graphdef, state = create_train_state(config, info, tx)
    return state

  abstract_state = jax.eval_shape(create)
  return graphdef, abstract_state


def create_train_state(config, info: pipeline.DatasetInfo, tx):
  """(graphdef, state): the model's static structure, and its arrays with the optimizer's."""
  spatial = _parts(config) > 1 and config.model != 'rnn'
  model = models.create_model(
    config,
    num_classes=info.num_classes,
    input_shape=model_input_shape(config, info),
    axis_name=AXIS,
    seed=config.seed,
    space_axis=PART_AXIS if spatial else None,
  )
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=model_state,
    opt_state=tx.init(params),
    rng=jax.random.key_data(jax.random.key(config.seed + 1)),
  )
  return graphdef, state


# ----------------------------------------------------------------------------------------------
# Per-device step bodies
# ----------------------------------------------------------------------------------------------
def model_inputs(batch, config, info: pipeline.DatasetInfo, rng, train: bool):
  """The model's positional inputs for one device's batch."""
  if info.kind == 'sequence':
    return batch['sequence'], batch['length']
  images = batch['image']
  if train and config.data.augment:
    images = augment.random_crop_and_flip(rng, images, config.data.crop_padding)
  images = augment.normalize(images, config.data.mean, config.data.std)
  if config.model != 'rnn':
    return (images,)
  batch_size, height = images.shape[:2]
  return (images.reshape(batch_size, height, -1), jnp.full((batch_size,), height, jnp.int32))


def _parts(config) -> int:
  """How many devices share each example (config.partition.parts; 1: data parallelism only)."""
  return config.partition.parts if 'partition' in config else 1


def check_partition(config, info: pipeline.DatasetInfo, mesh):
  """Refuses, before anything is compiled, a partition the model cannot run."""
  parts = _parts(config)
  if parts == 1:
    return
  if config.mapping != 'shard_map':
    raise ValueError(
      f'config.partition.parts={parts} needs a 2-D device mesh, which only '
      "config.mapping='shard_map' runs: add --config.mapping=shard_map."
    )
  shape = model_input_shape(config, info)
  if config.model != 'rnn':
    models.check_spatial_parts(config, shape, parts)
    return
  for what in ('batch_size', 'eval_batch_size'):
    try:
      pipelined_rnn.check_time_parts(
        shape[0],
        parts,
        config.partition.micro_batches,
        parallel.per_device_batch_size(config[what], mesh, what),
      )
    except ValueError as e:
      raise ValueError(
        f'config.partition (parts={parts}, micro_batches='
        f'{config.partition.micro_batches}), config.{what}={config[what]}: {e}'
      ) from e


def apply_model(model, inputs, config, train: bool):
  """The model's logits from a device's whole examples. With config.partition.parts > 1 the device
  keeps only its part of each example (a band of image rows, or a chunk of time steps; taken
  here, after augmentation, which must see whole images) and the partitioned model combines the
  parts over PART_AXIS."""
  parts = _parts(config)
  if parts == 1:
    return model(*inputs, train=train)
  x, *rest = inputs
  size = x.shape[1] // parts  # rows of an image, or time steps of a sequence
  x = lax.dynamic_slice_in_dim(x, lax.axis_index(PART_AXIS) * size, size, axis=1)
  if config.model != 'rnn':
    return model(x, train=train)
  return pipelined_rnn.pipelined_logits(
    model, x, *rest, time_axis=PART_AXIS, micro_batches=config.partition.micro_batches
  )


def device_rng(base_key_data, step):
  """This device's key for this step: the step and the device index folded into the base key, so
  no two steps and no two devices draw the same augmentation or dropout. The devices that share
  examples (config.partition) draw the same: they augment the same images."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(base_key_data), step)
  return jax.random.fold_in(step_key, lax.axis_index(AXIS))


def _sums(logits, labels, per_example_loss, mask):
  """Metric sums over this device's examples, summed over all devices."""
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return lax.psum(
    {
      'loss_sum': jnp.sum(per_example_loss * mask),
      'correct': jnp.sum(correct * mask),
      'count': jnp.sum(mask),
    },
    AXIS,
  )


def _cross_entropy(logits, labels, label_smoothing: float):
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, *, graphdef, tx, config, info):
  """One optimisation step on one device's batch; gradients, BatchNorm statistics and metrics are
  averaged (or summed) over every device, so all devices leave with the same state."""
  inputs = model_inputs(batch, config, info, device_rng(state.rng, state.step), train=True)
  labels, mask = batch['label'], batch['mask']

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    # The loss in float32 also under bf16 (config.dtype).
    logits = apply_model(model, inputs, config, train=True).astype(jnp.float32)
    per_example = _cross_entropy(logits, labels, config.label_smoothing)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, (logits, per_example, nnx.split(model, nnx.Param, ...)[2])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, per_example, model_state)), grads = grad_fn(state.params)
  # With partitioned examples, each device's gradient is `parts` times its part's share (the psum
  # that combines the parts transposes to a psum), so the mean over both axes is the whole
  # gradient (tests/test_spatial.py, test_pipelined_rnn.py).
  axes = (AXIS, PART_AXIS) if _parts(config) > 1 else AXIS
  loss, grads, model_state = lax.pmean((loss, grads, model_state), axes)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # A non-finite loss, gradient or update anywhere leaves the state as it was; the loop decides
  # whether to stop or to go on (config.skip_nonfinite_steps). The step number advances anyway.
  # After the pmean these values are the same on every device (a NaN anywhere is a NaN
  # everywhere), so every device takes the same decision without another collective.
  all_finite = lambda tree: jnp.all(
    jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])
  )
  finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(
    step=state.step + 1,
    params=keep(optax.apply_updates(state.params, updates), state.params),
    model_state=keep(model_state, state.model_state),
    opt_state=keep(opt_state, state.opt_state),
  )
  sums = keep(
    _sums(logits, labels, per_example, mask), {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  )
  return new_state, {**sums, 'nonfinite': 1.0 - finite.astype(jnp.float32)}


def train_steps(
  state: TrainState, inputs, *, num_steps: int, layout=None, unroll: bool = True, **step_args
):
  """`num_steps` train steps in one dispatch, on one device: `train_step` in a `lax.scan` (written
  once, so the steps are those of single dispatches), fully unrolled unless `unroll` is False
  (config.unroll_dispatch).

  `inputs` is, with the host pipeline, this device's batch ([per_device_batch, ...] for one step,
  [num_steps, per_device_batch, ...] for several); with on-device data (`layout` given), this
  device's shard of the split, from which each step draws its own batch (on_device.draw).
  Returns the state and the metric sums over the steps, with `nonfinite` the number of
  non-finite steps among them and, for several steps, `first_nonfinite_step` the number of the
  first one (0 if none; step s takes state.step from s - 1 to s).
  """

  def one(state, batch):
    if layout is not None:
      batch = on_device.draw(inputs, state.rng, state.step, layout)
    return train_step(state, batch, **step_args)

  if num_steps == 1:
    return one(state, None if layout is not None else inputs)
  state, per_step = lax.scan(
    one,
    state,
    None if layout is not None else inputs,
    length=num_steps,
    unroll=num_steps if unroll else 1,
  )
  sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_step)
  flags = per_step['nonfinite'] > 0
  first = state.step - num_steps + 1 + jnp.argmax(flags).astype(state.step.dtype)
  return state, {**sums, 'first_nonfinite_step': jnp.where(jnp.any(flags), first, 0)}


def eval_step(state: TrainState, batch, *, graphdef, config, info):
  model = nnx.merge(graphdef, state.params, state.model_state)
  logits = apply_model(
    model, model_inputs(batch, config, info, None, train=False), config, train=False
  )
  logits = logits.astype(jnp.float32)
  labels, mask = batch['label'], batch['mask']
  sums = _sums(logits, labels, _cross_entropy(logits, labels, 0.0), mask)
  num_classes = logits.shape[-1]
  # confusion[true, predicted]: counts of unmasked examples.
  confusion = (jax.nn.one_hot(labels, num_classes) * mask[:, None]).T @ jax.nn.one_hot(
    jnp.argmax(logits, -1), num_classes
  )
  return {**sums, 'confusion': lax.psum(confusion, AXIS)}


# ----------------------------------------------------------------------------------------------
# Evaluation over a whole split
# ----------------------------------------------------------------------------------------------
def evaluate(mapped_eval_step, state, source, info, config, mesh):
  """({'loss', 'accuracy', 'count'}, confusion matrix [true, predicted]) over every example of
  `source`, each counted once."""
  batches = pipeline.eval_iterator(
    source,
    info,
    global_batch_size=config.eval_batch_size,
    local_device_count=parallel.local_device_count(mesh),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  totals = previous_sums = None
  for batch, _ in parallel.prefetch(((batch, None) for batch in batches), mesh):
    sums = mapped_eval_step(state, batch)
    previous_sums = parallel.wait_for_previous(previous_sums, sums)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return metrics_lib.summarize(totals), totals['confusion'].astype(int)


def restore_for_evaluation(workdir: str, config, info, mesh):
  """(graphdef, state) of the newest checkpoint in `workdir`, placed on `mesh`."""
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(
      f'No checkpoint in {checkpoint_lib.directory(workdir)}: train first, '
      'or name the work directory of a finished run.'
    )
  tx = create_optimizer(config, 1)
  graphdef, abstract_state = abstract_train_state(config, info, tx)
  state, _ = checkpointer.restore(step, abstract_state, mesh)
  checkpointer.close()
  return graphdef, state


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or gradient."""


class IncompatibleConfigError(ValueError):
  """The config differs from the checkpoint's in a way that changes the state's shapes."""


# Config fields that change the train state's structure or shapes: a checkpoint written under
# other values cannot be resumed.
SHAPE_FIELDS = (
  'model',
  'resnet.stage_sizes',
  'resnet.width',
  'rnn.cell',
  'rnn.hidden_size',
  'rnn.num_layers',
  'rnn.bidirectional',
  'data.name',
  'data.max_length',
  'optimizer',
  'momentum',
)


def _flatten(config: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, (list, tuple)) else value
  return flat


def check_compatible(config, workdir: str):
  """Refuses to resume under a config whose SHAPE_FIELDS differ from the run's config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flatten(json.load(f))
  current = _flatten(json.loads(config.to_json_best_effort()))
  # A field missing from the saved config is newer than the run: its default cannot conflict.
  differences = [
    f"  {key}: {saved[key]!r} in the checkpoint's config, {current.get(key)!r} now"
    for key in SHAPE_FIELDS
    if key in saved and saved[key] != current.get(key)
  ]
  if differences:
    raise IncompatibleConfigError(
      f'{workdir} holds checkpoints of a differently shaped run; refusing to resume:\n'
      + '\n'.join(differences)
      + '\nUse another --workdir, or --config.fresh=True to discard '
      'its checkpoints.'
    )


def _prepare_workdir(config, workdir: str):
  """Checks the work directory can be written, before any work that could be lost."""
  try:
    os.makedirs(os.path.join(workdir, 'checkpoints'), exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise checkpoint_lib.CheckpointWriteError(
      f'The work directory {workdir!r} cannot be written ({e}); choose a writable --workdir.'
    ) from e
  if config.fresh:
    for name in ('checkpoints', 'metrics.jsonl', 'tensorboard', 'final_metrics.json'):
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
    logging.warning('config.fresh: removed the checkpoints and metrics in %s.', workdir)


def _data_position(config, mesh, train_batches) -> dict:
  """What a checkpoint records of the position in the training data: the host iterator's state;
  with on-device data the position is a function of the step, given the shards."""
  if train_batches is None:
    return {'on_device': True, 'shards': mesh.shape[AXIS], 'seed': config.seed}
  return train_batches.get_state()


def _restore_data_position(config, mesh, data_state: dict, train_batches):
  """Puts the host iterator where the checkpoint left it; says when the data order cannot
  continue exactly (a switch between host and on-device data, other devices or seed)."""
  written_on_device = bool(data_state.get('on_device'))
  if train_batches is not None and not written_on_device:
    train_batches.set_state(data_state)
  elif train_batches is not None:
    logging.warning(
      'The checkpoint was written with config.data.on_device=True: the host '
      'pipeline starts its order from the beginning.'
    )
  elif not written_on_device:
    logging.warning(
      'The checkpoint was written with the host pipeline: on-device data goes on in its own order.'
    )
  elif (data_state.get('shards'), data_state.get('seed')) != (mesh.shape[AXIS], config.seed):
    logging.warning(
      'On-device data was cut into %s shards with seed %s when the checkpoint was '
      'written, now %d and %d: the data order differs from an uninterrupted run.',
      data_state.get('shards'),
      data_state.get('seed'),
      mesh.shape[AXIS],
      config.seed,
    )


def dispatch_plan(
  first_step: int, total_steps: int, steps_per_dispatch: int, intervals
) -> list[tuple[int, int]]:
  """[(steps done before, steps in this dispatch)] from `first_step` to `total_steps`. A dispatch
  runs `steps_per_dispatch` steps unless a boundary (a multiple of one of `intervals`: logging,
  evaluation, checkpoints; or the end) comes sooner; the steps up to that boundary then run one
  per dispatch, so every boundary ends a dispatch and only two step functions are ever compiled."""
  plan, step = [], first_step
  while step < total_steps:
    boundary = min([total_steps] + [(step // i + 1) * i for i in intervals])
    length = steps_per_dispatch if boundary - step >= steps_per_dispatch else 1
    plan.append((step, length))
    step += length
  return plan


def _restore_or_create(config, info, tx, mesh, checkpointer, train_batches):
  """(graphdef, state) from the newest checkpoint in the work directory, else from
  `config.init_from` (parameters only), else freshly initialised."""
  latest = checkpointer.latest_step()
  if latest is not None:
    graphdef, abstract_state = abstract_train_state(config, info, tx)
    state, data_state = checkpointer.restore(latest, abstract_state, mesh)
    _restore_data_position(config, mesh, data_state, train_batches)
    logging.info('Resumed from the checkpoint of step %d in %s.', latest, checkpointer.directory)
    return graphdef, state
  graphdef, state = create_train_state(config, info, tx)
  state = parallel.replicate(state, mesh)
  if config.init_from:
    source = checkpoint_lib.Checkpointer(config.init_from, read_only=True)
    step = source.latest_step()
    if step is None:
      raise FileNotFoundError(f'config.init_from={config.init_from!r} has no checkpoint.')
    _, abstract_state = abstract_train_state(config, info, tx)
    restored, _ = source.restore(step, abstract_state, mesh)
    source.close()
    state = state.replace(params=restored.params, model_state=restored.model_state)
    logging.info('Initialised parameters from step %d of %s.', step, config.init_from)
  return graphdef, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` on every device, evaluating every epoch and at the end; writes the resolved
  config, metrics.jsonl, TensorBoard files and checkpoints to `workdir`, and resumes from the
  newest checkpoint there. Returns the final metrics and state; `preempted` is set when a signal
  stopped the run after a checkpoint."""
  # --- Devices: check batch sizes before any data is read or anything compiled.
  if config.mapping not in parallel.MAPPINGS:
    raise ValueError(f'Unknown config.mapping {config.mapping!r}: one of {parallel.MAPPINGS}.')
  steps_per_dispatch = config.steps_per_dispatch
  if not isinstance(steps_per_dispatch, int) or steps_per_dispatch < 1:
    raise ValueError(
      f'config.steps_per_dispatch={steps_per_dispatch!r} must be a whole number of '
      'steps, 1 or more (e.g. 1, or 8 for a small model).'
    )
  mesh = parallel.make_mesh(parts=_parts(config))
  parallel.per_device_batch_size(config.batch_size, mesh)
  parallel.per_device_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  logging.info(
    '%d devices (%s) in %d process(es); global batch %d, %s%s.',
    mesh.size,
    jax.devices()[0].platform,
    jax.process_count(),
    config.batch_size,
    config.mapping,
    f'; every example split over {_parts(config)} devices' if _parts(config) > 1 else '',
  )

  # --- Work directory: writable, and its checkpoints compatible with this config
  _prepare_workdir(config, workdir)
  checkpointer = checkpoint_lib.Checkpointer(
    workdir,
    max_to_keep=config.max_checkpoints_to_keep,
    best_metric=config.best_checkpoint_metric or None,
  )
  if checkpointer.latest_step() is not None:
    check_compatible(config, workdir)

  # --- Input
  data = config.data
  train_source = pipeline.load_split(data.name, data.train_split, data.data_dir)
  eval_source = pipeline.load_split(data.name, data.eval_split, data.data_dir)
  info = pipeline.dataset_info(train_source, data.name, data.max_length)
  check_partition(config, info, mesh)
  if data.on_device:  # checked before anything is read or compiled
    layout = on_device.Layout(
      len(train_source), mesh.shape[AXIS], parallel.per_device_batch_size(config.batch_size, mesh)
    )
    on_device.check(layout, info, data.train_split, mesh.local_devices)
    steps_per_epoch = layout.steps_per_epoch
  else:
    layout = None
    steps_per_epoch = len(train_source) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f'Split {data.train_split!r} of {data.name!r} has {len(train_source)} '
      f'examples, fewer than one global batch (config.batch_size='
      f'{config.batch_size}).'
    )
  total_steps = (
    config.num_train_steps
    if config.num_train_steps > 0
    else int(config.num_epochs * steps_per_epoch)
  )
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  checkpoint_every = (
    config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else steps_per_epoch
  )
  train_batches = (
    None
    if data.on_device
    else pipeline.train_iterator(
      train_source,
      info,
      local_batch_size=config.batch_size // jax.process_count(),
      local_device_count=parallel.local_device_count(mesh),
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  )

  # --- Model and state: the newest checkpoint in workdir, or a fresh start
  tx = create_optimizer(config, total_steps)
  graphdef, state = _restore_or_create(config, info, tx, mesh, checkpointer, train_batches)
  first_step = int(jax.device_get(state.step))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info(
    '%s: %s parameters; %d train / %d eval examples; %d steps (%d per epoch).',
    config.model,
    f'{num_params:,}',
    len(train_source),
    len(eval_source),
    total_steps,
    steps_per_epoch,
  )
  data_load_seconds = 0.0
  if data.on_device:
    load_start = time.perf_counter()
    device_data = on_device.load(train_source, info, layout, mesh, config.seed)
    data_load_seconds = time.perf_counter() - load_start

  # --- Steps: mapped once per dispatch length (K, and 1 for the steps before a boundary that
  # K does not reach), compiled on first call, reused for every later one.
  step_args = dict(graphdef=graphdef, config=config, info=info)
  dispatch_functions = {}

  def dispatch_function(num_steps):
    if num_steps not in dispatch_functions:
      dispatch_functions[num_steps] = parallel.map_over_devices(
        functools.partial(
          train_steps,
          num_steps=num_steps,
          layout=layout,
          unroll=config.unroll_dispatch,
          tx=tx,
          **step_args,
        ),
        mesh,
        config.mapping,
        donate_state=True,
      )
    return dispatch_functions[num_steps]

  p_eval_step = parallel.map_over_devices(
    functools.partial(eval_step, **step_args), mesh, config.mapping
  )
  plan = dispatch_plan(
    first_step,
    total_steps,
    steps_per_dispatch,
    (config.log_every_steps, eval_every, checkpoint_every),
  )
  if steps_per_dispatch > 1:
    single = sum(1 for _, length in plan if length == 1)
    logging.info(
      '%d steps per dispatch: %d dispatches, %d of them single steps before a log, '
      'evaluation or checkpoint boundary that is not a multiple of %d.',
      steps_per_dispatch,
      len(plan),
      single,
      steps_per_dispatch,
    )

  # --- Outputs
  if jax.process_index() == 0:
    resolved = json.loads(config.to_json_best_effort())
    if data.data_dir:  # absolute, so that evaluation from another folder finds the data
      resolved['data']['data_dir'] = os.path.abspath(os.path.expanduser(data.data_dir))
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(resolved, f, indent=2)
  writer = metrics_lib.MetricWriter(workdir, resume_step=first_step)
  progress = metrics_lib.Progress(total_steps, first_step)

  # --- Loop
  def dispatch_inputs():
    """(the dispatch's inputs, (steps before, steps in it, data position after it)) per entry of
    the plan: host batches (stacked [local_devices, K, per_device_batch, ...] for K steps), or
    the resident data, which never moves."""
    for before, length in plan:
      if train_batches is None:
        yield device_data, (before, length, _data_position(config, mesh, None))
        continue
      batches = [next(train_batches) for _ in range(length)]
      if length > 1:
        batches = [jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)]
      yield batches[0], (before, length, train_batches.get_state())

  def check_finite(steps, sums):
    """Called on a dispatch's sums (`steps`: its first and last step) once the next dispatch is
    queued; blocks until it is done."""
    nonlocal skipped
    sums = jax.device_get(sums)
    if not sums['nonfinite']:
      return
    first, last = steps
    where = (
      f'at step {first}'
      if first == last
      else f'at step {int(sums["first_nonfinite_step"])} (steps {first}-{last} ran as one dispatch)'
    )
    if config.skip_nonfinite_steps:
      skipped += int(sums['nonfinite'])
      logging.warning('Non-finite loss or gradient %s: update skipped (%d so far).', where, skipped)
      return
    checkpointer.close()
    raise NonFiniteError(
      f'Non-finite loss or gradient {where}; training stopped without applying it. The '
      f'last good checkpoint, step {checkpointer.latest_step()} in {checkpointer.directory}, '
      'is kept. Lower config.learning_rate, or set --config.skip_nonfinite_steps=True to skip '
      'such steps.'
    )

  signals = checkpoint_lib.StopSignals()
  totals, in_flight, skipped, stopped_by = None, None, 0, None
  train_summary, eval_summary = {}, {}
  eval_seconds, first_dispatch_steps, first_dispatch_seconds, step = 0.0, 0, 0.0, first_step
  start = time.perf_counter()
  inputs = (
    dispatch_inputs() if train_batches is None else parallel.prefetch(dispatch_inputs(), mesh)
  )
  try:
    for dispatch, (batch, (before, length, data_state)) in enumerate(inputs):
      step = before + length
      state, sums = dispatch_function(length)(state, batch)
      # At most two dispatches in flight (see parallel.wait_for_previous); the finished one is
      # checked.
      if in_flight is not None:
        check_finite(*in_flight)
      in_flight = ((before + 1, step), sums)
      sums = {k: v for k, v in sums.items() if k != 'first_nonfinite_step'}
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      if dispatch == 0:
        jax.block_until_ready(state)
        first_dispatch_seconds = time.perf_counter() - start
        logging.info(
          'First dispatch (%d step(s), compilation included) took %.1f s.',
          length,
          first_dispatch_seconds,
        )
        progress.restart(step)
        first_dispatch_steps = length
        start = time.perf_counter()
      if step % config.log_every_steps == 0 or step == total_steps:
        train_summary = metrics_lib.summarize(jax.device_get(totals))
        train_summary['steps_per_second'] = progress.report(step, train_summary)
        writer.write(step, 'train', train_summary)
        totals = None
      eval_metrics = None
      if step % eval_every == 0 or step == total_steps:
        eval_start = time.perf_counter()
        eval_summary, _ = evaluate(p_eval_step, state, eval_source, info, config, mesh)
        eval_seconds += time.perf_counter() - eval_start
        logging.info(
          'eval at step %d: loss %.4f  accuracy %.4f  (%d examples)',
          step,
          eval_summary['loss'],
          eval_summary['accuracy'],
          eval_summary['count'],
        )
        writer.write(step, 'eval', eval_summary)
        eval_metrics = {f'eval/{k}': v for k, v in eval_summary.items()}
        progress.restart(step)
      # JAX's preemption sync point counts calls, which every process makes once per dispatch.
      stopped_by = signals.received or (
        jax.process_count() > 1 and checkpointer.reached_preemption(dispatch) and 'preemption'
      )
      if step % checkpoint_every == 0 or step == total_steps or stopped_by:
        check_finite(*in_flight)  # never save a state that followed a non-finite step
        in_flight = None
        checkpointer.save(
          step, parallel.as_global(state, mesh), data_state, eval_metrics, wait=bool(stopped_by)
        )
      if stopped_by:
        logging.warning(
          'Stopped by %s at step %d after saving a checkpoint; run the same '
          'command again to resume.',
          stopped_by,
          step,
        )
        break
    if in_flight is not None:
      check_finite(*in_flight)
    if first_step >= total_steps:  # a finished run started again: report, change nothing
      logging.info('Already trained for %d steps; evaluating only.', first_step)
      eval_summary, _ = evaluate(p_eval_step, state, eval_source, info, config, mesh)
      logging.info(
        'eval at step %d: loss %.4f  accuracy %.4f  (%d examples)',
        first_step,
        eval_summary['loss'],
        eval_summary['accuracy'],
        eval_summary['count'],
      )
    train_seconds = time.perf_counter() - start
    checkpointer.close()
  finally:
    signals.restore()
    writer.close()
  # Timing: the steps after the first dispatch (whose compilation it includes) took
  # seconds_after_first_step, evaluations (eval_seconds) included.
  result = {
    'train': train_summary,
    'eval': eval_summary,
    'steps': total_steps,
    'seconds_after_first_step': train_seconds,
    'skipped_nonfinite_steps': skipped,
    'preempted': bool(stopped_by),
    'timing': {
      'first_dispatch_steps': first_dispatch_steps,
      'steps_after_first_dispatch': max(step - first_step - first_dispatch_steps, 0),
      'first_dispatch_seconds': first_dispatch_seconds,
      'eval_seconds': eval_seconds,
      'data_load_seconds': data_load_seconds,
    },
  }
  if jax.process_index() == 0 and not stopped_by and first_step < total_steps:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
    if config.write_plots:
      from dlearn import plots  # matplotlib only when asked for

      plots.plot_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'curves.png'))
  return {**result, 'state': state}
