"""The train state and the step bodies: importable without the loop (dlearn/train.py).

Each body is one pure function, `body(state, batch, ..., axis)`, that `parallel.map_over_devices`
runs under `config.mapping`: per device with `lax.pmean` over the device axis (pmap, shard_map;
the article's design) or once over the global batch with the state placed by its sharding rule
(jit; dlearn/sharding.py). `axis` (`parallel.DataAxis`) makes the reductions the right ones for
each. Everything specific to a model comes from its family (`dlearn.models.family_of(config)`):
its inputs, its partitioned form, its evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from dlearn import configs, models, parallel, sharding
from dlearn.data import augment
from dlearn.parallel import AXIS, PART_AXIS

# Folded into a device's step key for mixup/CutMix, so that the model's own augmentation draws
# what it drew before they existed.
MIX_STREAM = 0x6D6978

LOSS_REDUCTIONS = ('mean', 'sum')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  model_state: nnx.State  # everything of the model that is not a parameter: BatchNorm statistics
  opt_state: optax.OptState
  rng: jax.Array  # base key; a step folds in its number and the device index


# ----------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------
def _new_state(config, info, tx):
  """(graphdef, state) of a fresh model, before any data-dependent initialisation."""
  family = models.family_of(config)
  model = models.create_model(
    config,
    num_classes=info.num_classes,
    input_shape=family.input_shape(config, info),
    axis_name=parallel.model_axis_name(config.mapping),
    seed=config.seed,
    space_axis=PART_AXIS if config.partition.parts > 1 else None,
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


def abstract_train_state(config, info, tx):
  """(graphdef, state of shapes and dtypes only): what placement and checkpoints work from."""
  graphdef = None

  def create():
    nonlocal graphdef
    graphdef, state = _new_state(config, info, tx)
    return state

  abstract_state = jax.eval_shape(create)
  return graphdef, abstract_state


def state_shardings(config, info, tx, mesh):
  """(graphdef, abstract state, where each of its arrays lives on `mesh` under config.sharding)."""
  return _state_programs(config, info, tx, mesh).placement


class _StatePrograms(NamedTuple):
  placement: tuple  # state_shardings'
  create: Callable[[], TrainState]  # a fresh state's arrays, each made where it is placed
  init_optimizer: Callable  # params -> the optimizer's state, placed


@configs.per_program
def _state_programs(config, info, tx, mesh) -> _StatePrograms:
  """One per program in a process (with `info`, `tx` and `mesh`): the runs of a cross-validation
  or an ensemble trace and load them once, as they share their evaluation step."""
  graphdef, abstract_state = abstract_train_state(config, info, tx)
  shardings = sharding.shardings(abstract_state, mesh, config)
  return _StatePrograms(
    placement=(graphdef, abstract_state, shardings),
    create=jax.jit(lambda: _new_state(config, info, tx)[1], out_shardings=shardings),
    init_optimizer=jax.jit(tx.init, out_shardings=shardings.opt_state),
  )


def create_train_state(config, info, tx, mesh, source=None):
  """(graphdef, state): the model's static structure, and its arrays with the optimizer's, each
  created where config.sharding places it on `mesh` (never whole on one device first). With the
  train split `source`, the family's data-dependent initialisation runs (a fresh run; a resumed
  one restores such values from its checkpoint)."""
  programs = _state_programs(config, info, tx, mesh)
  graphdef, _, shardings = programs.placement
  state = programs.create()
  if source is not None:
    # The family sets values computed from data on the placed model (the default sets none); they
    # are placed in turn, and the optimizer state is made again for the new parameters.
    model = nnx.merge(graphdef, state.params, state.model_state)
    models.family_of(config).init_from_data(model, config, source, info)
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    params, model_state = jax.device_put(
      (params, model_state), (shardings.params, shardings.model_state)
    )
    opt_state = programs.init_optimizer(params)
    state = state.replace(params=params, model_state=model_state, opt_state=opt_state)
  return graphdef, state


# ----------------------------------------------------------------------------------------------
# Step bodies
# ----------------------------------------------------------------------------------------------
def device_rng(base_key_data, step):
  """This device's key for this step: the step and the device index folded into the base key, so
  no two steps and no two devices draw the same augmentation or dropout. The devices that share
  examples (config.partition) draw the same: they augment the same images."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(base_key_data), step)
  return jax.random.fold_in(step_key, lax.axis_index(AXIS))


