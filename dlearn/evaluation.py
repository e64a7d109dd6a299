"""Evaluation: a train state over every example of a split, and a work directory's newest checkpoint
on any prepared split (the library behind `python -m dlearn.evaluate` and the notebooks).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dlearn import configs, metrics, parallel, runs, steps
from dlearn.data import pipeline


def device_batches(source, info, config, mesh, workers: int | None = None):
  """This process's share of every global batch of config.eval_batch_size examples of `source`,
  in order, on its way to the devices: every example once over every device of every process
  (`pipeline.eval_iterator`), made in `workers` processes (default: config.data.worker_count's;
  0 for a source that cannot travel to another process)."""
  batches = pipeline.eval_iterator(
    source,
    info,
    global_batch_size=config.eval_batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    workers=pipeline.worker_count(config.data.worker_count, info) if workers is None else workers,
  )
  return (batch for batch, _ in parallel.prefetch(((batch, None) for batch in batches), mesh))


def evaluate_split(mapped_eval_step, state, batches, cases: list | None = None):
  """({'loss', 'accuracy', 'count'}, confusion matrix [true, predicted]) over `batches`: a split's
  `device_batches` (or a list of them kept on the devices), each example counted once, on every
  device of every process. A step that gives each example's probabilities (a cross-validation
  fold's: `steps.eval_step`) appends them to `cases`: `held_out`'s input."""
  totals = previous_sums = None
  for batch in batches:
    sums = mapped_eval_step(state, batch)
    if 'cases' in sums:
      sums = dict(sums)
      each = sums.pop('cases')
      if cases is not None:
        cases.append(each)
    previous_sums = parallel.wait_for_previous(previous_sums, sums)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return metrics.summarize(totals), totals['confusion'].astype(int)


def held_out(cases: list) -> dict:
  """{'index' [N], 'label' [N], 'probabilities' [N, classes]} of batches of `steps.each_example`
  (`evaluate_split`'s `cases`, or a prediction's batch): every example once, padding left out,
  in the order of the source (`index`: positions in it)."""
  cases = jax.device_get(cases)
  joined = {k: np.concatenate([c[k] for c in cases]) for k in ('index', 'label', 'probabilities', 'mask')}  # fmt: skip
  valid = joined.pop('mask') > 0
  order = np.argsort(joined['index'][valid], kind='stable')
  return {k: v[valid][order] for k, v in joined.items()}


def map_eval_step(graphdef, config, info, mesh):
  """`steps.eval_step` on every device of `mesh`, compiled on its first call. One function per
  program in a process: the runs of a cross-validation or an ensemble, which differ only in the
  fold they hold out (config.data.fold, which the step never reads), trace and load it once."""
  return _eval_step_on(config, graphdef, info, mesh)


@configs.per_program
def _eval_step_on(config, graphdef, info, mesh):
  return parallel.map_over_devices(
    functools.partial(steps.eval_step, graphdef=graphdef, config=config, info=info),
    mesh,
    config.mapping,
  )


@dataclasses.dataclass(frozen=True)
class Restored:
  """A work directory's newest checkpoint on a mesh, and the split to evaluate it on: what
  evaluation, prediction and export start from."""

  config: ml_collections.ConfigDict  # the run's, with any overrides
  source: object  # the split's data source (`len`, `[i]`)
  info: pipeline.DatasetInfo  # the model's (its trained shape)
  graphdef: nnx.GraphDef
  state: steps.TrainState  # placed on `mesh`
  dataset: str
  split: str
  mesh: jax.sharding.Mesh

  @property
  def split_info(self) -> pipeline.DatasetInfo:
    """`info` with the split's sequences padded to its longest case, where it is longer than the
    model was trained on (`pipeline.with_room_for`): what the split's batches are made with."""
    longest = pipeline.longest_sequence(self.source)
    return pipeline.with_room_for(self.info, longest, self.config.partition.parts)


