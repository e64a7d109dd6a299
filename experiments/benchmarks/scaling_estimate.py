"""How dlearn's data-parallel train step would scale from 8 to 256 accelerators: a model built from
the compiled step itself (its collectives and FLOPs), not a measurement of scaling.

  python experiments/benchmarks/scaling_estimate.py [--utilisation=0.4] [--wide_width=192]
      [--wide_per_device_batch=32]

Compiled on 8 forced CPU devices (one subprocess; abstract shapes only, nothing allocated), in
mixed precision (config.dtype='bfloat16': bf16 compute, float32 parameters, gradients and AdamW
state), these workloads, per-device batch fixed (weak scaling):
  resnet18-224   ResNet-18 (dlearn's CIFAR-style ResNet: 3x3 stem, stride 1, no max pooling; at
                 224x224 ~15x the FLOPs of the ImageNet ResNet-18), 1000 classes, 128/device,
                 replicate;
  resnet18-32    the same at 32x32, 10 classes (CIFAR-shaped), 128/device, replicate;
  wide-224       the ResNet-18 layout at --wide_width (102M parameters at 192), 224x224, 1000
                 classes, --wide_per_device_batch/device, replicate and fsdp (dlearn's default
                 fsdp_min_size_mib, 64 KiB).
From each compiled step: the collectives of its HLO (`compiled.as_text()`; count, and bytes from
their result shapes) and its FLOPs per device (`compiled.cost_analysis()`).

Model. Compute time = FLOPs per device / (peak * --utilisation). Communication, for n devices and
bus bandwidth bw: a ring all-reduce of B bytes takes 2(n-1)/n * B / bw; all-gather, reduce-scatter
and all-to-all (n-1)/n * B / bw; collective-permute B / bw. Step time with no overlap = compute +
communication; with perfect overlap = max(compute, communication). Scaling efficiency at n = step
time at 8 / step time at n. Systems (constants below, with their sources):
  H100 cluster   8 GPUs per node on NVLink; beyond 8, two bounds: 'ring' (a flat ring whose every
                 byte is held to one GPU's InfiniBand NIC, 50 GB/s) and '2-level' (reduce-scatter
                 in the node over NVLink, all-reduce of each GPU's 1/8 across the nodes over its
                 own NIC, all-gather in the node). H200 has the same compute and NVLink figures.
  TPU v5e pod    up to 256 chips on one ICI 2-D torus; ICI taken as the bus bandwidth at every n.
The single-device check: the FLOPs of the step that experiments/benchmarks/results/nvidia-h200.json
(float32) and nvidia-h200-bfloat16.json timed ('resnet18 b128': ResNet-18, 32x32, batch 128, SGD,
no augmentation; compiled here in that shape on 1 device), its predicted step time at
--utilisation, and the utilisation the measured time implies.

Where the model is crude:
- no latency term: every collective is bandwidth only. Under config.mapping='jit' BatchNorm's
  statistics are those of the global batch, so each BatchNorm layer adds small all-reduces on the
  critical path (the counts are printed): at microseconds each, they matter for small steps;
- overlap is not measured: the two step times bound it (XLA's GPU scheduler overlaps some
  collectives with compute; how much is unknown here);
- the HLO is XLA CPU's. The GPU compiler combines, splits, schedules and may choose collectives
  differently: XLA CPU all-reduces fsdp's whole gradients and slices them (no reduce-scatter in its
  HLO), where XLA GPU's reduce-scatter pass would make them reduce-scatters; the fsdp rows show
  both (the sharded parameters' gradient bytes moved from all-reduce to reduce-scatter);
- collective bytes are those of the 8-device program for every n; fsdp at larger n would leave
  arrays whose dimensions n does not divide replicated (all-reduced instead);
- utilisation is one constant for every n and every layer; memory-bound work (BatchNorm,
  elementwise, the optimizer; most of a small 32x32 step) is not modelled apart;
- bus bandwidths are taken as achieved: no contention, topology, SHARP/NVLS, stragglers, host or
  input pipeline;
- the H200 measurements are of one GPU, by an earlier dlearn (suite.py, before config.mapping='jit')
  under jax 0.11.2; this count is of today's step under this machine's jax.

Results: experiments/benchmarks/results/scaling_estimate-<machine kind>.json.

Findings: README, "Sharding".
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import results_file  # noqa: E402  (beside this script)
import sharded_step  # noqa: E402
from absl import app, flags  # noqa: E402

from dlearn import parallel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float('utilisation', 0.4, 'Assumed fraction of peak FLOP/s the compute reaches.')
flags.DEFINE_integer('wide_width', 192, "The 'wide' model's width (ResNet-18 layout).")
flags.DEFINE_integer('wide_per_device_batch', 32, "The 'wide' model's images per device.")
flags.DEFINE_list('device_counts', ['8', '16', '32', '64', '128', '256'], 'n of the tables.')
flags.DEFINE_string('hlo_dir', None, "Also write each compiled step's HLO text there.")
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_bool('worker', False, 'Internal: run in a subprocess with --devices devices.')
flags.DEFINE_integer('devices', 0, 'Internal: the worker process device count.')
flags.DEFINE_enum('task', 'scaling', ['scaling', 'single'], 'Internal: what the worker compiles.')

# NVIDIA H100 SXM5 datasheet: BF16 tensor core 1,979 TFLOP/s with sparsity = 989 dense; TF32
# 989 with sparsity = 494.7 dense. The H200 SXM datasheet gives the same compute figures.
H100_BF16_FLOPS = 989e12
H100_TF32_FLOPS = 494.7e12
# NVLink 4 on H100/H200 SXM: 900 GB/s per GPU, both directions together = 450 GB/s each way,
# taken as the all-reduce algorithms' bus bandwidth within an 8-GPU node.
NVLINK_BW = 450e9
GPUS_PER_NODE = 8
# Between nodes: 8 x 400 Gb/s NDR InfiniBand per node (DGX H100: one ConnectX-7 per GPU), 400
# Gb/s = 50 GB/s per GPU.
IB_BW = 50e9
# Google Cloud TPU v5e page (cloud.google.com/tpu/docs/v5e): 197 TFLOP/s bf16 per chip; ICI
# 1,600 Gb/s per chip (400 GB/s bidirectional) = 200 GB/s each way; 256 chips per pod (2-D torus);
# 'all-reduce bandwidth per Pod 51.2 TB/s' = 200 GB/s per chip, taken as the bus bandwidth at
# every n (an upper bound for slices: a partial torus has fewer wrap-around links).
TPU_V5E_BF16_FLOPS = 197e12
TPU_V5E_ICI_BW = 200e9

# Published anchors (not computed here).
ANCHORS = [
  'Goyal et al. 2017 (Accurate, Large Minibatch SGD; arXiv 1706.02677), ResNet-50 on ImageNet, '
  'Caffe2 on commodity hardware: ~90 % scaling efficiency from 8 to 256 GPUs.',
  'MLPerf Training ResNet-50: 8 x H100 796 s, 64 x H100 150 s: 5.3x for 8x the GPUs, 66 % '
  'efficiency (time to accuracy: the global batch grows too, which costs epochs).',
]

WORKLOADS = [
  # name, width, image, classes, per-device batch (None: --wide_per_device_batch), rule
  ('resnet18-224', 64, 224, 1000, 128, 'replicate'),
  ('resnet18-32', 64, 32, 10, 128, 'replicate'),
  ('wide-224', None, 224, 1000, None, 'replicate'),
  ('wide-224', None, 224, 1000, None, 'fsdp'),
]
H200_RESULTS = {
  'float32': ('nvidia-h200.json', H100_TF32_FLOPS, 'TF32'),
  'bfloat16': ('nvidia-h200-bfloat16.json', H100_BF16_FLOPS, 'BF16'),
}


def scaling_worker():
  mesh = sharded_step.worker_mesh()
  devices = mesh.shape[parallel.AXIS]
  for name, width, image, classes, batch, rule in WORKLOADS:
    width, batch = width or FLAGS.wide_width, batch or FLAGS.wide_per_device_batch
    config = sharded_step.config_for(width, rule=rule, dtype='bfloat16')
    compiled, abstract, shardings, compile_s = sharded_step.compile_step(
      config, sharded_step.image_info(image, classes), mesh, batch
    )
    hlo = compiled.as_text()
    if FLAGS.hlo_dir:
      os.makedirs(FLAGS.hlo_dir, exist_ok=True)
      with open(os.path.join(FLAGS.hlo_dir, f'{name}-{rule}-{devices}.hlo.txt'), 'w') as f:
        f.write(hlo)
    sharded_step.emit(
      {
        'workload': name,
        'width': width,
        'image': image,
        'num_classes': classes,
        'per_device_batch': batch,
        'rule': rule,
        'fsdp_min_size_mib': config.fsdp_min_size_mib if rule == 'fsdp' else None,
        'dtype': 'bfloat16',
        'optimizer': 'adamw',
        'devices': devices,
        'flops_per_device': sharded_step.flops(compiled),
        'collectives': sharded_step.collectives(hlo, devices),
        'sharded_parameter_bytes': sharded_step.sharded_parameter_bytes(abstract, shardings),
        **sharded_step.state_summary(abstract, shardings, devices),
        **sharded_step.memory(compiled),
        'compile_s': compile_s,
      }
    )


def single_worker():
  """The H200-measured step's shape (suite.py's 'resnet18 b128': SGD, 10 classes) on 1 device."""
  mesh = sharded_step.worker_mesh()
  for dtype in H200_RESULTS:
    config = sharded_step.config_for(64, optimizer='sgd', dtype=dtype)
    compiled, _, _, compile_s = sharded_step.compile_step(
      config, sharded_step.image_info(32, 10), mesh, 128
    )
    sharded_step.emit(
      {'dtype': dtype, 'flops': sharded_step.flops(compiled), 'compile_s': compile_s}
    )


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
def ring_seconds(op, size, n, bw):
  if n == 1 or size == 0:
    return 0.0
  if op == 'all-reduce':
    return 2 * (n - 1) / n * size / bw
  if op == 'collective-permute':
    return size / bw
  return (n - 1) / n * size / bw  # all-gather, reduce-scatter, all-to-all


def two_level_seconds(op, size, n):
  """Within a node over NVLink, between nodes each GPU's 1/8 over its own NIC."""
  if n <= GPUS_PER_NODE:
    return ring_seconds(op, size, n, NVLINK_BW)
  nodes, inner = n // GPUS_PER_NODE, GPUS_PER_NODE
  if op == 'all-reduce':  # reduce-scatter in the node, all-reduce across, all-gather in the node
    return 2 * ring_seconds('all-gather', size, inner, NVLINK_BW) + ring_seconds(
      'all-reduce', size / inner, nodes, IB_BW
    )
  if op in ('all-gather', 'reduce-scatter'):
    return ring_seconds(op, size, inner, NVLINK_BW) + ring_seconds(op, size / inner, nodes, IB_BW)
  return ring_seconds(op, size, n, IB_BW)  # all-to-all, permute: mostly across nodes


