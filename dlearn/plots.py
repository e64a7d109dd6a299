"""PNG pictures of a run: training curves from metrics.jsonl, and confusion matrices."""

from __future__ import annotations

import json

import numpy as np

# Figure without pyplot: writes files with no display and leaves a notebook's backend alone.
from matplotlib.figure import Figure

FIGURE_SIZE = (10, 4)  # inches, at DPI: curves.png is 1000x400 pixels
DPI = 100


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def draw_curves(axes, records: list[dict]):
  """Loss and accuracy against step, train and eval, on two matplotlib axes."""
  for axis, metric in zip(axes, ('loss', 'accuracy')):
    for prefix in ('train', 'eval'):
      points = [(r['step'], r[f'{prefix}/{metric}']) for r in records if f'{prefix}/{metric}' in r]
      if points:
        axis.plot(*zip(*points), marker='o' if prefix == 'eval' else None, label=prefix)
    axis.set_xlabel('step')
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend()


def plot_curves(metrics_path: str, png_path: str) -> str:
  figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
  draw_curves(figure.subplots(1, 2), read_metrics(metrics_path))
  figure.tight_layout()
  figure.savefig(png_path)
  return png_path


def draw_confusion(axis, confusion: np.ndarray, class_names, title: str = ''):
  """Rows: true class; columns: predicted. Counts written in the cells."""
  confusion = np.asarray(confusion)
  axis.imshow(confusion, cmap='Blues')
  axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha='right')
  axis.set_yticks(range(len(class_names)), class_names)
  axis.set_xlabel('predicted')
  axis.set_ylabel('true')
  if title:
    axis.set_title(title)
  threshold = confusion.max() / 2 if confusion.size else 0
  for (row, column), count in np.ndenumerate(confusion):
    axis.text(
      column,
      row,
      str(count),
      ha='center',
      va='center',
      fontsize=8,
      color='white' if count > threshold else 'black',
    )


def confusion_figure_inches(num_classes: int) -> float:
  return max(4.0, 0.5 * num_classes + 2)


def plot_confusion(confusion: np.ndarray, class_names, png_path: str, title: str = '') -> str:
  size = confusion_figure_inches(len(class_names))
  figure = Figure(figsize=(size, size), dpi=DPI)
  draw_confusion(figure.subplots(), confusion, class_names, title)
  figure.tight_layout()
  figure.savefig(png_path)
  return png_path
