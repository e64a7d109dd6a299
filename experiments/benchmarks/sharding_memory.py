"""Memory per device of dlearn's train state and compiled step under each sharding rule
(dlearn/sharding.py: config.sharding 'replicate' or 'fsdp'), on 1, 2, 4, 8 forced CPU devices;
and, with --step_time, what the rules cost per step on this machine.

  python experiments/benchmarks/sharding_memory.py [--device_counts=1,2,4,8] [--image=224]
      [--per_device_batch=2] [--wide_width=192] [--fsdp_min_size_mib=0.0625,0] [--step_time]
      [--nomemory]

Memory: for each device count (one subprocess each: forced CPU devices are fixed when jax starts),
each model (ResNet-18: stages 2,2,2,2, width 64, 11.7M parameters; 'wide': the same layout at
--wide_width, 102M parameters at 192) and each rule (replicate; fsdp at each
--fsdp_min_size_mib, 0.0625 (64 KiB) being dlearn's default), AdamW, float32, --image square images with 1000
classes, --per_device_batch images per device. dlearn's ResNet is CIFAR-style (3x3 stem, stride 1,
no max pooling), so at 224x224 it computes ~49x its CIFAR FLOPs. Every number comes from abstract
shapes only: the state of `steps.state_shardings` as `jax.ShapeDtypeStruct`s carrying their
shardings, and the step `.lower(...).compile()`d for them; no model array is allocated. Per row:
the whole state's bytes, the bytes each device holds (`sharding.bytes_per_device`), their ratio to
an even split (total / N; fsdp's goal: within 5 %), and the compiled step's `memory_analysis()` per
device (arguments: state shard + batch shard; outputs: the new state, aliased to the donated
arguments; temporaries). At 1 device fsdp places every array as replicate does (sharding.fsdp
returns P() there), so only replicate is compiled.

--step_time: a small ResNet-18 (width 16, 32x32, 10 classes, global batch 64) on 8 forced devices,
replicate against fsdp with fsdp_min_size_mib=0 (every array the devices divide split): median
seconds per step over --repeats steps after the compiling one. The 8 devices share this machine's
cores, so this shows the overhead of the rules' collectives on a CPU, not a speed-up.

Results: experiments/benchmarks/results/sharding_memory-<machine kind>.json.

Findings: README, "Sharding".
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import functools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import results_file  # noqa: E402  (beside this script)
import sharded_step  # noqa: E402
from absl import app, flags  # noqa: E402

from dlearn import optimizers, parallel, sharding, steps  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('device_counts', ['1', '2', '4', '8'], 'Forced CPU device counts.')
flags.DEFINE_list('models', ['resnet18', 'wide'], 'resnet18 (width 64) and/or wide.')
flags.DEFINE_integer('wide_width', 192, "The 'wide' model's width (ResNet-18 layout).")
flags.DEFINE_integer('image', 224, 'Square image size of the memory rows.')
flags.DEFINE_integer('num_classes', 1000, 'Classes of the memory rows.')
flags.DEFINE_integer('per_device_batch', 2, 'Images per device per step (memory rows).')
flags.DEFINE_list(
  'fsdp_min_size_mib', ['0.0625', '0'], "config.fsdp_min_size_mib of the 'fsdp' rows."
)
flags.DEFINE_bool('memory', True, 'Compile and report the memory rows.')
flags.DEFINE_bool('step_time', False, 'Also time the small ResNet-18 on 8 devices.')
flags.DEFINE_integer('repeats', 5, 'Timed steps per rule (--step_time).')
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_bool('worker', False, 'Internal: run in a subprocess with --devices devices.')
flags.DEFINE_integer('devices', 0, 'Internal: the worker process device count.')
flags.DEFINE_enum('task', 'memory', ['memory', 'step_time'], 'Internal: what the worker does.')

MIB = 2**20
STEP_TIME = {'width': 16, 'image': 32, 'num_classes': 10, 'global_batch': 64, 'devices': 8}


def width_of(model):
  return 64 if model == 'resnet18' else FLAGS.wide_width


def rules(devices):
  if devices == 1:
    return [('replicate', 0.0)]
  return [('replicate', 0.0)] + [('fsdp', float(m)) for m in FLAGS.fsdp_min_size_mib]


def memory_worker():
  mesh = sharded_step.worker_mesh()
  devices = mesh.shape[parallel.AXIS]
  info = sharded_step.image_info(FLAGS.image, FLAGS.num_classes)
  for model in FLAGS.models:
    for rule, min_mib in rules(devices):
      config = sharded_step.config_for(width_of(model), rule=rule, fsdp_min_size_mib=min_mib)
      compiled, abstract, shardings, compile_s = sharded_step.compile_step(
        config, info, mesh, FLAGS.per_device_batch
      )
      sharded_step.emit(
        {
          'model': model,
          'width': width_of(model),
          'devices': devices,
          'rule': rule,
          'fsdp_min_size_mib': min_mib if rule == 'fsdp' else None,
          **sharded_step.state_summary(abstract, shardings, devices),
          **sharded_step.memory(compiled),
          'compile_s': compile_s,
        }
      )


def step_time_worker():
  mesh = sharded_step.worker_mesh()
  devices = mesh.shape[parallel.AXIS]
  info = sharded_step.image_info(STEP_TIME['image'], STEP_TIME['num_classes'])
  rng = np.random.default_rng(0)
  batch_size, shape = STEP_TIME['global_batch'], info.example_shape
  host_batches = [
    {
      'image': rng.integers(0, 256, (batch_size, *shape), np.uint8),
      'label': rng.integers(0, info.num_classes, batch_size).astype(np.int32),
      'mask': np.ones(batch_size, np.float32),
    }
    for _ in range(FLAGS.repeats + 1)
  ]
  for rule in ('replicate', 'fsdp'):
    config = sharded_step.config_for(STEP_TIME['width'], rule=rule, fsdp_min_size_mib=0.0)
    tx = optimizers.create(config, 1000)
    graphdef, state = steps.create_train_state(config, info, tx, mesh)
    step = parallel.map_over_devices(
      functools.partial(steps.train_step, graphdef=graphdef, tx=tx, config=config, info=info),
      mesh,
      'jit',
      state_sharding=sharding.of(state),
      donate_state=True,
    )
    batches = [parallel.to_global(b, mesh) for b in host_batches]
    start = time.perf_counter()
    state, sums = step(state, batches[0])
    first_loss = float(jax.device_get(sums['loss_sum'] / sums['count']))
    first_s = time.perf_counter() - start
    times = []
    for batch in batches[1:]:
      start = time.perf_counter()
      state, sums = step(state, batch)
      jax.block_until_ready((state, sums))
      times.append(time.perf_counter() - start)
    sharded_step.emit(
      {
        'rule': rule,
        'fsdp_min_size_mib': 0.0 if rule == 'fsdp' else None,
        'devices': devices,
        **STEP_TIME,
        'state_bytes_per_device': sharding.bytes_per_device(state, sharding.of(state)),
        'first_call_s': first_s,
        'first_step_loss': first_loss,
        'step_s_median': statistics.median(times),
        'step_s_min': min(times),
        'step_s_max': max(times),
        'repeats': len(times),
      }
    )


def print_memory(rows):
  print(
    f'{"model":<9}{"N":>3} {"rule":<11}{"state MiB":>10}{"/device":>9}{"ratio":>7}'
    f'{"args MiB":>10}{"out MiB":>9}{"temp MiB":>10}{"compile s":>10}'
  )
  for r in rows:
    rule = r['rule'] if r['rule'] == 'replicate' else f'fsdp>={r["fsdp_min_size_mib"]:g}M'
    print(
      f'{r["model"]:<9}{r["devices"]:>3} {rule:<11}{r["state_bytes"] / MIB:>10.1f}'
      f'{r["state_bytes_per_device"] / MIB:>9.1f}{r["ratio_to_even_split"]:>7.3f}'
      f'{r["argument_bytes"] / MIB:>10.1f}{r["output_bytes"] / MIB:>9.1f}'
      f'{r["temp_bytes"] / MIB:>10.1f}{r["compile_s"]:>10.1f}'
    )


def main(argv):
  del argv
  if FLAGS.worker:
    return memory_worker() if FLAGS.task == 'memory' else step_time_worker()
  kind = results_file.machine_kind(FLAGS.machine_kind)
  script, fields = os.path.abspath(__file__), {}
  passed = [
    f'--models={",".join(FLAGS.models)}',
    f'--wide_width={FLAGS.wide_width}',
    f'--image={FLAGS.image}',
    f'--num_classes={FLAGS.num_classes}',
    f'--per_device_batch={FLAGS.per_device_batch}',
    f'--fsdp_min_size_mib={",".join(FLAGS.fsdp_min_size_mib)}',
    f'--repeats={FLAGS.repeats}',
  ]
  if FLAGS.memory:
    print(
      f'Memory per device: AdamW, float32, {FLAGS.image}x{FLAGS.image}x3 images, '
      f'{FLAGS.num_classes} classes, {FLAGS.per_device_batch} images per device; ratio = '
      'state bytes per device / (state bytes / N) (fsdp goal: within 5 %). Compiled from '
      'abstract shapes; nothing allocated.',
      flush=True,
    )
    rows = sharded_step.run_workers(script, [int(n) for n in FLAGS.device_counts], passed)
    rows.sort(key=lambda r: (FLAGS.models.index(r['model']), r['devices']))
    parameters = {r['model']: r['parameters'] for r in rows}
    for model, count in parameters.items():
      print(f'{model}: width {width_of(model)}, {count / 1e6:.2f}M parameters')
    print_memory(rows)
    print('(N = 1: fsdp places every array as replicate does, so only replicate is compiled.)')
    fields['memory'] = {
      'image': FLAGS.image,
      'num_classes': FLAGS.num_classes,
      'per_device_batch': FLAGS.per_device_batch,
      'optimizer': 'adamw',
      'dtype': 'float32',
      'parameters': parameters,
      'rows': rows,
    }
  if FLAGS.step_time:
    print(
      f'\nStep time: ResNet-18 layout width {STEP_TIME["width"]}, {STEP_TIME["image"]}x'
      f'{STEP_TIME["image"]}, global batch {STEP_TIME["global_batch"]}, AdamW, '
      f'{STEP_TIME["devices"]} forced CPU devices on {os.cpu_count()} cores (overhead only); '
      f'median of {FLAGS.repeats} steps after the compiling one.',
      flush=True,
    )
    rows = sharded_step.run_workers(script, [STEP_TIME['devices']], [*passed, '--task=step_time'])
    print(
      f'{"rule":<11}{"state MiB/device":>17}{"first call s":>13}{"step s":>8}'
      f'{"min-max":>14}{"loss 1":>9}'
    )
    for r in rows:
      rule = r['rule'] if r['rule'] == 'replicate' else 'fsdp>=0M'
      print(
        f'{rule:<11}{r["state_bytes_per_device"] / MIB:>17.2f}{r["first_call_s"]:>13.1f}'
        f'{r["step_s_median"]:>8.3f}{r["step_s_min"]:>7.3f}-{r["step_s_max"]:<6.3f}'
        f'{r["first_step_loss"]:>9.4f}'
      )
    fields['step_time'] = {'rows': rows}
  path = results_file.write(
    f'sharding_memory-{kind}',
    kind,
    {
      **fields,
      'note': 'Memory per device from sharding.bytes_per_device and compiled.memory_analysis() '
      '(arguments include the batch shard; outputs alias the donated state). Step times: forced '
      'CPU devices share the cores, so they show overhead, not speed.',
    },
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
