"""The reference's runs as a results file: reads airbench94's printed table (its `eval` rows: run
number, TTA accuracy, seconds) from a log and writes experiments/benchmarks/results/
airbench-<machine kind>.json, beside fast_cifar10-<machine kind>.json.

  python experiments/benchmarks/airbench_results.py LOG --machine_kind=nvidia-h200 \
      --compile_mode=default [--torch=2.11.0+cu130]

gpu_run.sh runs it after the reference step, on the GPU machine.
"""

import os
import re
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_string('compile_mode', 'default', "torch.compile's mode the reference ran with.")
flags.DEFINE_string('torch', None, 'PyTorch version (default: the installed one).')

# A run's first row names it ("|  3  |  0  | ..."); its last, "|  |  eval  | train | val | tta |
# seconds |", holds its TTA accuracy and seconds. The warm-up run is not counted.
RUN = re.compile(r'^\|\s+(\d+|warmup)\s+\|\s+0\s+\|')
EVAL = re.compile(
  r'^\|\s+\|\s+eval\s+\|\s+[\d.]+\s+\|\s+[\d.]+\s+\|\s+([\d.]+)\s+\|\s+([\d.]+)\s+\|'
)


def parse(lines):
  runs, run = [], None
  for line in lines:
    if match := RUN.match(line):
      run = match.group(1)
    elif (match := EVAL.match(line)) and run not in (None, 'warmup'):
      runs.append({'run': int(run), 'accuracy': float(match[1]), 'seconds': float(match[2])})
  return runs


def main(argv):
  import results_file

  with open(argv[1]) as f:
    runs = parse(f)
  if not runs:
    sys.exit(f'error: no finished airbench run in {argv[1]}')
  if FLAGS.torch:
    torch_version = FLAGS.torch
  else:
    import torch

    torch_version = torch.__version__
  summary = results_file.runs_summary(runs)
  kind = results_file.machine_kind(FLAGS.machine_kind)
  settings = {'script': 'peers/airbench/airbench94_muon.py', 'compile_mode': FLAGS.compile_mode}
  path = results_file.write(
    f'airbench-{kind}',
    kind,
    {'settings': settings, 'summary': summary, 'runs': runs},
    versions={'torch': torch_version},
  )
  print(f'{results_file.runs_line(summary)}; wrote {path}')


if __name__ == '__main__':
  app.run(main)