def cross_entropy(logits, labels, label_smoothing: float):
  """Per example; `labels` are class ids [B] or soft targets [B, classes] (mixup, CutMix)."""
  targets = jax.nn.one_hot(labels, logits.shape[-1]) if labels.ndim == 1 else labels
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _mixed(rng, batch, num_classes: int, config):
  """(batch, targets): the images mixed and their soft targets with config.data.mixup_alpha or
  cutmix_alpha (images only), else the batch as it is and its labels."""
  data = config.data
  if 'image' not in batch or not (data.mixup_alpha > 0 or data.cutmix_alpha > 0):
    return batch, batch['label']
  targets = jax.nn.one_hot(batch['label'], num_classes)
  images, targets = augment.mix(
    jax.random.fold_in(rng, MIX_STREAM),
    batch['image'],
    targets,
    data.mixup_alpha,
    data.cutmix_alpha,
  )
  return {**batch, 'image': images}, targets


def metric_sums(logits, labels, per_example_loss, mask, axis):
  """Metric sums over the body's examples, summed over all devices."""
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return axis.sum(
    {
      'loss_sum': jnp.sum(per_example_loss * mask),
      'correct': jnp.sum(correct * mask),
      'count': jnp.sum(mask),
    }
  )


def _combine_over_devices(loss, grads, model_state, config, axis):
  """The global batch's loss and gradient from every device's, and the BatchNorm statistics
  averaged (under 'jit' the body computed them from the global batch already). With
  config.loss_reduction='mean' each device's loss is its examples' mean (the devices hold equal
  shares), so the mean over devices is the global mean; with 'sum' the sum over devices is the
  global sum. With partitioned examples each device's gradient is `parts` times
  its part's share (the psum that combines the parts transposes to a psum), so the mean over
  PART_AXIS is the whole gradient (tests/test_spatial.py, test_pipelined_rnn.py)."""
  axes = (AXIS, PART_AXIS) if config.partition.parts > 1 else AXIS
  model_state = axis.mean(model_state, axes)
  if config.loss_reduction == 'mean':
    loss, grads = axis.mean((loss, grads), axes)
    return loss, grads, model_state
  loss, grads = axis.sum((loss, grads))
  if config.partition.parts > 1:
    loss, grads = axis.mean((loss, grads), PART_AXIS)
  return loss, grads, model_state


def _all_finite(tree):
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch, *, graphdef, tx, config, info, axis, steps_per_epoch=1):
  """One optimisation step on the body's batch (one device's, or the global one under 'jit');
  gradients, BatchNorm statistics and metrics are those of the global batch, so every device
  leaves with the same state. Augmentation draws from each device's own stream either way."""
  family = models.family_of(config)

  def device_inputs(batch):
    rng = device_rng(state.rng, state.step)
    batch, targets = _mixed(rng, batch, info.num_classes, config)
    inputs = family.inputs(
      batch,
      config,
      info,
      rng=rng,
      run_rng=jax.random.wrap_key_data(state.rng),
      train=True,
      epoch=state.step // steps_per_epoch,
    )
    return inputs, targets

  inputs, targets = axis.each_device(device_inputs, batch)
  labels, mask = batch['label'], batch['mask']

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    # The loss in float32 also under bf16 (config.dtype).
    logits = family.logits(model, inputs, config, train=True).astype(jnp.float32)
    # An ensemble's logits carry a leading member axis: each member's loss, summed over members.
    per_example = cross_entropy(logits, targets, config.label_smoothing)
    loss = jnp.sum(per_example * mask)
    if config.loss_reduction == 'mean':
      loss = loss / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, (logits, per_example, nnx.split(model, nnx.Param, ...)[2])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, per_example, model_state)), grads = grad_fn(state.params)
  loss, grads, model_state = _combine_over_devices(loss, grads, model_state, config, axis)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # A non-finite loss, gradient or update anywhere leaves the state as it was; the loop decides
  # whether to stop or to go on (config.skip_nonfinite_steps). The step number advances anyway.
  # After the reduction these values are the same on every device (a NaN anywhere is a NaN
  # everywhere), so every device takes the same decision.
  finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(
    step=state.step + 1,
    params=keep(optax.apply_updates(state.params, updates), state.params),
    model_state=keep(model_state, state.model_state),
    opt_state=keep(opt_state, state.opt_state),
  )
  if logits.ndim == 3:  # an ensemble's metrics: of its averaged prediction, its mean loss
    logits, per_example = models.average_probabilities(logits), jnp.mean(per_example, axis=0)
  sums = keep(
    metric_sums(logits, labels, per_example, mask, axis),
    {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0},
  )
  return new_state, {**sums, 'nonfinite': 1.0 - finite.astype(jnp.float32)}


