"""Where every benchmark script writes its results: experiments/benchmarks/results/<name>.json,
each file carrying the date, the machine and the library versions beside the script's own fields.
"""

import datetime
import json
import os
import platform

import jax

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def machine_kind(override: str | None = None) -> str:
  """The results file's machine name: `override`, else e.g. 'cpu-2core' or 'nvidia-h100-80gb-hbm3'."""
  device = jax.devices()[0]
  return override or (
    f'cpu-{os.cpu_count()}core'
    if device.platform == 'cpu'
    else device.device_kind.replace(' ', '-').lower()
  )


def write(name: str, kind: str, fields: dict, versions: dict | None = None) -> str:
  """Writes results/<name>.json: the machine's description, then `fields`; returns the path."""
  device = jax.devices()[0]
  output = {
    'date': datetime.date.today().isoformat(),
    'machine_kind': kind,
    'device': f'{device.platform} {device.device_kind}',
    'device_count': jax.device_count(),
    'cpu_count': os.cpu_count(),
    'processor': platform.processor() or platform.machine(),
    'python': platform.python_version(),
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'versions': {'jax': jax.__version__, **(versions or {})},
    **fields,
  }
  os.makedirs(FOLDER, exist_ok=True)
  path = os.path.join(FOLDER, f'{name}.json')
  with open(path, 'w') as f:
    json.dump(output, f, indent=2)
  return path
