"""A time-partitioned, pipelined run of `rnn.RNNClassifier`: one sequence split into contiguous
time chunks over the devices of a mesh axis, the batch into micro-batches that move through the
devices in a wavefront.

Device k of the time axis holds time steps [k·C, (k+1)·C) of every sequence (C = T / parts). It
runs its chunk for a micro-batch when that micro-batch's carries arrive from device k − 1
(`lax.ppermute`), so at tick t device k works on micro-batch t − k: with M micro-batches a step
takes M + parts − 1 ticks, of which each device is busy M (idle fraction of the pipeline, the
"bubble": (parts − 1) / (M + parts − 1)). Devices run in SPMD lockstep, so a tick outside a device's
window computes on a placeholder micro-batch whose result is discarded.

The parameters are the model's own: the cells are `model.layers[i].cell` (forward and backward
cells of a bidirectional layer) and the head `model.head`, so a checkpoint works either way.

Unidirectional models run every layer inside the chunk (layer l + 1 reads layer l's outputs of the
same chunk) and pass all layers' carries on: one wavefront per step. A bidirectional layer needs
its backward direction, which runs from the end of the sequence (device parts − 1 to device 0),
before the next layer can start: each layer is one wavefront in which the forward stream moves up
the axis and the backward stream down it, in the same ticks.

Masking (variable lengths): a step at global time t ≥ length leaves the carry unchanged, so the
forward carry leaving the last device is the carry at each sequence's own last step, and the
backward carry stays zero until the sequence's last step, where the backward direction starts.
Outputs and gradients equal the unpartitioned model's (tests/test_pipelined_rnn.py).

Rules (`check_time_parts` raises them, before anything is compiled):
  * the (padded) sequence length T must be a multiple of the parts (pad with
    `config.data.max_length`, or choose a number of parts that divides T);
  * the per-device batch must be a multiple of the micro-batches.

Use inside `jax.shard_map(..., check_vma=False)` over a mesh with a data axis and the time axis
(time innermost, so that neighbours in the pipeline are neighbouring devices), e.g. axes
('batch', 'time'); sequences [data_devices, per_device_batch, T, F] with in_spec
P('batch', None, 'time', None), lengths [data_devices, per_device_batch] with P('batch', None)
(the global lengths, replicated over the time axis), parameters P(). The logits come back the same
on every device of the time axis.

Gradients: the final hidden state is broadcast from the last device with `lax.psum` over the time
axis; with check_vma=False the transpose of psum is psum, so each device's gradient of the
recurrent parameters is parts × its chunk's share, and the head's gradient is the whole on every
device. `lax.pmean` of the gradients over both axes (data and time) is then exactly the
unpartitioned gradient of the mean loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from dlearn.errors import ConfigError
from dlearn.models.rnn import RNNClassifier, hidden_state, zero_carry


def check_time_parts(
  sequence_length: int, parts: int, micro_batches: int, per_device_batch: int
) -> None:
  """Raises ValueError, with what to do, for a partition `pipelined_logits` cannot run."""
  if parts < 1 or micro_batches < 1:
    raise ConfigError(f'Time parts ({parts}) and micro-batches ({micro_batches}) must be ≥ 1.')
  if sequence_length % parts:
    below = sequence_length // parts * parts
    raise ConfigError(
      f'The sequence length {sequence_length} is not a multiple of the {parts} time parts: pad '
      f'the sequences to a multiple (config.data.max_length, e.g. {below + parts}) or choose a '
      f'number of parts that divides {sequence_length}.'
    )
  if per_device_batch % micro_batches:
    raise ConfigError(
      f'The per-device batch {per_device_batch} is not a multiple of the {micro_batches} '
      f'micro-batches: choose micro-batches that divide it, or a batch size that makes it a '
      'multiple.'
    )


def _run_cell(cell, carry, xs, lengths, t0, reverse: bool, unroll: int):
  """One cell over one chunk: xs [b, C, F] at global times t0 .. t0 + C − 1 → (final carry,
  outputs [b, C, H]). A step past a sequence's length keeps the carry (and outputs it)."""

  def step(carry, inputs):
    x_t, t = inputs
    new, _ = cell(carry, x_t)
    valid = (t < lengths)[:, None]
    carry = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, carry)
    return carry, hidden_state(carry)

  times = t0 + jnp.arange(xs.shape[1])
  carry, ys = lax.scan(step, carry, (jnp.swapaxes(xs, 0, 1), times), reverse=reverse, unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1)


