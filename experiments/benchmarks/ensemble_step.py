"""Milliseconds of one training step (forward and backward, jitted) of the UEA recipe's model (an
FCN; with --lstm_layers=1 an LSTM-FCN) alone and as an ensemble, its members vmapped or run in turn
(`dlearn.models.Ensemble`), on this machine's default device. Also checks that both ways give the
same loss and gradients.

  python experiments/benchmarks/ensemble_step.py [--length=26 --channels=12] [--members=5]
      [--batch=16] [--repeats=20] [--lstm_layers=0]

JapaneseVowels is about --length=26 --channels=12; GunPoint --length=150 --channels=1. Prints one
line; writes experiments/benchmarks/results/ensemble_step-<machine kind>.json (one entry per
shape, replaced when measured again).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's dlearn

import results_file  # noqa: E402

from dlearn import models  # noqa: E402
from dlearn.models import rnn  # noqa: E402

flags.DEFINE_integer('length', 26, 'Time steps of each sequence.')
flags.DEFINE_integer('channels', 12, 'Channels of each time step.')
flags.DEFINE_integer('members', 5, 'Ensemble members.')
flags.DEFINE_integer('batch', 16, 'Sequences a step.')
flags.DEFINE_integer('repeats', 20, 'Steps timed (after one that compiles).')
flags.DEFINE_string('machine_kind', None, 'Name of the results file (default: from the device).')
flags.DEFINE_integer('lstm_layers', 0, 'LSTM layers beside the convolutions (1: an LSTM-FCN).')
FLAGS = flags.FLAGS


def make(rngs):
  # experiments/configs/rnn_uea.py's model, 9 classes.
  return rnn.RNNClassifier(
    9,
    FLAGS.channels,
    rngs=rngs,
    hidden_size=64,
    num_layers=FLAGS.lstm_layers,
    conv_filters=(128, 256, 128),
    conv_kernels=(8, 5, 3),
  )


def time_step(model, x, lengths, labels):
  """(milliseconds a step, loss, gradients)."""

  @nnx.jit
  def step(model):
    def loss_fn(model):
      logits = model(x, lengths, train=True)
      targets = jnp.broadcast_to(labels, logits.shape[:-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()

    return nnx.value_and_grad(loss_fn)(model)

  loss, grads = jax.block_until_ready(step(model))
  start = time.perf_counter()
  for _ in range(FLAGS.repeats):
    loss, grads = step(model)
  jax.block_until_ready(grads)
  return (time.perf_counter() - start) / FLAGS.repeats * 1e3, loss, grads


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(FLAGS.batch, FLAGS.length, FLAGS.channels)), jnp.float32)
  lengths = jnp.full((FLAGS.batch,), FLAGS.length, jnp.int32)
  labels = jnp.asarray(rng.integers(0, 9, FLAGS.batch), jnp.int32)
  alone, _, _ = time_step(make(nnx.Rngs(0)), x, lengths, labels)
  backend = jax.default_backend()
  timings, results = {}, {}
  for way, backends in (('vmapped', ()), ('in_turn', (backend,))):
    models.Ensemble.in_turn_backends = backends
    ensemble = models.Ensemble(make, FLAGS.members, nnx.Rngs(0))
    timings[way], *results[way] = time_step(ensemble, x, lengths, labels)
  difference = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(results['vmapped'][1]), jax.tree.leaves(results['in_turn'][1]))
  )
  model = 'lstm-fcn' if FLAGS.lstm_layers else 'fcn'
  shape = f'{model}-length{FLAGS.length}-channels{FLAGS.channels}-batch{FLAGS.batch}'
  print(
    f'{backend} {shape}: one model {alone:.1f} ms; {FLAGS.members} members vmapped '
    f'{timings["vmapped"]:.1f} ms ({timings["vmapped"] / alone:.2f}x), in turn '
    f'{timings["in_turn"]:.1f} ms ({timings["in_turn"] / alone:.2f}x); largest gradient '
    f'difference {difference:.1e}'
  )
  kind = results_file.machine_kind(FLAGS.machine_kind)
  path = os.path.join(results_file.FOLDER, f'ensemble_step-{kind}.json')
  shapes = json.load(open(path))['shapes'] if os.path.exists(path) else {}
  shapes[shape] = {
    'members': FLAGS.members,
    'one_model_ms': alone,
    'vmapped_ms': timings['vmapped'],
    'in_turn_ms': timings['in_turn'],
    'largest_gradient_difference': difference,
    'repeats': FLAGS.repeats,
  }
  command = (
    'python experiments/benchmarks/ensemble_step.py [--length=L --channels=C] [--lstm_layers=1]'
  )
  print(
    'wrote',
    results_file.write(f'ensemble_step-{kind}', kind, {'command': command, 'shapes': shapes}),
  )


if __name__ == '__main__':
  app.run(main)