def network_seconds(collectives, n, network):
  total = 0.0
  for op, c in collectives.items():
    if network == 'h100-ring':
      total += ring_seconds(op, c['bytes'], n, NVLINK_BW if n <= GPUS_PER_NODE else IB_BW)
    elif network == 'h100-2level':
      total += two_level_seconds(op, c['bytes'], n)
    else:  # 'tpu-v5e'
      total += ring_seconds(op, c['bytes'], n, TPU_V5E_ICI_BW)
  return total


def as_reduce_scatter(collectives, sharded_bytes):
  """fsdp's collectives as XLA GPU would make them (the docstring): the sharded parameters'
  gradients reduce-scattered instead of all-reduced whole."""
  moved = min(sharded_bytes, collectives['all-reduce']['bytes'])
  out = json.loads(json.dumps(collectives))
  out['all-reduce']['bytes'] -= moved
  out['reduce-scatter']['bytes'] += moved
  return out


SYSTEMS = [
  # name, peak FLOP/s, networks (column groups)
  (
    'H100/H200 cluster (8/node NVLink, IB between nodes)',
    H100_BF16_FLOPS,
    ['h100-ring', 'h100-2level'],
  ),
  ('TPU v5e pod (ICI)', TPU_V5E_BF16_FLOPS, ['tpu-v5e']),
]


