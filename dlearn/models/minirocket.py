"""MiniRocket's transform (Dempster, Schmidt and Webb 2021) in JAX: 84 fixed kernels of length 9
(weights -1, and 2 at three of the nine taps), dilated, each (kernel, dilation) summed over its
own random subset of channels, and per bias the proportion of positive values (PPV) of the
convolution minus that bias. Biases are quantiles of the convolutions of random training cases.

The parameters are those of aeon's `MiniRocket` (`Parameters`, its `parameters` tuple), so a
transform fitted by aeon can be run here and the features compared (tests/test_minirocket.py).
The transform is one jitted function over a batch of cases, so the cases can be sharded over
devices like any batch.

Variable lengths: each case's convolution is that of the case alone (zero padding around it, as
MiniRocket pads every series), since the zeros after a shorter case in the batch are exactly that
padding; its PPV counts only the positions of the case itself (`lengths`). Where a short case
leaves no interior for a kernel's 'valid' positions (fewer than 8 x dilation + 1 steps), that
feature counts all of the case's positions instead.

MultiRocket's transform builds on this one (multirocket.py); the classifier is rocket.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_LENGTH = 9
# The 84 kernels: which three of the nine taps weigh 2 (the others -1), in aeon's order.
KERNEL_INDICES = np.array(list(itertools.combinations(range(KERNEL_LENGTH), 3)), np.int32)
KERNEL_TAPS = np.full((len(KERNEL_INDICES), KERNEL_LENGTH), -1.0, np.float32)  # [84, 9]
np.put_along_axis(KERNEL_TAPS, KERNEL_INDICES, 2.0, axis=1)


@dataclasses.dataclass(frozen=True)
class Parameters:
  """aeon's `MiniRocket.parameters`, in its order: per (dilation, kernel) combination the number
  of channels and their indices (concatenated), the dilations, features per dilation (per
  kernel), and one bias per feature (dilation-major, then kernel, then feature)."""

  channels_per_combination: np.ndarray
  channel_indices: np.ndarray
  dilations: np.ndarray
  features_per_dilation: np.ndarray
  biases: np.ndarray

  @property
  def num_features(self) -> int:
    return len(KERNEL_INDICES) * int(np.sum(self.features_per_dilation))


def fit_dilations(length: int, num_features: int = 10_000, max_dilations: int = 32):
  """(dilations, features per dilation) for series of `length` steps: exponentially spaced up to
  the largest a 9-tap kernel fits, as the reference chooses them."""
  per_kernel = num_features // len(KERNEL_INDICES)
  count = min(per_kernel, max_dilations)
  multiplier = per_kernel / count
  max_exponent = np.log2((length - 1) / (KERNEL_LENGTH - 1))
  dilations, per_dilation = np.unique(
    np.logspace(0, max_exponent, count, base=2).astype(np.int32), return_counts=True
  )
  per_dilation = (per_dilation * multiplier).astype(np.int32)
  for i in range(per_kernel - int(per_dilation.sum())):  # the remainder, round-robin
    per_dilation[i % len(per_dilation)] += 1
  return dilations, per_dilation


def quantiles(count: int) -> np.ndarray:
  """The low-discrepancy quantiles the biases are drawn at: (i x golden ratio) mod 1."""
  return ((np.arange(1, count + 1) * ((np.sqrt(5) + 1) / 2)) % 1).astype(np.float32)


def taken(weights):
  """[..., 84, C] float32, 1 where a kernel takes a channel (its weights [..., 84, C, 9] there
  are -1 or 2, never 0), else 0; for jax and numpy arrays alike."""
  return (weights[..., 0] != 0).astype(np.float32)


def weights_of(params: Parameters, num_channels: int) -> list[np.ndarray]:
  """Per dilation: [84, channels, 9] kernel weights, zero on the channels a combination leaves
  out (a kernel summed over its channels is one convolution over all of them)."""
  ends = np.cumsum(params.channels_per_combination)
  weights, combination = [], 0
  for _ in params.dilations:
    w = np.zeros((len(KERNEL_INDICES), num_channels, KERNEL_LENGTH), np.float32)
    for k in range(len(KERNEL_INDICES)):
      start = ends[combination] - params.channels_per_combination[combination]
      w[k, params.channel_indices[start : ends[combination]]] = KERNEL_TAPS[k]
      combination += 1
    weights.append(w)
  return weights


def transform(x, lengths, params: Parameters) -> jax.Array:
  """Features [cases, params.num_features] of `x` [cases, channels, steps] (float), each case
  `lengths[i]` steps long (the rest of its row is ignored)."""
  x = jnp.asarray(x, jnp.float32)
  lengths = jnp.asarray(lengths, jnp.int32)
  x = jnp.where(jnp.arange(x.shape[-1]) < lengths[:, None, None], x, 0.0)
  weights = [jnp.asarray(w) for w in weights_of(params, x.shape[1])]
  dilations = tuple(int(d) for d in params.dilations)
  counts = tuple(int(n) for n in params.features_per_dilation)
  return transform_with(x, lengths, weights, jnp.asarray(params.biases), dilations, counts)


@functools.partial(jax.jit, static_argnums=(4, 5))
def transform_with(x, lengths, weights, biases, dilations, counts):
  def block(x, lengths):
    return pool(x, weights, lengths, biases, dilations, counts)[:, 0]

  return in_case_blocks(
    block, x, lengths, cases_per_block(len(dilations), x.shape[-1], pooled_floats(x.shape[1]))
  )


# Cases pooled per pass over time (per block of `in_case_blocks`): at most CASE_BLOCK, and no more
# than keep the block's arrays over time (the series' taps for `pool`, Hydra's responses) within
# BLOCK_BYTES. Their running counts then stay in a CPU's cache; a block of 16 long series (1,460
# steps: 200 MB of convolutions, as `pool` then read them) ran twice as slow per case as one.
CASE_BLOCK = 16
BLOCK_BYTES = 12 * 2**20


# From this many channels on, `pool` sums each kernel's channels before convolving them: 84 sums
# a step and dilation instead of the C x 9 taps every kernel reads.
SUMMED_CHANNELS = 3


def summed_first(channels: int) -> bool:
  return channels >= SUMMED_CHANNELS


def pooled_floats(channels: int) -> int:
  """Floats per case, dilation and step that `pool` keeps over time."""
  return 2 * len(KERNEL_INDICES) if summed_first(channels) else KERNEL_LENGTH * channels


def cases_per_block(dilations: int, steps: int, per_dilation: int) -> int:
  """Cases per block whose arrays [cases, dilations, per_dilation, steps] (float32) fit
  BLOCK_BYTES."""
  return int(np.clip(BLOCK_BYTES // (4 * dilations * per_dilation * steps), 1, CASE_BLOCK))


def in_case_blocks(per_block, x, lengths, cases: int):
  """per_block(x, lengths) of blocks of at most `cases` cases, one compiled body for all, rows in
  the cases' order: as few blocks as the batch needs, of one size, the last padded with the last
  case (16 cases with room for 15 are two blocks of 8, not of 15). The block axis is the batch's
  minor one, so that a batch sharded over devices stays so within each block: a block holds a
  multiple of the devices' count of cases (a global batch under jit may be split over all), and
  each device's share of a block holds cases of like lengths (`pool` stops at a block's longest).
  A batch of symbolic size (an exported model's) is one block."""
  batch = x.shape[0]
  if not isinstance(batch, int):  # a symbolic batch (dlearn.export): one block of it all
    return per_block(x, lengths)
  devices = jax.device_count()
  blocks = -(-batch // min(-(-cases // devices) * devices, batch))
  size = -(-batch // blocks)  # blocks as even as they can be: the last pads the fewest cases
  size = -(-size // devices) * devices
  # Where each block's cases come from (in the batch padded to size x blocks). Device d holds
  # positions [d x share, (d + 1) x share) of every block, i.e. the d-th run of share x blocks
  # cases of the padded batch: that run is sorted by length, shortest first, and dealt to the
  # blocks in turn (block b gets its b-th share), so that `pool` stops each block at its own
  # longest case and no case moves to another device.
  share = size // devices
  padded = jnp.arange(size * blocks)
  if blocks > 1:
    runs = lengths[jnp.minimum(padded, batch - 1)].reshape(devices, blocks * share)
    by_length = (
      jnp.argsort(runs, axis=1, stable=True) + jnp.arange(devices)[:, None] * blocks * share
    )
    padded = by_length.reshape(devices, blocks, share).transpose(0, 2, 1).reshape(-1)
  index = jnp.minimum(padded, batch - 1)
  x, lengths = x[index], lengths[index]
  split = lambda a: jnp.moveaxis(a.reshape(size, blocks, *a.shape[1:]), 1, 0)  # noqa: E731
  out = jax.lax.map(lambda a: per_block(*a), (split(x), split(lengths)))  # [blocks, size, ...]
  out = jnp.moveaxis(out, 0, 1).reshape(size * blocks, *out.shape[2:])
  if blocks > 1:
    out = out[jnp.argsort(padded)]  # back in the batch's order
  return out[:batch]


def pooled_runs(lengths, dilation: int, j: int):
  """(start, end) [B, 84]: the positions each kernel's features pool over at dilation `dilation`
  (the j-th), a run per case: all of its positions, or its interior (without the 4 x dilation
  steps at either end, where the kernel reads padding), kernel by kernel alternately, all first
  at even j + kernel; all where the case has no interior."""
  padding = 4 * dilation
  everything = ((j + np.arange(len(KERNEL_INDICES))) % 2 == 0)[None, :]
  everything = everything | (lengths <= 2 * padding)[:, None]
  return jnp.where(everything, 0, padding), jnp.where(everything, lengths[:, None], lengths[:, None] - padding)  # fmt: skip


POOLING = ('ppv', 'lspv', 'mpv', 'mipv')  # MiniRocket's, then MultiRocket's three more
# Steps per pass of `pool`'s loop: XLA fuses a chunk's steps' updates of the running sums, which
# made MultiRocket's transform about twice as fast as a step a pass on a CPU; chunks of 8 or 12
# steps were slower than no chunks (README).
TIME_CHUNK = 16


def pool(x, weights, lengths, biases, dilations, counts, poolings=('ppv',), shift_left: int = 0):
  """[B, len(poolings), features]: the kernels `weights` (one [84, C, 9] array per dilation) on
  x [B, C, T] (zero past each case's end: MiniRocket's padding), pooled at every feature's bias
  (dilation-major, then kernel, then bias) over its kernel's run of positions (`pooled_runs`);
  `shift_left`: the four left taps that much later (`tap_offsets`). One pass over time, to the
  block's longest case: a loop over chunks of TIME_CHUNK steps whose running sums per (bias, case,
  dilation, kernel) replace comparing every position with every bias at once, which cost 2.5x more
  on a CPU (MultiRocket's from the chunk's comparisons packed as bits, `_compared` and `_counted`);
  each chunk convolves its own steps from the series' taps, so that no [B, dilations, 84, T] array
  of convolutions is ever written (at 1,460 steps that array and its copies were half of
  MiniRocket's time). The dilations with as many biases per kernel share their sums' arrays, so that
  the body to compile grows with the distinct counts, not the dilations. The poolings
  (multirocket.py defines the last three): ppv, the proportion of values above the bias; lspv, the
  longest gap between consecutive values below it, from the run's start and to its end; mpv, the
  mean of value + bias over the values above it (0 if none); mipv, the mean of their
  positions in the run (-1 if none)."""
  kernels = len(KERNEL_INDICES)
  batch, channels, length = x.shape
  offsets = np.concatenate([[0], np.cumsum(kernels * np.asarray(counts))])
  groups = {}  # biases per kernel -> the dilations (their indices) with that many
  for j, count in enumerate(counts):
    groups.setdefault(count, []).append(j)
  chunks = -(-length // TIME_CHUNK)
  steps = chunks * TIME_CHUNK
  pad = 4 * max(dilations) + shift_left
  padded = jnp.pad(x, ((0, 0), (0, 0), (pad, pad + steps - length)))
  runs, per_group, taps, group_taken = [], [], [], []
  for count, members in groups.items():
    starts, ends = zip(*(pooled_runs(lengths, dilations[j], j) for j in members))
    # dilations, then steps, then cases in the loop's arrays: a chunk's convolutions are then
    # [dilations, steps, B, 84], which the loop reads as they are, where cases first cost a
    # transposing copy of every chunk's convolutions, and steps first a swap of its two major
    # axes (README, "ROCKET")
    runs.append((jnp.stack(starts), jnp.stack(ends)))  # [dilations, B, 84]
    b = [biases[offsets[j] : offsets[j + 1]].reshape(kernels, count).T for j in members]
    per_group.append(jnp.stack(b, 1)[:, :, None])  # [count, dilations, 1, 84]
    w = jnp.stack([weights[j] for j in members])  # [dilations, 84, C, 9]
    if summed_first(channels):
      # each kernel's channels summed, then convolved (its weights are the same on each of its
      # channels): [chunks, dilations, TIME_CHUNK, B, 84], read by the loop as they are
      summed = jnp.einsum('dkc,bct->tbdk', taken(w), padded, precision=jax.lax.Precision.HIGHEST)
      c = [sum(KERNEL_TAPS[:, g] * summed[pad + o : pad + o + steps, :, i] for g, o in enumerate(tap_offsets(dilations[j], shift_left))) for i, j in enumerate(members)]  # fmt: skip
      taps.append(jnp.stack([a.reshape(chunks, TIME_CHUNK, batch, kernels) for a in c], 1))
      group_taken.append(None)
      continue
    # the series at every tap of every dilation: [chunks, dilations, TIME_CHUNK, B, C, 9]
    at = [[padded[..., pad + o : pad + o + steps] for o in tap_offsets(dilations[j], shift_left)] for j in members]  # fmt: skip
    t = jnp.stack([jnp.stack(a, -1) for a in at], 2)  # [B, C, dilations, steps, 9]
    t = t.reshape(batch, channels, len(members), chunks, TIME_CHUNK, KERNEL_LENGTH)
    taps.append(jnp.transpose(t, (3, 2, 4, 0, 1, 5)))
    # which channels each kernel sums: [dilations, 1, 1, C, 84]
    group_taken.append(jnp.swapaxes(taken(w), 1, 2)[:, None, None])
  extra = len(poolings) > 1

  def chunk(sums, inputs):
    tap_groups, times = inputs
    c_groups = []
    for t, chosen, (first, end) in zip(tap_groups, group_taken, runs):
      c = t if chosen is None else sum(convolved(t[..., i, :]) * chosen[..., i, :] for i in range(channels))  # fmt: skip
      # NaN outside a kernel's run (and after the series' end): neither above nor below any
      # bias there, so that the steps check no run
      at = times[:, None, None]
      c_groups.append(jnp.where((at >= first[:, None]) & (at < end[:, None]), c, jnp.nan))
    if extra:  # the previous chunk's comparisons counted, this chunk's written (`_compared`)
      sums, (bits, start) = sums
      sums, new_bits = _compared(_counted(sums, bits, start), c_groups, per_group)
      return (sums, (new_bits, times[0])), None
    for k in range(TIME_CHUNK):
      sums = _pooled_step(sums, [c_g[:, k] for c_g in c_groups], times[k], per_group)
    return sums, None

  sums = []
  for b, (first, _) in zip(per_group, runs):
    shape = (b.shape[0], *first.shape)
    s = {'hits': jnp.zeros(shape, jnp.float32)}  # float32 throughout: one type for the body
    if extra:
      s['values'] = jnp.zeros(shape, jnp.float32)
      s['positions'] = jnp.zeros(shape, jnp.float32)
      s['longest'] = jnp.zeros(shape, jnp.float32)
      s['last'] = jnp.broadcast_to(first, shape).astype(jnp.float32)  # aeon's last_val: the start
    sums.append(s)
  times = jnp.arange(steps, dtype=jnp.float32).reshape(chunks, TIME_CHUNK)
  # Only the chunks up to the block's longest case: past it every position is outside every run
  # (`in_case_blocks` groups cases of like lengths, so a block of short cases stops early).
  used = jnp.minimum(-(-jnp.max(lengths) // TIME_CHUNK), chunks)

  def step(i, carry):
    return chunk(carry, jax.tree.map(lambda a: a[i], (taps, times)))[0]

  if extra:
    nothing = [jnp.zeros(s['hits'].shape, jnp.uint32) for s in sums]  # no step above or below
    sums, (bits, start) = jax.lax.fori_loop(0, used, step, (sums, (nothing, times[0, 0])))
    sums = _counted(sums, bits, start)
  else:
    sums = jax.lax.fori_loop(0, used, step, sums)
  features = [None] * len(dilations)
  for members, s, (first, end), b in zip(groups.values(), sums, runs, per_group):
    count = end - first  # [dilations, B, 84]
    hits = s['hits']
    # a case of one step has an empty difference (MultiRocket's): no positions, no hits, PPV 0
    pooled = {'ppv': hits / jnp.maximum(count, 1)}
    if extra:
      some = jnp.maximum(hits, 1)
      pooled['mpv'] = jnp.where(hits > 0, s['values'] / some + b, 0.0)
      pooled['mipv'] = jnp.where(hits > 0, s['positions'] / some - first, -1.0)
      pooled['lspv'] = jnp.maximum(s['longest'], count - 1 - (s['last'] - first))
    # [count, dilations, B, 84] -> per dilation [B, poolings, 84 x count]
    stacked = jnp.stack([pooled[name].astype(jnp.float32) for name in poolings], 1)
    for i, j in enumerate(members):
      features[j] = jnp.transpose(stacked[:, :, i], (2, 1, 3, 0)).reshape(batch, len(poolings), -1)
  return jnp.concatenate(features, -1)


def convolved(taps):
  """[..., 84]: the 84 kernels on taps [..., 9] (the series at a kernel's nine taps), as
  multiply-adds by their constant weights, which XLA fuses into the pooling's first pass: a
  matmul by the weights (K = 9) was a third of MultiRocket's time on one channel (README)."""
  return sum(taps[..., g, None] * KERNEL_TAPS[:, g] for g in range(KERNEL_LENGTH))


@jax.jit
def _pooled_step(sums, c_groups, t, biases):
  """MiniRocket's running hits after time t: per group, c_g [dilations, B, 84] (the convolutions
  at t) against its biases [count, dilations, 1, 84]. Jitted, so that the TIME_CHUNK steps of the
  loop's body are traced once and lowered as one function that XLA inlines into each step (the
  steps traced one by one were most of the time to trace and lower a transform)."""
  return [{'hits': s['hits'] + (c_g > b)} for b, c_g, s in zip(biases, c_groups, sums)]


# The bits of a chunk's steps in one uint32 (`_compared`): TIME_CHUNK above, TIME_CHUNK below.
assert TIME_CHUNK <= 16
# Bit j of each step's offset in the chunk: the steps whose offset has it (`_counted`).
OFFSET_BITS = [sum(1 << k for k in range(TIME_CHUNK) if k >> j & 1) for j in range((TIME_CHUNK - 1).bit_length())]  # fmt: skip


@jax.jit
def _compared(sums, c_groups, biases):
  """MultiRocket's sums of values after a chunk (per group, c_g [dilations, TIME_CHUNK, B, 84]
  against biases [count, dilations, 1, 84]) and the chunk's comparisons as bits, a uint32 per
  sum: bit k if its step k is above the bias, bit TIME_CHUNK + k if below (`_counted` counts
  them). The loop carries the bits to its next chunk, which XLA then writes once: within one
  chunk, it fused their comparisons into each of their four readers (an optimization barrier
  did not stop it)."""
  out, bits = [], []
  for b, c_g, s in zip(biases, c_groups, sums):
    values, packed = s['values'], jnp.zeros(s['values'].shape, jnp.uint32)
    for k in range(TIME_CHUNK):
      values, packed = _compared_step(values, packed, c_g[:, k], b, jnp.uint32(k))
    out.append({**s, 'values': values})
    bits.append(packed)
  return out, bits


@jax.jit
def _compared_step(values, packed, c, b, k):
  """`_compared` at the chunk's step k (traced: one function for the TIME_CHUNK steps, traced
  and lowered once, which XLA inlines into each)."""
  above = c > b
  one = jnp.uint32(1)
  bits = jnp.where(above, one << k, 0) | jnp.where(c < b, one << (k + TIME_CHUNK), 0)
  return values + jnp.where(above, c, 0.0), packed | bits


@jax.jit
def _counted(sums, bits, start):
  """MultiRocket's running hits, positions and stretches after the chunk from `start` whose
  comparisons `bits` are (`_compared`), from counts of bits: one pass over the sums a chunk,
  where a pass of each over the chunk's steps took twice the time (README)."""
  out = []
  for s, packed in zip(sums, bits):
    above, below = packed & ((1 << TIME_CHUNK) - 1), packed >> TIME_CHUNK
    count = lambda m: jax.lax.population_count(m).astype(jnp.float32)  # noqa: E731
    hits = count(above)
    # the steps' offsets in the chunk, bit by bit
    offsets = sum(2**j * count(above & m) for j, m in enumerate(OFFSET_BITS))
    first = jax.lax.population_count(~below & (below - 1))  # trailing zeros: the first below
    last = 31 - jax.lax.clz(below)
    # the longest gap between consecutive steps below within the chunk: 1 + the longest run of
    # steps not below between the first and the last, by a binary search over runs' lengths
    # (runs[n]: bit i set where the n steps from step i are all not below)
    between = ~below & ((jnp.uint32(1) << last.astype(jnp.uint32)) - 1)
    between = between & ~((jnp.uint32(2) << first.astype(jnp.uint32)) - 1)
    runs = {1: between}
    sizes = [2**i for i in range((TIME_CHUNK - 1).bit_length())]  # 1, 2, 4, 8: up to 15 steps
    for n in sizes[1:]:
      runs[n] = runs[n // 2] & (runs[n // 2] >> (n // 2))
    run, longer = jnp.zeros_like(between), jnp.full_like(between, 0xFFFFFFFF)
    for n in reversed(sizes):
      candidate = longer & (runs[n] >> run)
      run, longer = jnp.where(candidate != 0, run + n, run), jnp.where(candidate != 0, candidate, longer)  # fmt: skip
    gap = jnp.maximum(start + first.astype(jnp.float32) - s['last'], jnp.where(last > first, run.astype(jnp.float32) + 1, 0.0))  # fmt: skip
    some = below != 0
    out.append(
      {
        **s,
        'hits': s['hits'] + hits,
        'positions': s['positions'] + start * hits + offsets,
        'longest': jnp.where(some, jnp.maximum(s['longest'], gap), s['longest']),
        'last': jnp.where(some, start + last.astype(jnp.float32), s['last']),
      }
    )
  return out


def draw_channels(num_channels: int, combinations: int, seed: int):
  """(channels per combination, their indices concatenated): 2^U(0, log2(min(channels, 9) + 1))
  channels per (dilation, kernel), drawn without replacement, as the reference draws them."""
  rng = np.random.default_rng(seed)
  counts = (2 ** rng.uniform(0, np.log2(min(num_channels, 9) + 1), combinations)).astype(np.int32)
  if num_channels == 1:  # every combination its one channel (what the draws below give)
    return counts, np.zeros(combinations, np.int32)
  indices = np.concatenate([rng.choice(num_channels, n, replace=False) for n in counts])
  return counts, indices.astype(np.int32)


def unfitted(steps: int, num_channels: int, num_features=10_000, max_dilations=32, seed=0):
  """Parameters for series of `steps` steps and `num_channels` channels, biases still zero."""
  dilations, per_dilation = fit_dilations(steps, max(num_features, 84), max_dilations)
  counts, indices = draw_channels(num_channels, len(dilations) * len(KERNEL_INDICES), seed)
  biases = np.zeros(len(KERNEL_INDICES) * int(per_dilation.sum()), np.float32)
  return Parameters(counts, indices, dilations, per_dilation, biases)


def tap_offsets(dilation: int, shift_left: int = 0) -> tuple[int, ...]:
  """Where each of the 9 taps reads, relative to the output position (`shift_left`: the four left
  taps that much later, MultiRocket's reading of the difference)."""
  return tuple((g - 4) * dilation + (shift_left if g < 4 else 0) for g in range(KERNEL_LENGTH))


def shifted(x, offset: int):
  """x [..., T] read at t + offset, zero outside."""
  if offset == 0:
    return x
  if abs(offset) >= x.shape[-1]:
    return jnp.zeros_like(x)
  pad = [(0, 0)] * (x.ndim - 1)
  if offset > 0:
    return jnp.pad(x[..., offset:], (*pad, (0, offset)))
  return jnp.pad(x[..., :offset], (*pad, (-offset, 0)))


def own_convolutions(x, cases, weights, dilations, shift_left: int = 0) -> np.ndarray:
  """[dilations, 84, T]: per dilation j, kernel k on its own case x[cases[j, k]] (x [N, C, T]),
  the case's channels that the kernel takes summed first (its weights are the same on each), in
  NumPy: a few multiply-adds per kernel and step, where a jitted program cost more to trace and
  load in each process (two programs, 0.36 s of MultiRocket's first fold) than it saved."""
  steps = x.shape[-1]
  pad = 4 * max(dilations) + shift_left
  out = np.zeros((len(dilations), len(KERNEL_INDICES), steps), np.float32)
  for j, dilation in enumerate(dilations):
    summed = np.pad(np.einsum('kc,kct->kt', taken(weights[j]), x[cases[j]]), ((0, 0), (pad, pad)))
    for g, offset in enumerate(tap_offsets(dilation, shift_left)):
      out[j] += KERNEL_TAPS[:, g, None] * summed[:, pad + offset : pad + offset + steps]
  return out


def bias_cases(num_cases: int, num_dilations: int, seed: int = 0) -> np.ndarray:
  """[dilations, 84]: the random training case each (dilation, kernel) fits its biases to."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(num_cases, size=len(KERNEL_INDICES)) for _ in range(num_dilations)])


def fit_biases(
  x, lengths, weights, dilations, per_dilation, seed: int = 0, shift_left: int = 0
) -> np.ndarray:
  """The biases for `x` [cases, channels, steps] of `lengths` and the kernels `weights` (one
  [84, channels, 9] array per dilation, `weights_of`): per (dilation, kernel), its features'
  `quantiles` of the kernel's convolution (taps at `tap_offsets(dilation, shift_left)`) of one
  random case (`bias_cases`), over that case's own steps."""
  cases = bias_cases(len(x), len(dilations), seed)
  return biases_of(x, lengths, cases, weights, dilations, per_dilation, shift_left)


def biases_of(x, lengths, cases, weights, dilations, per_dilation, shift_left: int = 0) -> np.ndarray:  # fmt: skip
  """`fit_biases` given each (dilation, kernel)'s case: x[cases[j, k]] of x [N, C, T] of
  `lengths` [N]."""
  lengths = np.asarray(lengths)
  x = np.where(np.arange(np.shape(x)[-1]) < lengths[:, None, None], x, 0.0).astype(np.float32)
  dilations = tuple(int(d) for d in dilations)
  weights = [np.asarray(w, np.float32) for w in weights]
  c = own_convolutions(x, cases, weights, dilations, shift_left)
  # the empty difference of a one-step case: its bias is of its convolution's zero padding
  lengths = np.maximum(lengths[cases], 1)
  q = quantiles(len(KERNEL_INDICES) * int(np.sum(per_dilation)))
  biases, start = [], 0
  for j, n in enumerate(per_dilation):
    count = len(KERNEL_INDICES) * int(n)
    quantile_rows = q[start : start + count].reshape(-1, n)  # per kernel, its features' own
    biases.append(row_quantiles(c[j], lengths[j], quantile_rows).ravel())
    start += count
  return np.concatenate(biases).astype(np.float32)


def row_quantiles(rows, lengths, q):
  """[R, Q]: np.quantile(rows[r, :lengths[r]], q[r]) for every row r at once (its default,
  linear interpolation between the sorted values, numpy's own arithmetic)."""
  steps = np.arange(rows.shape[1])
  ordered = np.sort(np.where(steps < lengths[:, None], rows, np.inf), axis=1)
  position = q * (lengths[:, None] - 1).astype(q.dtype)  # in q's precision, as numpy
  below = np.floor(position).astype(np.int64)
  a = np.take_along_axis(ordered, below, 1)
  b = np.take_along_axis(ordered, np.minimum(below + 1, lengths[:, None] - 1), 1)
  t = (position - below).astype(rows.dtype)
  # numpy's _lerp: a + (b - a) t, or b - (b - a)(1 - t) from t = 0.5 on
  return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def fit(x, lengths, num_features: int = 10_000, max_dilations: int = 32, seed: int = 0):
  """Parameters fitted to `x` [cases, channels, steps] of `lengths` (dilations from the longest)."""
  params = unfitted(int(np.max(lengths)), np.shape(x)[1], num_features, max_dilations, seed)
  weights = weights_of(params, np.shape(x)[1])
  biases = fit_biases(x, lengths, weights, params.dilations, params.features_per_dilation, seed)
  return dataclasses.replace(params, biases=biases)
