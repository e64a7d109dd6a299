"""Mixup and CutMix on the device: soft targets that sum to 1 and match what was mixed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlearn import steps
from dlearn.data import augment


def _batch(n=6, size=8, classes=4):
  images = jnp.stack([jnp.full((size, size, 3), 10.0 * i) for i in range(n)])
  return images, jax.nn.one_hot(jnp.arange(n) % classes, classes)


@pytest.mark.parametrize('mixup,cutmix', [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_are_soft_sum_to_one_and_weigh_what_was_mixed(mixup, cutmix):
  images, targets = _batch()
  ratios = []
  for seed in range(8):
    mixed, soft = augment.mix(jax.random.key(seed), images, targets, mixup, cutmix)
    soft = np.asarray(soft)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    # Example i is mixed with example n-1-i: its own class gets lam, the other's 1 - lam, and
    # the image holds each in the same proportion (every image is one constant value).
    own = soft[np.arange(6), np.arange(6) % 4]
    value = np.asarray(mixed).mean(axis=(1, 2, 3))
    expected = own * 10.0 * np.arange(6) + (1 - own) * 10.0 * np.arange(6)[::-1]
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-3)
    ratios.append(own[0])
  # Beta(alpha, alpha) ratios: the examples are really mixed, by a different amount per batch.
  assert len(set(np.round(ratios, 6))) == len(ratios) and 0 < min(ratios) < max(ratios) < 1


def test_without_alphas_nothing_changes_and_the_loss_takes_soft_targets():
  images, targets = _batch()
  mixed, same = augment.mix(jax.random.key(0), images, targets, 0.0, 0.0)
  np.testing.assert_array_equal(mixed, images)
  np.testing.assert_array_equal(same, targets)
  logits = jnp.array([[2.0, 0.0, 0.0, 0.0]])
  hard = steps.cross_entropy(logits, jnp.array([0]), 0.0)
  soft = steps.cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0, 0.0]]), 0.0)
  np.testing.assert_allclose(hard, soft)
  half = steps.cross_entropy(logits, jnp.array([[0.5, 0.5, 0.0, 0.0]]), 0.0)
  assert float(half[0]) > float(hard[0])


@pytest.mark.slow  # two short training runs
def test_training_with_mixup_and_cutmix_runs_under_jit_and_pmap(tmp_path):
  import helpers

  from dlearn import configs, train

  data_dir = helpers.prepared_images(tmp_path, per_class=8)
  losses = {}
  for mapping in ('jit', 'pmap'):
    config = configs.base()
    config.data.name, config.data.data_dir = 'toy_images', data_dir
    config.data.train_split, config.data.eval_split = 'train', 'validation'
    config.data.mixup_alpha, config.data.cutmix_alpha = 0.8, 1.0
    config.batch_size, config.eval_batch_size, config.num_train_steps = 16, 16, 2
    config.mapping, config.write_plots = mapping, False
    result = train.train_and_evaluate(config, str(tmp_path / mapping))
    losses[mapping] = result['eval']['loss']
  assert np.isfinite(list(losses.values())).all()
  assert losses['jit'] == pytest.approx(losses['pmap'], rel=1e-4)  # the same per-device mixing