def table(collectives, flops, peak, networks, counts, utilisation=None):
  compute = flops / (peak * (utilisation or FLAGS.utilisation))
  rows = []
  for n in counts:
    row = {'n': n, 'compute_s': compute}
    for network in networks:
      comm = network_seconds(collectives, n, network)
      row[network] = {
        'comm_s': comm,
        'no_overlap_s': compute + comm,
        'overlap_s': max(compute, comm),
      }
    rows.append(row)
  for row in rows:
    for network in networks:
      first = rows[0][network]
      r = row[network]
      r['efficiency_no_overlap'] = first['no_overlap_s'] / r['no_overlap_s']
      r['efficiency_overlap'] = first['overlap_s'] / r['overlap_s']
  return rows


def describe_collectives(collectives):
  return ', '.join(
    f'{op} {c["count"]} x {c["bytes"] / 1e6:.1f} MB' for op, c in collectives.items() if c['count']
  )


def print_table(rows, networks):
  header = f'{"n":>5}{"compute ms":>11}'
  for network in networks:
    header += f' | {network:<11}{"comm ms":>9}{"step ms":>9}{"overlap":>9}{"eff":>6}{"eff ovl":>8}'
  print(header)
  for row in rows:
    line = f'{row["n"]:>5}{1e3 * row["compute_s"]:>11.2f}'
    for network in networks:
      r = row[network]
      line += (
        f' | {"":<11}{1e3 * r["comm_s"]:>9.2f}{1e3 * r["no_overlap_s"]:>9.2f}'
        f'{1e3 * r["overlap_s"]:>9.2f}{r["efficiency_no_overlap"]:>6.2f}{r["efficiency_overlap"]:>8.2f}'
      )
    print(line)


