"""Vision Transformers: timm's parameter counts, timm's state_dict layout loaded (with position
embeddings interpolated to another image size), and a short training run. The forward pass
against timm itself: experiments/benchmarks/reference_models.py."""

import jax
import numpy as np
import pytest
from flax import nnx

from dlearn.models import vit


def _count(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
  'size,patch,count',
  [('Ti', 16, 5_717_416), ('S', 32, 22_878_952), ('B', 16, 86_567_656), ('L', 16, 304_326_632)],
)
def test_vits_have_timms_parameter_counts(size, patch, count):
  abstract = nnx.eval_shape(
    lambda: vit.ViT(1000, (224, 224, 3), rngs=nnx.Rngs(0), size=size, patch=patch)
  )
  assert _count(abstract) == count


def _as_timm(model):
  state = {
    'patch_embed.proj.weight': np.asarray(model.patch_embed.kernel[...]).transpose(3, 2, 0, 1),
    'patch_embed.proj.bias': np.asarray(model.patch_embed.bias[...]),
    'cls_token': np.asarray(model.cls_token[...]),
    'pos_embed': np.asarray(model.pos_embed[...]),
    'norm.weight': np.asarray(model.norm.scale[...]),
    'norm.bias': np.asarray(model.norm.bias[...]),
    'head.weight': np.asarray(model.head.kernel[...]).T,
    'head.bias': np.asarray(model.head.bias[...]),
  }
  for i, block in enumerate(model.blocks):
    for ours, theirs in [('norm1', 'norm1'), ('norm2', 'norm2')]:
      state[f'blocks.{i}.{theirs}.weight'] = np.asarray(getattr(block, ours).scale[...])
      state[f'blocks.{i}.{theirs}.bias'] = np.asarray(getattr(block, ours).bias[...])
    for ours, theirs in [
      ('qkv', 'attn.qkv'),
      ('proj', 'attn.proj'),
      ('fc1', 'mlp.fc1'),
      ('fc2', 'mlp.fc2'),
    ]:
      state[f'blocks.{i}.{theirs}.weight'] = np.asarray(getattr(block, ours).kernel[...]).T
      state[f'blocks.{i}.{theirs}.bias'] = np.asarray(getattr(block, ours).bias[...])
  return state


def test_timm_weights_load_and_position_embeddings_follow_the_image_size():
  source = vit.ViT(10, (64, 64, 3), rngs=nnx.Rngs(0), size='Ti', patch=16)  # a 4x4 grid
  rng = np.random.default_rng(0)
  state = {
    k: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in _as_timm(source).items()
  }
  same = vit.ViT(10, (64, 64, 3), rngs=nnx.Rngs(1), size='Ti', patch=16)
  vit.load_timm(same, state)
  for name, value in _as_timm(same).items():
    np.testing.assert_allclose(value, state[name], rtol=1e-6, err_msg=name)
  larger = vit.ViT(10, (96, 96, 3), rngs=nnx.Rngs(1), size='Ti', patch=16)  # a 6x6 grid
  vit.load_timm(larger, state)
  pos = np.asarray(larger.pos_embed[...])
  assert pos.shape == (1, 37, 192)
  np.testing.assert_allclose(pos[:, 0], state['pos_embed'][:, 0], rtol=1e-6)  # the class token's
  grid = state['pos_embed'][0, 1:].reshape(4, 4, 192)
  assert abs(pos[0, 1:].reshape(6, 6, 192).mean() - grid.mean()) < 0.01  # a smooth resize
  with pytest.raises(ValueError, match='no place for'):
    vit.load_timm(same, {**state, 'extra': np.zeros(2)})
  # Weights for 1,000 classes on a model of 10: all but the head.
  other = {**state, 'head.weight': np.zeros((1000, 192)), 'head.bias': np.zeros(1000)}
  fresh = vit.ViT(10, (64, 64, 3), rngs=nnx.Rngs(2), size='Ti', patch=16)
  head_before = np.asarray(fresh.head.kernel[...]).copy()
  vit.ViTFamily().load_torch_state_dict(fresh, other, None)
  np.testing.assert_array_equal(fresh.head.kernel[...], head_before)
  np.testing.assert_allclose(fresh.pos_embed[...], state['pos_embed'], rtol=1e-6)
  with pytest.raises(ValueError, match='does not divide'):
    vit.ViT(10, (40, 40, 3), rngs=nnx.Rngs(0), size='Ti', patch=16)


@pytest.mark.slow  # a short training run
def test_a_small_vit_trains_on_a_prepared_dataset(tmp_path):
  import helpers
  import ml_collections

  from dlearn import configs, train

  data_dir = helpers.prepared_images(tmp_path, per_class=8, size=(16, 16))
  config = configs.base()
  config.model, config.vit = 'vit', ml_collections.ConfigDict({'size': 'Ti', 'patch': 8})
  config.data.name, config.data.data_dir = 'toy_images', data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.optimizer, config.learning_rate, config.weight_decay_mask = 'adamw', 1e-3, 'matrices'
  config.grad_clip_norm = 1.0
  config.batch_size, config.eval_batch_size, config.num_train_steps = 8, 8, 3
  config.write_plots = False
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(result['eval']['loss']) and result['eval']['count'] > 0


def test_dropout_and_stochastic_depth_draw_from_each_examples_key():
  model = vit.ViT(
    10, (32, 32, 3), rngs=nnx.Rngs(0), size='Ti', patch=16, dropout=0.1, drop_path=0.2
  )
  rng = np.random.default_rng(0)
  model.head.kernel[...] = rng.normal(0, 0.1, model.head.kernel.shape).astype(np.float32)  # not 0
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), 4)
  first, again = model(images, train=True, keys=keys), model(images, train=True, keys=keys)
  np.testing.assert_array_equal(first, again)  # the same keys, the same masks
  other = model(images, train=True, keys=jax.random.split(jax.random.key(1), 4))
  assert not np.allclose(first, other)  # other keys (another step or device), other masks
  # An example's output depends on its own key only: the batch's other keys change nothing.
  mixed = jax.numpy.concatenate([keys[:1], jax.random.split(jax.random.key(2), 3)])
  np.testing.assert_allclose(model(images, train=True, keys=mixed)[0], first[0], rtol=1e-6)
  evaluation = model(images, train=False)
  np.testing.assert_array_equal(evaluation, model(images, train=False, keys=keys))  # no noise
  assert model.drop_paths[0] == 0.0 and model.drop_paths[-1] == pytest.approx(0.2)


@pytest.mark.slow  # training runs
def test_with_dropout_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
  import helpers
  import ml_collections

  from dlearn import configs, train

  data_dir = helpers.prepared_images(tmp_path, per_class=8, size=(16, 16))

  def run(workdir, steps):
    config = configs.base()
    config.model = 'vit'
    config.vit = ml_collections.ConfigDict(
      {'size': 'Ti', 'patch': 8, 'dropout': 0.1, 'drop_path': 0.1}
    )
    config.data.name, config.data.data_dir = 'toy_images', data_dir
    config.data.train_split, config.data.eval_split = 'train', 'validation'
    config.optimizer, config.learning_rate = 'adamw', 1e-3
    config.batch_size, config.eval_batch_size, config.num_train_steps = 8, 8, steps
    config.checkpoint_every_steps, config.write_plots = 2, False
    return train.train_and_evaluate(config, str(workdir))['state'].params

  run(tmp_path / 'resumed', 2)
  resumed = run(tmp_path / 'resumed', 4)
  uninterrupted = run(tmp_path / 'once', 4)
  helpers.assert_trees_close(resumed, uninterrupted, rtol=0, atol=0)
