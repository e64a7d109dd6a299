"""What a `jax.profiler` trace says, as text and JSON: per device (a GPU, or the host's CPU), the
busy time of its operations (kernels on a GPU, XLA's fusions and thunks on a CPU) summed by name,
the most costly first, with their share of the device's busy time and of the traced span.

  python experiments/benchmarks/profile_summary.py TRACE_DIR [--top=15] [--steps=N]

TRACE_DIR is the folder given to `jax.profiler.trace(..., create_perfetto_trace=True)` (its newest
perfetto_trace.json.gz is read). `--steps`: the steps the trace holds, for time a step. Used by
`fast_cifar10.py --profile`, which traces one run of the recipe.
"""

import collections
import glob
import gzip
import json
import os
import sys


def trace_file(trace_dir: str) -> str:
  paths = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'), recursive=True)
  if not paths:
    sys.exit(
      f'error: no perfetto_trace.json.gz under {trace_dir}: trace with create_perfetto_trace=True'
    )
  return max(paths, key=os.path.getmtime)


def summarize(trace_dir: str, top: int = 15) -> dict:
  """{device: {'lines', 'busy_ms', 'span_ms', 'events', 'ops': [{'name', 'ms', 'count', 'share'}]}}
  for every process of the trace that ran XLA's work: '/device:GPU:N', its streams' kernels (the
  lines named 'Stream ...'; `lines` gives every line's busy ms, the modules' and ops' lines of XLA
  included, which overlap the streams), or where there is no device, '/host:CPU', XLA's threads'
  operations (the runtime's own calls, named with '::', left out)."""
  with gzip.open(trace_file(trace_dir)) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  names = {
    (e['name'], e['pid'], e.get('tid') if e['name'] == 'thread_name' else None): e['args']['name']
    for e in events
    if e.get('ph') == 'M' and e.get('name') in ('process_name', 'thread_name')
  }
  processes = {pid: name for (kind, pid, _), name in names.items() if kind == 'process_name'}
  devices = [p for p, name in processes.items() if name.startswith('/device:')]
  host = not devices
  if host:
    devices = [p for p, name in processes.items() if name.startswith('/host:')]
  line_ms = collections.defaultdict(float)
  by_pid = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e and e.get('pid') in devices:
      line = names.get(('thread_name', e['pid'], e.get('tid')), str(e.get('tid')))
      line_ms[e['pid'], line] += e['dur'] / 1e3
      by_pid[e['pid']].append((line, e))
  summary = {}
  for pid in devices:
    lines = {line: ms for (p, line), ms in line_ms.items() if p == pid}
    streams = [line for line in lines if line.startswith('Stream')]

    def counted(line, name):
      if host:
        return line.startswith('tf_XLA') and '::' not in name and not name.startswith('end:')
      return line in streams if streams else line not in ('XLA Modules', 'Steps')

    ops = collections.defaultdict(lambda: [0.0, 0])
    begin, end = float('inf'), 0.0
    for line, e in by_pid[pid]:
      if counted(line, e['name']):
        ops[e['name']][0] += e['dur']
        ops[e['name']][1] += 1
        begin, end = min(begin, e['ts']), max(end, e['ts'] + e['dur'])
    busy = sum(us for us, _ in ops.values())
    ranked = sorted(ops.items(), key=lambda item: -item[1][0])
    summary[processes[pid]] = {
      'lines': dict(sorted(lines.items(), key=lambda item: -item[1])),
      'busy_ms': busy / 1e3,
      'span_ms': max(end - begin, 0.0) / 1e3,
      'events': sum(count for _, count in ops.values()),
      'ops': [
        {'name': name, 'ms': us / 1e3, 'count': count, 'share': us / busy if busy else 0.0}
        for name, (us, count) in ranked[:top]
      ],
    }
  return summary


def report(summary: dict, steps: int | None = None) -> str:
  lines = []
  for device, s in summary.items():
    per_step = f', {s["busy_ms"] / steps:.3f} ms busy a step over {steps} steps' if steps else ''
    lines.append(
      f'{device}: busy {s["busy_ms"]:.1f} ms of a {s["span_ms"]:.1f} ms span '
      f'({s["busy_ms"] / max(s["span_ms"], 1e-9):.0%}), {s["events"]} operations{per_step}'
    )
    lines.append('  lines (ms): ' + ', '.join(f'{k} {v:.1f}' for k, v in s['lines'].items()))
    for op in s['ops']:
      lines.append(f'  {op["ms"]:9.2f} ms {op["share"]:6.1%} {op["count"]:6d}x  {op["name"][:90]}')
  return '\n'.join(lines)


def main(argv):
  from absl import flags

  print(report(summarize(argv[1], flags.FLAGS.top), flags.FLAGS.steps))


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_integer('top', 15, 'Operations listed per device.')
  flags.DEFINE_integer('steps', 0, 'Steps the trace holds (0: no time a step).')
  app.run(main)
