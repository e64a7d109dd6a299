"""The ROCKET family as a dlearn model (`config.model='rocket'`, section `config.rocket`): a fixed
random transform of each series and a linear head, as aeon's classifiers of the same names
(`config.rocket.transform`):
- 'minirocket' (dlearn/models/minirocket.py) and 'multirocket' (multirocket.py: MiniRocket's
  kernels on the series and its first difference, four pooling operators): each feature divided
  by its training standard deviation (StandardScaler(with_mean=False); for a ridge head with an
  intercept, centring would change nothing);
- 'hydra' (hydra.py: competing kernels), its counts scaled sparsely (square roots, standardised
  where not zero: aeon's SparseScaler);
- 'multirocket_hydra': both side by side (aeon's MultiRocketHydraClassifier).

The head, `config.rocket.head`:
- 'ridge' (small data): fitted in closed form when the run starts (`init_from_data`): ridge
  regression on targets of +1 for the class and -1 for the others, with an unpenalised intercept,
  its regularisation chosen from `alphas` by leave-one-out error, computed exactly from one
  decomposition of the features (what scikit-learn's RidgeClassifierCV does); its scores then
  multiplied by the temperature whose softmax best fits the cases' leave-one-out scores
  (`temperature`), so that its probabilities say how sure it is (its classes are the ridge's).
  The recipe then trains 0 steps.
- 'logistic' (large data): zero-initialised, trained by the ordinary dlearn step (softmax
  cross-entropy over the features, which every device computes for its own cases); the
  features' scaling is fitted from their moments, chunk by chunk, never all cases' at once.

The kernels' channels are drawn from config.seed when the model is created, the biases from the
train split (one random case per kernel and dilation, as the references); all are stored in the
checkpoint with the head, so evaluation, prediction and export need nothing else.

On many devices and processes (`init_from_data`): each process reads its own share of the train
split and computes those cases' features on its own devices, the cases split over them; the
biases' random cases are read by every process; the features of all cases are gathered on every
host for the ridge head, which every process then fits alike. Evaluation and the logistic head's
training are the ordinary sharded steps.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlearn import parallel
from dlearn.data import pipeline
from dlearn.errors import ConfigError, DoesNotFit
from dlearn.models import family, hydra, minirocket, multirocket
from dlearn.models.family import ModelFamily

TRANSFORMS = ('minirocket', 'multirocket', 'hydra', 'multirocket_hydra')
# num_features: in all, as the references count them (MultiRocket: 8 per kernel, dilation and
# bias: 4 poolings of 2 representations; 50,000 = its 6,250 kernels); rounded down to multiples
# of 84 (of 84 x 8).
DEFAULTS = ml_collections.ConfigDict(
  {
    'transform': 'minirocket',
    'num_features': 10_000,
    'max_dilations': 32,
    'head': 'ridge',
    'alphas': tuple(np.logspace(-3, 3, 10)),  # RidgeClassifierCV's in aeon's classifiers
  }
)
HEADS = ('ridge', 'logistic')
FEATURE_BATCH = 256  # at most this many of a process's cases per transform call (init_from_data)


class Fixed(nnx.Variable):
  """Values the model computes from data or its seed and never trains. While fitting they are
  the host's numpy arrays, each replaced whole (`set_value`: outside a trace, `variable[...] = x`
  compiles a scatter and `jnp.asarray(x)` a copy, for every shape, which added up to half of a
  small cross-validation's first fold); the placed train state is made from them afterwards."""