def _shift(tree, axis: str, parts: int, up: bool):
  """Sends each device's tree to its neighbour (k → k + 1 if `up`, else k → k − 1). The device at
  the start of the pipeline receives zeros (ppermute's rule for a device nothing is sent to):
  exactly the zero initial carry."""
  if parts == 1:
    return jax.tree.map(jnp.zeros_like, tree)
  pairs = [(k, k + 1) if up else (k + 1, k) for k in range(parts - 1)]
  return lax.ppermute(tree, axis, pairs)


def _wavefront(streams, xs, lengths, *, axis: str, parts: int):
  """Runs the micro-batches xs [M, b, ...] (lengths [M, b]) through the pipeline.

  streams: [(chunk_fn, zero_carry, reverse)]; chunk_fn(carry, x [b, ...], lengths [b]) →
  (carry to send on, output). A forward stream moves up the axis (device k works on micro-batch
  t − k at tick t), a reverse stream down it (micro-batch t − (parts − 1 − k)). Returns each
  stream's outputs for this device's M micro-batches, stacked [M, ...].
  """
  micro_batches = xs.shape[0]
  k = lax.axis_index(axis)
  positions = [parts - 1 - k if reverse else k for _, _, reverse in streams]

  def tick(carries, t):
    sent, outputs = [], []
    for (chunk_fn, _, reverse), position, carry in zip(streams, positions, carries):
      # Outside [0, M) the index is clamped: the work is done on a placeholder and discarded
      # (below, and by the next device, which is outside its window one tick later).
      m = jnp.clip(t - position, 0, micro_batches - 1)
      carry, output = chunk_fn(carry, xs[m], lengths[m])
      sent.append(_shift(carry, axis, parts, up=not reverse))
      outputs.append(output)
    return sent, outputs

  ticks = jnp.arange(micro_batches + parts - 1)
  _, outputs = lax.scan(tick, [zero for _, zero, _ in streams], ticks)
  # This device handled micro-batch m at tick m + position.
  return [
    jax.tree.map(lambda o: lax.dynamic_slice_in_dim(o, position, micro_batches), output)
    for output, position in zip(outputs, positions)
  ]


def pipelined_logits(model: RNNClassifier, x_chunk, lengths, *, time_axis: str, micro_batches: int):
  """The logits of `model(x, lengths)` from this device's time chunk, inside shard_map.

  x_chunk: [B, T / parts, F], this device's contiguous chunk of the sequences; lengths: [B], the
  global lengths (≥ 1). Returns [B, classes], the same on every device of `time_axis`.
  """
  parts = lax.axis_size(time_axis)
  batch, chunk, _ = x_chunk.shape
  check_time_parts(chunk * parts, parts, micro_batches, batch)
  k = lax.axis_index(time_axis)
  t0 = k * chunk
  b = batch // micro_batches
  xs = x_chunk.reshape(micro_batches, b, chunk, -1)
  lengths_mb = lengths.reshape(micro_batches, b)
  zero = zero_carry(model.cell, xs[0, :, 0], model.hidden_size, model.dtype)

  if not model.bidirectional:
    cells = [(layer.cell, layer.unroll) for layer in model.layers]

    def chunk_fn(carries, x, lengths):
      new = []
      for (cell, unroll), carry in zip(cells, carries):
        carry, x = _run_cell(cell, carry, x, lengths, t0, False, unroll)
        new.append(carry)
      return new, hidden_state(new[-1])

    (hidden,) = _wavefront(
      [(chunk_fn, [zero] * len(cells), False)], xs, lengths_mb, axis=time_axis, parts=parts
    )
    last = k == parts - 1
    hidden = jnp.where(last, hidden, 0)
  else:
    for layer in model.layers:

      def stream(rnn, reverse):
        def chunk_fn(carry, x, lengths):
          carry, ys = _run_cell(rnn.cell, carry, x, lengths, t0, reverse, rnn.unroll)
          return carry, (ys, hidden_state(carry))

        return chunk_fn, zero, reverse

      (ys_f, h_f), (ys_b, h_b) = _wavefront(
        [stream(layer.forward_rnn, False), stream(layer.backward_rnn, True)],
        xs,
        lengths_mb,
        axis=time_axis,
        parts=parts,
      )
      xs = jnp.concatenate([ys_f, ys_b], -1)
    # The forward direction ends on the last device, the backward one on the first.
    hidden = jnp.concatenate([jnp.where(k == parts - 1, h_f, 0), jnp.where(k == 0, h_b, 0)], -1)
  # Broadcast the final hidden state over the time axis (see the module docstring for what this
  # does to the gradients), then every device applies the head.
  hidden = lax.psum(hidden, time_axis).reshape(batch, -1)
  return model.head(hidden)