def h200_check(single_rows):
  print(
    '\nSingle-device check: ResNet-18, 32x32, batch 128, SGD (suite.py\'s "resnet18 b128"), '
    'measured on one H200 against FLOPs counted here'
  )
  print(
    f'{"dtype":<9}{"peak":>6}{"FLOPs/step":>12}{"json FLOPs":>12}{"measured ms":>12}'
    f'{"examples/s":>11}{"predicted ms":>13}{"implied util":>13}'
  )
  out = []
  for row in single_rows:
    name, peak, peak_name = H200_RESULTS[row['dtype']]
    with open(os.path.join(results_file.FOLDER, name)) as f:
      measured = next(
        r
        for r in json.load(f)['rows']
        if r['workload'] == 'resnet18 b128' and r['framework'] == 'dlearn'
      )
    seconds = measured['step_ms_median'] / 1e3
    # The FLOPs that the file's own TFLOP/s column stands for (XLA GPU's cost analysis there).
    json_flops = measured['tflops_per_second'] * 1e12 * seconds
    predicted = row['flops'] / (peak * FLAGS.utilisation)
    implied = row['flops'] / seconds / peak
    print(
      f'{row["dtype"]:<9}{peak_name:>6}{row["flops"] / 1e9:>10.1f} G{json_flops / 1e9:>10.2f} G'
      f'{1e3 * seconds:>12.3f}{measured["examples_per_second"]:>11.0f}{1e3 * predicted:>13.3f}'
      f'{implied:>12.1%}'
    )
    out.append(
      {
        **row,
        'results_file': name,
        'peak_flops': peak,
        'measured_step_s': seconds,
        'measured_examples_per_second': measured['examples_per_second'],
        'json_tflops_implied_flops': json_flops,
        'predicted_step_s': predicted,
        'implied_utilisation': implied,
      }
    )
  return out


def implied_utilisation_check(estimates, compiled_rows, checks, counts):
  """Scaling efficiency at the largest n on the H100 cluster with compute at --utilisation and at
  the utilisation the bf16 H200 measurement implies (a ResNet-18 32x32 figure, applied to every
  workload): slower compute hides more communication."""
  implied = next(c['implied_utilisation'] for c in checks if c['dtype'] == 'bfloat16')
  n, networks = counts[-1], SYSTEMS[0][2]
  print(
    f'\nH100 cluster, efficiency at n={n} (no overlap) with compute at {FLAGS.utilisation:.0%} '
    f'and at {implied:.1%} (what the bf16 H200 measurement implies):'
  )
  print(
    f'{"workload":<36}'
    + ''.join(f'{f"{w} {u}":>22}' for w in networks for u in ('assumed', 'implied'))
  )
  flops = {(r['workload'], r['rule']): r['flops_per_device'] for r in compiled_rows}
  out = []
  for e in estimates:
    if e['system'] != SYSTEMS[0][0]:
      continue
    key = (e['workload'], e['rule'])
    at_implied = table(e['collectives'], flops[key], SYSTEMS[0][1], networks, counts, implied)
    short = 'as compiled' if e['variant'].startswith('as compiled') else 'reduce-scatter'
    label = f'{e["workload"]} {e["rule"]}, {short}'
    line = f'{label:<36}'
    entry = {'workload': e['workload'], 'rule': e['rule'], 'variant': e['variant'], 'n': n}
    for network in networks:
      assumed_eff = e['rows'][-1][network]['efficiency_no_overlap']
      implied_eff = at_implied[-1][network]['efficiency_no_overlap']
      line += f'{assumed_eff:>22.2f}{implied_eff:>22.2f}'
      entry[network] = {'assumed': assumed_eff, 'implied': implied_eff}
    print(line)
    out.append({**entry, 'implied_utilisation': implied})
  return out


