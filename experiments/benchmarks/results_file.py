"""Where every benchmark script writes its results: experiments/benchmarks/results/<name>.json,
each file carrying the date, the machine and the library versions beside the script's own fields.
"""

import datetime
import json
import os
import platform
import statistics

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


def runs_summary(runs: list[dict]) -> dict:
  """Mean, standard deviation (ddof=1), median, min and max of the runs' 'seconds' and
  'accuracy': how repeated timed runs (a recipe's, its reference's) are reported."""
  summary = {'runs': len(runs)}
  for field in ('seconds', 'accuracy'):
    values = [r[field] for r in runs]
    summary[f'mean_{field}'] = statistics.mean(values)
    summary[f'std_{field}'] = statistics.stdev(values) if len(values) > 1 else 0.0
    summary[f'median_{field}'] = statistics.median(values)
    summary[f'min_{field}'], summary[f'max_{field}'] = min(values), max(values)
  return summary


def runs_line(summary: dict) -> str:
  return (
    f'{summary["runs"]} runs: seconds a run mean {summary["mean_seconds"]:.3f} ± '
    f'{summary["std_seconds"]:.3f}, median {summary["median_seconds"]:.3f} '
    f'({summary["min_seconds"]:.3f}-{summary["max_seconds"]:.3f}); accuracy mean '
    f'{summary["mean_accuracy"]:.4f} ± {summary["std_accuracy"]:.4f}, median '
    f'{summary["median_accuracy"]:.4f} ({summary["min_accuracy"]:.4f}-{summary["max_accuracy"]:.4f})'
  )
