"""Whether a model exported here (`python -m dlearn.export`, on a CPU) runs on a GPU machine with the
README's lines alone (jax and numpy, no dlearn), giving the CPU's classes and probabilities.

  here:   python experiments/benchmarks/export_on_gpu.py prepare DIR NAME=WORKDIR:INPUT...
  there:  python3 experiments/benchmarks/export_on_gpu.py check DIR

`prepare` exports each WORKDIR to DIR/NAME and writes beside it inputs.npz (the first 256 inputs:
INPUT is a prepared split's name, e.g. `validation`, for an image model, or a `.ts` file for a
sequence model) and cpu.txt, what the README's lines print here. `check` runs the same lines on
the default device for each DIR/NAME, compares with cpu.txt (same class for every input; the
largest probability difference) and times the deserialized model on a batch of 1,024 inputs.
Writes DIR/check.json.
"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, '..', '..', 'README.md')
INPUTS = 256


def readme_lines() -> str:
  """The README's 'save as run_model.py' block (tests/test_predict.py runs the same)."""
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  return next(block for block in blocks if 'jax.export.deserialize' in block)


def run_readme_lines(folder: str) -> str:
  script = os.path.join(folder, 'run_model.py')
  with open(script, 'w') as f:
    f.write(readme_lines())
  result = subprocess.run(
    [sys.executable, script, folder, os.path.join(folder, 'inputs.npz')],
    capture_output=True,
    text=True,
    check=True,
  )
  return result.stdout


def parse(printed: str):
  rows = [line.split() for line in printed.splitlines()]
  classes = [row[0] for row in rows]
  probabilities = np.array([[float(p.split('=')[1]) for p in row[1:]] for row in rows])
  return classes, probabilities


def prepare(folder: str, specs) -> None:
  import jax

  from dlearn import configs, exporting
  from dlearn.data import pipeline, ts_format

  for spec in specs:
    name, _, rest = spec.partition('=')
    workdir, _, source = rest.partition(':')
    out = os.path.join(folder, name)
    exporting.export(workdir, out)
    if source.endswith('.ts'):
      with open(os.path.join(out, 'model.bin'), 'rb') as f:
        time_steps = jax.export.deserialize(bytearray(f.read())).in_avals[0].shape[1]
      sequences = ts_format.read_ts(source).sequences[:INPUTS]
      padded = np.zeros((len(sequences), time_steps, sequences[0].shape[-1]), np.float32)
      for i, sequence in enumerate(sequences):
        padded[i, : len(sequence)] = sequence[:time_steps]
      lengths = np.array([min(len(s), time_steps) for s in sequences], np.int32)
      np.savez(os.path.join(out, 'inputs.npz'), sequences=padded, lengths=lengths)
    else:
      config = configs.load(workdir)
      split = pipeline.load_split(config.data.name, source, config.data.data_dir)
      images = np.stack([split[i]['image'] for i in range(min(INPUTS, len(split)))])
      np.savez(os.path.join(out, 'inputs.npz'), images=images)
    with open(os.path.join(out, 'cpu.txt'), 'w') as f:
      f.write(run_readme_lines(out))
    print(f'{out}: exported, {INPUTS} inputs, cpu.txt')


def check(folder: str) -> None:
  if not os.path.isdir(folder):
    sys.exit(f'error: no folder {folder}: run `{sys.argv[0]} prepare {folder} ...` here first')
  import jax

  results = {'device': str(jax.devices()[0]), 'jax': jax.__version__, 'models': {}}
  for name in sorted(os.listdir(folder)):
    out = os.path.join(folder, name)
    if not os.path.isfile(os.path.join(out, 'cpu.txt')):
      continue
    with open(os.path.join(out, 'cpu.txt')) as f:
      cpu_classes, cpu = parse(f.read())
    classes, here = parse(run_readme_lines(out))
    with open(os.path.join(out, 'model.bin'), 'rb') as f:
      model = jax.export.deserialize(bytearray(f.read()))
    inputs = dict(np.load(os.path.join(out, 'inputs.npz')))
    tiled = [np.resize(x, (1024, *x.shape[1:])) for x in inputs.values()]
    tiled = [jax.device_put(x) for x in tiled]
    jax.block_until_ready(model.call(*tiled))  # compilation
    start = time.perf_counter()
    for _ in range(10):
      outputs = model.call(*tiled)
    jax.block_until_ready(outputs)
    per_second = 10 * 1024 / (time.perf_counter() - start)
    results['models'][name] = row = {
      'inputs': len(classes),
      'same_class': int(sum(a == b for a, b in zip(classes, cpu_classes))),
      'max_probability_difference': float(np.abs(here - cpu).max()),
      'inputs_per_second_batch_1024': per_second,
    }
    print(f'{name} on {results["device"]}: {row}', flush=True)
  with open(os.path.join(folder, 'check.json'), 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  if len(sys.argv) >= 3 and sys.argv[1] == 'check':
    check(sys.argv[2])
  elif len(sys.argv) >= 4 and sys.argv[1] == 'prepare':
    prepare(sys.argv[2], sys.argv[3:])
  else:
    sys.exit(__doc__)