def restore(run_dir, config, dataset, split, data_dir, mesh) -> Restored:
  """The newest checkpoint of `run_dir` on `mesh`, and the split to evaluate on (by default the
  run's evaluation split)."""
  # A run that split examples over devices has the same parameters as an unsplit one.
  config.partition.parts = parallel.parts(mesh)
  if config.data.folds and not (dataset or split):  # a cross-validation run: its held-out fold
    config.data.data_dir = data_dir or config.data.data_dir
    _, source = pipeline.run_sources(config)
    dataset, split = config.data.name, f'{config.data.train_split}_fold{config.data.fold}'
  else:
    dataset = dataset or config.data.name
    split = split or config.data.eval_split
    source = pipeline.load_split(dataset, split, data_dir or config.data.data_dir)
  info = pipeline.dataset_info(
    source, dataset, config.data.max_length, config.data.standardize, config.data
  )
  graphdef, state = runs.restore_for_evaluation(run_dir, config, info, mesh)
  return Restored(config, source, info, graphdef, state, dataset, split, mesh)


def restore_workdir(
  run_dir, dataset=None, split=None, data_dir=None, overrides=None, devices=None
) -> Restored:
  """`restore` with the run's config and `overrides` {'field.name': value}, on `devices`
  (default: every device of every process), the evaluation batch checked against them first."""
  config = configs.override(configs.load(run_dir), overrides or {})
  mesh = parallel.make_mesh(devices, parts=config.partition.parts)
  parallel.per_device_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
  return restore(run_dir, config, dataset, split, data_dir, mesh)


def write_confusion(path: str, confusion, class_names) -> None:
  """The confusion matrix as CSV: rows the true class, columns the predicted one."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true \\ predicted', *class_names])
    for class_name, row in zip(class_names, confusion):
      writer.writerow([class_name, *np.asarray(row).tolist()])


def evaluate_workdir(
  run_dir: str,
  dataset: str | None = None,
  split: str | None = None,
  data_dir: str | None = None,
  png: bool = False,
  overrides: dict | None = None,
):
  """(metrics, confusion matrix, class names, CSV path) of the newest checkpoint in `run_dir`
  on every device; with `png`, the confusion matrix also as a picture beside the CSV.
  `overrides` {'field.name': value} change the run's config for this evaluation (e.g.
  {'fast_cnn.tta_level': 0}); a field that changes the state's shapes cannot be restored."""
  restored = restore_workdir(run_dir, dataset, split, data_dir, overrides)
  config, info, mesh = restored.config, restored.info, restored.mesh
  summary, confusion = evaluate_split(
    map_eval_step(restored.graphdef, config, info, mesh),
    restored.state,
    device_batches(restored.source, restored.split_info, config, mesh),
  )
  dataset, split = restored.dataset, restored.split
  name = f'confusion_{dataset}_{re.sub(r"[^A-Za-z0-9_.-]+", "_", split)}.csv'
  path = os.path.join(run_dir, name)
  if jax.process_index() == 0:
    write_confusion(path, confusion, info.class_names)
    if png:
      from dlearn import plots  # matplotlib only when asked for

      plots.plot_confusion(
        confusion,
        info.class_names,
        path.removesuffix('.csv') + '.png',
        title=f'{dataset} {split}: accuracy {summary["accuracy"]:.4f}',
      )
  return summary, confusion, info.class_names, path


def predict_workdir(
  run_dir: str, dataset: str | None = None, split: str | None = None, data_dir: str | None = None
) -> dict:
  """Per-example results in this process, for looking at a model (notebooks): 'logits',
  'labels', the model 'inputs' as stored ('image' uint8 or 'sequence'), 'lengths' for sequences,
  and the dataset 'info'. The state stays on this process's devices as its rule places it."""
  mesh = parallel.make_mesh(jax.local_devices())
  restored = restore(run_dir, configs.load(run_dir), dataset, split, data_dir, mesh)
  config, info, graphdef, state = restored.config, restored.info, restored.graphdef, restored.state

  @jax.jit
  def forward(state, batch):
    return steps.eval_logits(
      state.params, state.model_state, batch, graphdef=graphdef, config=config, info=info
    )

  outputs = {'logits': [], 'labels': [], 'inputs': [], 'lengths': []}
  key = 'image' if info.kind == 'image' else 'sequence'
  batches = pipeline.eval_iterator(
    restored.source, restored.split_info, global_batch_size=config.eval_batch_size
  )
  for batch in batches:
    valid = batch['mask'] > 0
    outputs['logits'].append(np.asarray(forward(state, batch))[valid])
    outputs['labels'].append(batch['label'][valid])
    outputs['inputs'].append(batch[key][valid])
    if 'length' in batch:
      outputs['lengths'].append(batch['length'][valid])
  result = {k: np.concatenate(v) for k, v in outputs.items() if v}
  return {**result, 'info': info}