def main(argv):
  del argv
  if FLAGS.worker:
    return scaling_worker() if FLAGS.task == 'scaling' else single_worker()
  kind = results_file.machine_kind(FLAGS.machine_kind)
  script = os.path.abspath(__file__)
  passed = [
    f'--wide_width={FLAGS.wide_width}',
    f'--wide_per_device_batch={FLAGS.wide_per_device_batch}',
  ]
  passed += [f'--hlo_dir={os.path.abspath(FLAGS.hlo_dir)}'] if FLAGS.hlo_dir else []
  print(
    'Compiling on 8 forced CPU devices (abstract shapes), then on 1 for the H200 check.', flush=True
  )
  compiled_rows = sharded_step.run_workers(script, [8], [*passed, '--task=scaling'])
  single_rows = sharded_step.run_workers(script, [1], [*passed, '--task=single'])
  counts = [int(n) for n in FLAGS.device_counts]
  estimates = []
  print(
    f'\nWeak scaling (per-device batch fixed); compute at {FLAGS.utilisation:.0%} of bf16 peak; '
    "efficiency = step time at 8 / at n. 'eff': no overlap, 'eff ovl': perfect overlap."
  )
  for row in compiled_rows:
    variants = [('as compiled (XLA CPU)', row['collectives'])]
    if row['rule'] == 'fsdp':
      variants.append(
        (
          'sharded gradients as reduce-scatter (XLA GPU)',
          as_reduce_scatter(row['collectives'], row['sharded_parameter_bytes']),
        )
      )
    for variant, collectives in variants:
      title = (
        f'{row["workload"]} width {row["width"]} ({row["parameters"] / 1e6:.1f}M parameters), '
        f'{row["per_device_batch"]}/device, {row["rule"]}'
        + (f' >= {row["fsdp_min_size_mib"]:g} MiB' if row['rule'] == 'fsdp' else '')
        + f', {variant}: {row["flops_per_device"] / 1e12:.3f} TFLOP/device/step'
      )
      print(f'\n{title}\n  collectives at N=8: {describe_collectives(collectives)}')
      for system, peak, networks in SYSTEMS:
        print(f'  {system}, peak {peak / 1e12:.0f} TFLOP/s:')
        rows = table(collectives, row['flops_per_device'], peak, networks, counts)
        print_table(rows, networks)
        estimates.append(
          {
            'workload': row['workload'],
            'rule': row['rule'],
            'variant': variant,
            'system': system,
            'collectives': collectives,
            'rows': rows,
          }
        )
  print('\nPublished anchors:')
  for anchor in ANCHORS:
    print(f'  - {anchor}')
  checks = h200_check(single_rows)
  sensitivity = implied_utilisation_check(estimates, compiled_rows, checks, counts)
  path = results_file.write(
    f'scaling_estimate-{kind}',
    kind,
    {
      'utilisation': FLAGS.utilisation,
      'constants': {
        'H100_BF16_FLOPS': H100_BF16_FLOPS,
        'H100_TF32_FLOPS': H100_TF32_FLOPS,
        'NVLINK_BW': NVLINK_BW,
        'IB_BW': IB_BW,
        'GPUS_PER_NODE': GPUS_PER_NODE,
        'TPU_V5E_BF16_FLOPS': TPU_V5E_BF16_FLOPS,
        'TPU_V5E_ICI_BW': TPU_V5E_ICI_BW,
      },
      'compiled': compiled_rows,
      'estimates': estimates,
      'anchors': ANCHORS,
      'single_device_check': checks,
      'sensitivity': sensitivity,
      'note': 'A model, not a measurement of scaling: FLOPs and collectives of the step compiled '
      'on forced CPU devices; bandwidths and peaks are published figures (script constants).',
    },
  )
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
