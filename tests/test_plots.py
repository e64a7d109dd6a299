"""The PNG writers produce real images of the expected size."""

import json
import struct

import numpy as np

from dlearn import plots


def _png_size(path):
  with open(path, 'rb') as f:
    header = f.read(24)
  assert header[:8] == b'\x89PNG\r\n\x1a\n'
  return struct.unpack('>II', header[16:24])


def test_training_curves_png(tmp_path):
  metrics = tmp_path / 'metrics.jsonl'
  with open(metrics, 'w') as f:
    for step in range(1, 11):
      f.write(
        json.dumps(
          {'step': step, 'time': step, 'train/loss': 1 / step, 'train/accuracy': step / 10}
        )
        + '\n'
      )
    f.write(json.dumps({'step': 10, 'time': 10, 'eval/loss': 0.2, 'eval/accuracy': 0.9}) + '\n')
  path = plots.plot_curves(str(metrics), str(tmp_path / 'curves.png'))
  width, height = plots.FIGURE_SIZE
  assert _png_size(path) == (width * plots.DPI, height * plots.DPI)
  assert (tmp_path / 'curves.png').stat().st_size > 10_000  # drawn, not blank


def test_confusion_png(tmp_path):
  confusion = np.arange(9).reshape(3, 3)
  path = plots.plot_confusion(confusion, ['a', 'b', 'c'], str(tmp_path / 'confusion.png'))
  side = int(plots.confusion_figure_inches(3) * plots.DPI)
  assert _png_size(path) == (side, side)
  assert (tmp_path / 'confusion.png').stat().st_size > 5_000
