"""The benchmarks' own reading of what they measure: the reference's printed runs, the summary of
repeated runs, and a profiler trace; and the synthetic data they make (experiments/benchmarks/)."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'experiments', 'benchmarks'))

import airbench_results  # noqa: E402
import numpy as np  # noqa: E402
import profile_summary  # noqa: E402
import results_file  # noqa: E402
import synthetic_ts  # noqa: E402

from dlearn.data import ts_format  # noqa: E402

# airbench94's table (../shared/peers/airbench), as gpu_run.sh's log holds it: a warm-up run, then
# runs 0 and 1; each run's last row ('eval') holds its TTA accuracy and seconds.
AIRBENCH_LOG = """\
|  warmup  |      0  |     0.1080  |   0.0890  |               |       27.8835  |
|          |   eval  |     0.1120  |   0.0800  |       0.0802  |       56.1203  |
---------------------------------------------------------------------------------
|       0  |      0  |     0.6755  |   0.6074  |               |        0.2661  |
|          |      7  |     0.9545  |   0.8964  |               |        2.0584  |
|          |   eval  |     0.9545  |   0.8964  |       0.9052  |        2.0841  |
---------------------------------------------------------------------------------
|       1  |      0  |     0.6605  |   0.6404  |               |        0.2986  |
|          |   eval  |     0.9625  |   0.8932  |       0.9030  |        1.9662  |
|       2  |      0  |     0.6530  |   0.5874  |               |        0.2743  |
"""


def test_reference_runs_are_read_without_the_warm_up_or_an_unfinished_run():
  runs = airbench_results.parse(AIRBENCH_LOG.splitlines())
  assert runs == [
    {'run': 0, 'accuracy': 0.9052, 'seconds': 2.0841},
    {'run': 1, 'accuracy': 0.9030, 'seconds': 1.9662},
  ]


def test_runs_summary():
  runs = [{'seconds': s, 'accuracy': a} for s, a in [(1.0, 0.90), (3.0, 0.92), (2.0, 0.91)]]
  summary = results_file.runs_summary(runs)
  assert summary['runs'] == 3
  assert summary['median_seconds'] == 2.0 and summary['mean_seconds'] == 2.0
  assert summary['std_seconds'] == pytest.approx(1.0)
  assert (summary['min_accuracy'], summary['max_accuracy']) == (0.90, 0.92)
  assert summary['mean_accuracy'] == pytest.approx(0.91)
  assert '3 runs' in results_file.runs_line(summary)


def test_profile_summary_reads_a_trace(tmp_path):
  matmul = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((256, 256))
  matmul(x).block_until_ready()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for _ in range(3):
      matmul(x).block_until_ready()
  summary = profile_summary.summarize(str(tmp_path))
  (device,) = summary.values()  # this CPU: the host's XLA threads
  assert device['busy_ms'] > 0 and device['ops']
  assert sum(op['share'] for op in device['ops']) == pytest.approx(1.0)
  assert all(op['count'] >= 1 for op in device['ops'])
  assert 'busy' in profile_summary.report(summary, steps=3)


def test_synthetic_cases_are_a_ts_file_that_dlearn_reads_and_a_seed_repeats(tmp_path):
  def written(seed, name):
    x, labels = synthetic_ts.cases(60, 50, 7, np.random.default_rng(seed))
    path = str(tmp_path / name)
    synthetic_ts.write(path, 'Synth', x, labels, 7)
    return path, labels

  path, labels = written(0, 'a.ts')
  data = ts_format.read_ts(path)
  assert data.class_names == tuple(str(c) for c in range(7))
  assert [s.shape for s in data.sequences] == [(50, 1)] * 60
  assert data.labels == [int(c) for c in labels] and len(set(data.labels)) == 7
  with open(path) as f, open(written(0, 'b.ts')[0]) as g:
    assert f.read() == g.read()
  with open(path) as f, open(written(1, 'c.ts')[0]) as g:
    assert f.read() != g.read()