def train_steps(
  state: TrainState, inputs, *, num_steps: int, axis, draw=None, unroll=True, **step_args
):
  """`num_steps` train steps in one dispatch: `train_step` in a `lax.scan` (written once, so the
  steps are those of single dispatches), fully unrolled unless `unroll` is False
  (config.unroll_dispatch).

  Without `draw`, `inputs` is the body's batch ([batch, ...] for one step, [batch, num_steps,
  ...] for several). With `draw` (on-device data), `inputs` is the resident data and each step
  takes each device's batch from its shard as `draw(shard, state)`.
  Returns the state and the metric sums over the steps, with `nonfinite` the number of
  non-finite steps among them and, for several steps, `first_nonfinite_step` the number of the
  first one (0 if none; step s takes state.step from s - 1 to s).
  """

  def one(state, batch):
    if draw is not None:
      batch = axis.each_device(lambda shard: draw(shard, state), inputs)
    return train_step(state, batch, axis=axis, **step_args)

  per_step_inputs = None if draw is not None else inputs
  if num_steps > 1 and per_step_inputs is not None:  # the steps' axis first, for the scan
    per_step_inputs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), per_step_inputs)
  if num_steps == 1:
    return one(state, per_step_inputs)
  state, per_step = lax.scan(
    one, state, per_step_inputs, length=num_steps, unroll=num_steps if unroll else 1
  )
  sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_step)
  flags = per_step['nonfinite'] > 0
  first = state.step - num_steps + 1 + jnp.argmax(flags).astype(state.step.dtype)
  return state, {**sums, 'first_nonfinite_step': jnp.where(jnp.any(flags), first, 0)}


def eval_logits(params, model_state, batch, *, graphdef, config, info):
  """float32 logits of a batch in the model's evaluation form: the family's preprocessing and
  evaluation (e.g. test-time augmentation, an ensemble's averaged probabilities). What
  evaluation, `dlearn.predict` and `dlearn.export` all compute."""
  family = models.family_of(config)
  model = nnx.merge(graphdef, params, model_state)
  inputs = family.inputs(batch, config, info, rng=None, run_rng=None, train=False, epoch=0)
  return family.logits(model, inputs, config, train=False).astype(jnp.float32)


def eval_step(state: TrainState, batch, *, graphdef, config, info, axis):
  """Metric sums and the confusion matrix of the body's batch, summed over every device; in a
  cross-validation fold's run (config.data.folds) also `cases` (`each_example`): what
  `dlearn.ensemble` weighs its members' folds by."""
  logits = eval_logits(
    state.params, state.model_state, batch, graphdef=graphdef, config=config, info=info
  )
  labels, mask = batch['label'], batch['mask']
  sums = metric_sums(logits, labels, cross_entropy(logits, labels, 0.0), mask, axis)
  num_classes = logits.shape[-1]
  # confusion[true, predicted]: counts of unmasked examples.
  confusion = (jax.nn.one_hot(labels, num_classes) * mask[:, None]).T @ jax.nn.one_hot(
    jnp.argmax(logits, -1), num_classes
  )
  out = {**sums, 'confusion': axis.sum(confusion)}
  if config.data.folds:
    out['cases'] = each_example(logits, batch, axis)
  return out


def each_example(logits, batch, axis):
  """Each example's class probabilities (as ModelFamily.probabilities, which ensembles read)
  with its position, label and mask, gathered from every device, so that every process holds the
  whole global batch: what prediction and a cross-validation fold's held-out examples keep
  (`evaluation.held_out` orders them)."""
  keep = {k: batch[k] for k in ('index', 'label', 'mask')}
  return axis.gather({'probabilities': jax.nn.softmax(logits, -1), **keep})