def settings(config) -> ml_collections.ConfigDict:
  merged = family.section(config, 'rocket', DEFAULTS)
  if merged.transform not in TRANSFORMS or merged.head not in HEADS:
    raise ConfigError(
      f'config.rocket.transform={merged.transform!r}, head={merged.head!r}: transforms '
      f'{TRANSFORMS}, heads {HEADS}.'
    )
  for field, least in (('num_features', 0), ('max_dilations', 1)):
    value = merged[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(f'config.rocket.{field}={value!r}: give a whole number, {least} or more.')
  if not merged.alphas or min(merged.alphas) <= 0:
    raise ConfigError(f'config.rocket.alphas={merged.alphas!r}: give ridge penalties above 0.')
  return merged


class Representation(nnx.Module):
  """One series the kernels run over (the input, or its first difference): the kernels of each
  dilation and one bias per feature. `shift_left`: MultiRocket's reading of the difference."""

  def __init__(self, params: minirocket.Parameters, num_channels: int, shift_left: int):
    self.dilations = tuple(int(d) for d in params.dilations)
    self.counts = tuple(int(n) for n in params.features_per_dilation)
    self.shift_left = shift_left
    # one array [dilations, 84, channels, 9] (a checkpoint's cost grows with its arrays' count)
    self.kernels = Fixed(jnp.asarray(np.stack(minirocket.weights_of(params, num_channels))))
    self.biases = Fixed(jnp.zeros(params.num_features))


class HydraPart(nnx.Module):
  """Hydra's kernels (drawn from the seed) and its sparse scaling (fitted to the train split)."""

  def __init__(self, steps: int, channels: int, seed: int):
    kernels = hydra.draw(steps, channels, seed=seed)
    self.k = kernels.kernels
    self.weights = Fixed(jnp.asarray(kernels.weights))
    self.channels = None if kernels.channels is None else Fixed(jnp.asarray(kernels.channels))
    self.mean = Fixed(jnp.zeros(kernels.num_features))
    self.std = Fixed(jnp.ones(kernels.num_features))

  def raw(self, x, lengths):
    channels = None if self.channels is None else self.channels[...]
    return hydra._transform(x, lengths, self.weights[...], channels, self.k)


class RocketClassifier(nnx.Module):
  def __init__(self, num_classes, input_shape, *, transform, num_features, max_dilations, seed, rngs):  # fmt: skip
    steps, channels = input_shape
    # the kernels are 9 steps long (10 where the first difference has them too): shorter series
    # are zero-padded to that, as MiniRocket pads every series (UEA's PenDigits has 8 steps)
    self.steps = steps = max(steps, minirocket.KERNEL_LENGTH + (transform != 'minirocket'))
    self.transform = transform
    self.representations = nnx.List(_representations(transform, steps, channels, num_features, max_dilations, seed))  # fmt: skip
    self.hydra = HydraPart(steps, channels, seed) if 'hydra' in transform else None
    pooling = 1 if transform == 'minirocket' else 4
    size = sum(r.biases.shape[0] * pooling for r in self.representations)
    # the kernels' features: x / std (StandardScaler(with_mean=False)); none for Hydra alone
    self.scale = Fixed(jnp.ones(size)) if size else None
    size += self.hydra.mean.shape[0] if self.hydra is not None else 0
    self.head = nnx.Linear(size, num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def series(self, sequences, lengths):
    """[(x [B, C, T], lengths)] per representation, zero past each case's end."""
    if sequences.shape[1] < self.steps:
      sequences = jnp.pad(sequences, ((0, 0), (0, self.steps - sequences.shape[1]), (0, 0)))
    return _series(sequences, lengths)

  def rocket_features(self, sequences, lengths):
    """[B, features] of MiniRocket's or MultiRocket's kernels, unscaled."""
    parts = []
    for r, (x, n) in zip(self.representations, self.series(sequences, lengths)):
      kernels = tuple(r.kernels[...])
      if self.transform == 'minirocket':
        parts.append(minirocket.transform_with(x, n, kernels, r.biases[...], r.dilations, r.counts))
      else:
        parts.append(
          multirocket._transform_one(
            x, n, kernels, r.biases[...], r.dilations, r.counts, r.shift_left
          )
        )
    return jnp.concatenate(parts, axis=1)

  def hydra_features(self, sequences, lengths):
    x, n = self.series(sequences, lengths)[0]
    return self.hydra.raw(x, n)

  def __call__(self, sequences, lengths, train: bool = False):
    del train
    features = []
    if self.scale is not None:
      features.append(self.rocket_features(sequences, lengths) * self.scale[...])
    if self.hydra is not None:
      raw = self.hydra_features(sequences, lengths)
      features.insert(0, hydra.sparse_scale(raw, self.hydra.mean[...], self.hydra.std[...]))
    return self.head(jnp.concatenate(features, axis=1))

  def fit_biases(self, read_cases, num_cases: int, seed: int) -> None:
    """Each representation's biases from random cases of the train split's `num_cases`
    (`minirocket.bias_cases`, seeded per representation); `read_cases(indices)` gives their
    (sequences, lengths), so every process reads those cases alone."""
    chosen = [minirocket.bias_cases(num_cases, len(r.dilations), seed + i) for i, r in enumerate(self.representations)]  # fmt: skip
    if not chosen:
      return
    needed = np.unique(np.concatenate([c.ravel() for c in chosen]))
    sequences, lengths = read_cases(needed)
    for r, (x, n), cases in zip(self.representations, self.series(sequences, lengths), chosen):
      kernels = list(np.asarray(r.kernels[...]))
      biases = minirocket.biases_of(
        np.asarray(x), np.asarray(n), np.searchsorted(needed, cases), kernels, r.dilations,
        r.counts, r.shift_left,
      )  # fmt: skip
      r.biases.set_value(biases)

  def fit_scaling(self, sequences, lengths, index, keep_features: bool = True):
    """Fits the features' scaling on the train split, of which this process has the cases
    `index` (`sequences`, `lengths`). With `keep_features` (the ridge head's closed form needs
    them all), returns the scaled features of every process's cases, in the split's order,
    [cases, all features]; without (the logistic head, for data whose features would not fit
    in memory), only their moments are kept, chunk by chunk, and merged over the processes."""
    chunks = self.own_features(sequences, lengths)
    if keep_features:  # every process's features, in the split's order
      joined = lambda p: p[0] if len(p) == 1 else np.concatenate(p)  # noqa: E731
      rocket, raw = (in_split_order(joined(p), index) if p[0] is not None else None for p in zip(*chunks))  # fmt: skip
      # scaled into one array, Hydra's first (as __call__ concatenates them), without a copy of
      # either part: each is [cases, up to 50,000 features]
      start = 0 if raw is None else raw.shape[1]
      rows = len(raw if rocket is None else rocket)  # every process's cases
      features = np.empty((rows, start + (0 if rocket is None else rocket.shape[1])), np.float32)
      if self.scale is not None:
        self._set_scale(Moments().add(rocket))
        np.multiply(rocket, self.scale[...], out=features[:, start:])
      if self.hydra is not None:
        self._set_sparse_scale(*hydra.sparse_scale_fit(raw))
        features[:, :start] = hydra.sparse_scale(raw, self.hydra.mean[...], self.hydra.std[...])
      return features
    rocket, raw = Moments(), Moments()
    for kernel_features, counts in chunks:
      if self.scale is not None:
        rocket = rocket.add(kernel_features)
      if self.hydra is not None:
        raw = raw.add(np.sqrt(np.clip(counts, 0, None)))
    if self.scale is not None:
      self._set_scale(rocket.over_processes())
    if self.hydra is not None:
      raw = raw.over_processes()
      self._set_sparse_scale(*hydra.sparse_scale_from(raw.count, raw.mean, raw.squares, raw.zeros))
    return None

  def own_features(self, sequences, lengths):
    """(the kernels' features or None, Hydra's counts or None) of this process's cases, chunk by
    chunk (`own_feature_chunks`); Hydra's counts from `HYDRA_COUNTS` where this process has
    counted these cases with these kernels before, and kept there otherwise."""
    keys = HYDRA_COUNTS.keys(self.hydra, sequences, lengths) if self.hydra is not None else None
    known = HYDRA_COUNTS.get(keys) if keys is not None else None
    if known is not None and self.scale is None:  # Hydra alone: nothing left to compute
      yield None, known
      return
    features_of = functools.partial(feature_parts, *nnx.split(self), counts=known is None)
    start = 0
    for rocket, counts in own_feature_chunks(features_of, sequences, lengths):
      end = start + len(rocket if counts is None else counts)
      if known is not None:
        counts = known[start:end]
      elif keys is not None:
        HYDRA_COUNTS.put(keys[start:end], counts)
      start = end
      yield rocket, counts

  def _set_sparse_scale(self, mean, std):
    self.hydra.mean.set_value(np.asarray(mean, np.float32))
    self.hydra.std.set_value(np.asarray(std, np.float32))

  def _set_scale(self, moments):
    """x / std (population std, as StandardScaler's); features that never vary are left as
    they are."""
    std = np.sqrt(moments.squares / moments.count)
    self.scale.set_value(np.where(std > 0, 1 / np.where(std > 0, std, 1), 1).astype(np.float32))


@jax.jit
def _series(sequences, lengths):
  return multirocket.with_difference(jnp.swapaxes(sequences.astype(jnp.float32), 1, 2), lengths)


@functools.partial(jax.jit, static_argnums=0, static_argnames='counts')
def feature_parts(graphdef, state, sequences, lengths, counts: bool = True):
  """(the kernels' features or None, Hydra's counts or None: also where not `counts`) of the
  RocketClassifier `nnx.merge(graphdef, state)`: one compiled program per model structure and
  batch shape, however many models (the folds of a cross-validation) run it; the model itself
  is left as it is (nnx.jit would write its arrays back, placed on one device)."""
  model = nnx.merge(graphdef, state)
  rocket = model.rocket_features(sequences, lengths) if model.scale is not None else None
  counted = model.hydra_features(sequences, lengths) if model.hydra is not None and counts else None
  return rocket, counted


class CountsMemo:
  """Hydra's counts of the cases this process has counted, by the kernels and the case's own
  values: they depend on no other case and on nothing fitted, and every fit of one config draws
  the same kernels, so the folds of a cross-validation (each case a training case in k - 1 of
  them) and `dlearn.ensemble`'s final fit count each case once. The oldest are dropped past
  `limit` bytes."""

  def __init__(self, limit: int):
    self.limit = limit
    self.rows = collections.OrderedDict()
    self.bytes = 0

  def keys(self, part: HydraPart, sequences, lengths) -> list[bytes]:
    kernels = hashlib.blake2b(np.asarray(part.weights[...]).tobytes(), digest_size=16)
    if part.channels is not None:
      kernels.update(np.asarray(part.channels[...]).tobytes())
    keys = []
    for case, length in zip(sequences, lengths):
      key = kernels.copy()
      key.update(np.ascontiguousarray(case[: int(length)], np.float32).tobytes())  # its own steps
      key.update(np.int64(length).tobytes())
      keys.append(key.digest())
    return keys

  def clear(self) -> None:
    """Forgets every case (a benchmark's cross-validations then each count their own)."""
    self.rows.clear()
    self.bytes = 0

  def get(self, keys) -> np.ndarray | None:
    """The counts of every case of `keys`, or None unless all are known."""
    if not keys or not all(k in self.rows for k in keys):
      return None
    for k in keys:
      self.rows.move_to_end(k)
    return np.stack([self.rows[k] for k in keys])

  def put(self, keys, counts) -> None:
    for k, row in zip(keys, np.asarray(counts)):
      if k not in self.rows and row.nbytes <= self.limit:
        self.rows[k] = row.copy()
        self.bytes += row.nbytes
    while self.bytes > self.limit:
      self.bytes -= self.rows.popitem(last=False)[1].nbytes


# 256 MB: 8,192 cases of 1,460 steps (8,192 counts each), 16,384 of 100 steps (4,096)
HYDRA_COUNTS = CountsMemo(limit=256 * 2**20)


@dataclasses.dataclass(frozen=True)
class Moments:
  """Per feature, over the rows added: their count, mean, sum of squared deviations from the
  mean and number of zeros, merged chunk by chunk (Chan, Golub and LeVeque's update), so that
  no process needs every case's features at once."""

  count: int = 0
  mean: np.ndarray | float = 0.0
  squares: np.ndarray | float = 0.0
  zeros: np.ndarray | float = 0.0

  def add(self, rows) -> Moments:
    # sums in float64 over the rows as given (float32 features: no float64 copy of them all,
    # which took 3x as long as these passes)
    rows = np.asarray(rows, np.result_type(rows, np.float32))
    mean = rows.mean(0, dtype=np.float64)
    deviations = rows - mean.astype(rows.dtype)
    deviations *= deviations
    squares = deviations.sum(0, dtype=np.float64)
    return self.merge(Moments(len(rows), mean, squares, np.count_nonzero(rows == 0, axis=0)))

  def merge(self, other: Moments) -> Moments:
    if not self.count or not other.count:
      return other if not self.count else self
    count = self.count + other.count
    delta = other.mean - self.mean
    return Moments(
      count,
      self.mean + delta * other.count / count,
      self.squares + other.squares + delta**2 * self.count * other.count / count,
      self.zeros + other.zeros,
    )

  def over_processes(self) -> Moments:
    """Every process's moments merged, the same in each."""
    if jax.process_count() == 1:
      return self
    gathered = [
      multihost_utils.process_allgather(np.asarray(a, np.float64))
      for a in (self.count, self.mean, self.squares, self.zeros)
    ]
    merged = Moments()
    for count, mean, squares, zeros in zip(*gathered):
      merged = merged.merge(Moments(int(count), mean, squares, zeros))
    return merged


def own_feature_chunks(features_of, sequences, lengths):
  """features_of(sequences, lengths) of this process's cases, chunk by chunk on the host (each a
  tree of arrays of the chunk's cases): the cases split over its devices, in chunks of about
  equal size (at most FEATURE_BATCH), the last padded with its last case (one compiled shape)."""
  devices = jax.local_devices()
  sharding = NamedSharding(parallel.make_mesh(devices), P(parallel.AXIS))
  size = -(-len(sequences) // -(-len(sequences) // FEATURE_BATCH))  # cases per chunk
  size = -(-size // len(devices)) * len(devices)
  for start in range(0, len(sequences), size):
    chunk = np.minimum(np.arange(start, start + size), len(sequences) - 1)
    features = features_of(*jax.device_put((sequences[chunk], lengths[chunk]), sharding))
    yield jax.tree.map(lambda f: np.asarray(f)[: len(sequences) - start], features)


def in_split_order(rows, index) -> np.ndarray:
  """Every process's `rows` (of its cases `index` in the split) gathered, in the split's order."""
  if jax.process_count() == 1:
    return rows if np.all(np.diff(index) > 0) else rows[np.argsort(index)]
  # the processes' shares differ by one case at most: padded to one size, the padding's index -1
  size = int(multihost_utils.process_allgather(np.array(len(index))).max())
  padded = np.zeros((size, *rows.shape[1:]), rows.dtype)
  padded[: len(rows)] = rows
  every = multihost_utils.process_allgather(padded).reshape(-1, *rows.shape[1:])
  indices = multihost_utils.process_allgather(np.pad(index, (0, size - len(index)), constant_values=-1))  # fmt: skip
  indices = indices.reshape(-1)
  return every[indices >= 0][np.argsort(indices[indices >= 0])]


def _representations(transform, steps, channels, num_features, max_dilations, seed):
  """The series MiniRocket's kernels run over: the input (MiniRocket), or the input and its
  first difference (MultiRocket; with Hydra, aeon's MultiRocket-Hydra: 50,000 of them); none for
  Hydra alone."""
  if transform == 'hydra':
    return []
  if transform == 'minirocket':
    return [Representation(minirocket.unfitted(steps, channels, num_features, max_dilations, seed), channels, 0)]  # fmt: skip
  per = max(num_features // 8, 84)  # 4 poolings of 2 representations
  series = minirocket.unfitted(steps, channels, per, max_dilations, seed)
  difference = minirocket.unfitted(steps - 1, channels, per, max_dilations, seed)
  # the series' channel choices for the difference too, as aeon's transform has it
  combinations = len(difference.dilations) * len(minirocket.KERNEL_INDICES)
  end = int(np.cumsum(series.channels_per_combination)[combinations - 1])
  difference = minirocket.Parameters(
    series.channels_per_combination[:combinations],
    series.channel_indices[:end],
    difference.dilations,
    difference.features_per_dilation,
    difference.biases,
  )
  return [Representation(series, channels, 0), Representation(difference, channels, 1)]


def ridge_loo(features, labels, num_classes: int, alphas):
  """(kernel [F, K], bias [K], alpha, leave-one-out scores [N, K]): ridge regression of +-1
  one-vs-rest targets with an unpenalised intercept, alpha the one of `alphas` with the least
  leave-one-out squared error (the hat matrix's diagonal), and each case's scores from the fit
  to the other cases at that alpha. One decomposition serves every alpha: with fewer cases than
  features, the eigenvectors of the centred cases' Gram matrix (scikit-learn's RidgeCV chooses
  the same, its 'eigen' mode: an [N, N] problem instead of an SVD of [N, F]), summed over blocks
  of features centred in float64 (no float64 copy of them all: a third of the memory in the same
  time; float32 products changed the leave-one-out scores at small alphas, README); otherwise
  the SVD of the centred features."""
  x = np.asarray(features)
  y = -np.ones((len(x), num_classes))
  y[np.arange(len(x)), labels] = 1.0
  x_mean, y_mean = x.mean(0, dtype=np.float64), y.mean(0)
  gram = len(x) < x.shape[1]

  def centred():  # the features in blocks, centred, float64 [N, GRAM_BLOCK] (all at once: SVD)
    size = GRAM_BLOCK if gram else x.shape[1]
    for start in range(0, x.shape[1], size):
      block = x[:, start : start + size].astype(np.float64)
      block -= x_mean[start : start + size]
      yield block

  if gram:
    products = np.zeros((len(x), len(x)))
    for block in centred():
      products += block @ block.T
    s2, u = np.linalg.eigh(products)  # Xc = U S V^T: Xc Xc^T = U S^2 U^T
    s2 = np.maximum(s2, 0.0)  # centring leaves one zero eigenvalue; rounding may make it < 0
  else:
    u, s, vt = np.linalg.svd(next(centred()), full_matrices=False)
    s2 = s**2
  projected = u.T @ (y - y_mean)
  left_out = []  # per alpha, each case's residual from the fit without it
  for alpha in alphas:
    shrink = s2 / (s2 + alpha)
    residual = (y - y_mean) - u @ (shrink[:, None] * projected)
    hat = 1 / len(x) + (u**2) @ shrink
    left_out.append(residual / (1 - hat)[:, None])
  best = int(np.argmin([np.mean(r**2) for r in left_out]))
  alpha = float(alphas[best])
  if gram:  # Xc^T (Xc Xc^T + alpha)^-1 Yc, block by block
    dual = u @ (projected / (s2 + alpha)[:, None])
    kernel = np.concatenate([block.T @ dual for block in centred()])
  else:  # V S (S^2 + alpha)^-1 U^T Yc
    kernel = vt.T @ ((s / (s2 + alpha))[:, None] * projected)
  bias = y_mean - x_mean @ kernel
  return kernel.astype(np.float32), bias.astype(np.float32), alpha, y - left_out[best]


# Features per float64 block of the ridge's Gram matrix: [N, 4,096] float64 is 32 MB a
# thousand cases.
GRAM_BLOCK = 4096


TEMPERATURES = np.logspace(-1, 3, 81)


def temperature(scores, labels) -> float:
  """The factor of `TEMPERATURES` whose softmax of `scores` [N, K] x factor has the least mean
  cross-entropy against `labels`: temperature scaling (Guo et al. 2017) of the ridge's scores,
  fitted to its leave-one-out scores, so that its probabilities say how sure it is."""
  z = np.asarray(scores, np.float64)[None] * TEMPERATURES[:, None, None]  # [T, N, K]
  z = z - z.max(-1, keepdims=True)
  log_p = z[:, np.arange(len(labels)), labels] - np.log(np.exp(z).sum(-1))
  return float(TEMPERATURES[int(np.argmax(log_p.mean(-1)))])


class RocketFamily(ModelFamily):
  kinds = ('sequence',)
  ensembles = False  # init_from_data sets the biases, scale and head

  def create(self, config, *, num_classes, input_shape, rngs, axis_name, part_axis):
    del axis_name, part_axis
    s = settings(config)
    return RocketClassifier(
      num_classes,
      input_shape,
      transform=s.transform,
      num_features=s.num_features,
      max_dilations=s.max_dilations,
      seed=config.seed,
      rngs=rngs,
    )

  def init_from_data(self, model, config, source, info) -> None:
    """Fits the transform and the head to the train split. Every process reads its own share of
    the cases and computes their features on its own devices; the biases' few random cases are
    read by each process; the ridge head is fitted, the same in every process, to the features
    of all cases, gathered."""
    s = settings(config)
    check_head(s.head, config, len(source), model.head.kernel.shape[0])
    # this process's copy of every array on the host, whatever the mesh placed where
    nnx.update(model, jax.tree.map(_on_this_host, nnx.state(model)))
    own = np.array_split(np.arange(len(source)), jax.process_count())[jax.process_index()]
    if not len(own):
      raise ConfigError(
        f'{len(source)} training cases for {jax.process_count()} processes: every process needs '
        'at least one; run fewer processes.'
      )
    x, lengths, labels = _read(source, own, info)

    def read_cases(index):  # the biases' cases: this process's own where it holds them all
      at = np.minimum(np.searchsorted(own, index), len(own) - 1)
      if np.array_equal(own[at], index):
        return x[at], lengths[at]
      return _read(source, index, info)[:2]

    model.fit_biases(read_cases, len(source), config.seed)
    features = model.fit_scaling(x, lengths, own, keep_features=s.head == 'ridge')
    if s.head == 'ridge':
      labels = in_split_order(labels, own)
      kernel, bias, alpha, left_out = ridge_loo(features, labels, info.num_classes, s.alphas)
      # the scores scaled by their temperature: the same classes, softmax probabilities that
      # are calibrated on the cases each score was not fitted to
      factor = temperature(left_out, labels)
      model.head.kernel.set_value(kernel * np.float32(factor))
      model.head.bias.set_value(bias * np.float32(factor))
      logging.info(
        '%s: %d features of %d cases; ridge alpha %.3g, temperature %.3g by leave-one-out.',
        *(s.transform, features.shape[1], len(features), alpha, factor),
      )


def check_head(head: str, config, cases: int, features: int) -> None:
  """Refuses, before any case is read, a head that would come out untrained (a logistic head
  given no steps) or that could not be fitted in this machine's memory (the ridge's closed form
  on every case's features)."""
  if head == 'logistic' and config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(
      'config.rocket.head=logistic is trained by steps, and this config gives none '
      f'(config.num_epochs={config.num_epochs:g}): add e.g. --config.num_epochs=100.'
    )
  available = available_memory()
  if head == 'ridge' and available is not None and ridge_bytes(cases, features) > available:
    raise DoesNotFit(
      f'config.rocket.head=ridge: its closed form over {cases:,} cases x {features:,} features '
      f'needs about {ridge_bytes(cases, features) / 2**30:.1f} GB of memory, and this machine has '
      f'{available / 2**30:.1f} GB available: train the logistic head instead '
      '(--config.rocket.head=logistic --config.num_epochs=100), whose features are never all in '
      'memory, or give fewer features (config.rocket.num_features).'
    )


def ridge_bytes(cases: int, features: int) -> int:
  """About the most memory the ridge head's fit holds at once: the scaled features (float32) and
  ridge_loo's float64 work: with fewer cases than features, a centred block of features and its
  product, the [N, N] Gram matrix, its eigenvectors, their squares and LAPACK's workspace;
  otherwise a centred copy of the features, LAPACK's copy and the SVD's factors."""
  n, f = cases, features
  work = 2 * n * GRAM_BLOCK + 4 * n * n if n < f else n * f + 3 * n * f + 4 * f * f
  return 4 * n * f + 8 * work


def available_memory() -> int | None:
  """Bytes this machine can still give a process (Linux's MemAvailable), else None."""
  try:
    with open('/proc/meminfo') as f:
      fields = dict(line.split(':', 1) for line in f)
    return int(fields['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return None


def _on_this_host(a) -> np.ndarray:
  """The whole of array `a` in this process (process_allgather, which compiles a program per
  shape, only where other processes hold parts of it)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(a))
  return multihost_utils.process_allgather(a, tiled=True)


def _read(source, index, info):
  """(sequences, lengths, labels) of the split's cases `index`, as the model reads them."""
  cases = [pipeline.example(source[int(i)], info) for i in index]
  return (
    np.stack([c['sequence'] for c in cases]),
    np.array([c['length'] for c in cases]),
    np.array([c['label'] for c in cases]),
  )
