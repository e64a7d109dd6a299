"""ResNet-50 v1.5: torchvision's parameter count, and torchvision's state_dict layout loaded
(the forward pass against torchvision itself: experiments/benchmarks/reference_models.py)."""

import jax
import numpy as np
import pytest
from flax import nnx

from dlearn.models import imagenet_resnet


def _count(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_resnet50_has_torchvisions_parameter_count():
  abstract = nnx.eval_shape(
    lambda: imagenet_resnet.ImageNetResNet(1000, (224, 224, 3), rngs=nnx.Rngs(0))
  )
  assert _count(abstract) == 25_557_032


def _as_torch(model):
  """The model's weights in torchvision's names and layouts (what load_torchvision reads)."""
  state = {}
  for _, module, name in imagenet_resnet.torch_modules(model):
    if isinstance(module, nnx.Conv):
      state[f'{name}.weight'] = np.asarray(module.kernel[...]).transpose(3, 2, 0, 1)
    elif isinstance(module, nnx.Linear):
      state[f'{name}.weight'] = np.asarray(module.kernel[...]).T
      state[f'{name}.bias'] = np.asarray(module.bias[...])
    else:
      pairs = [
        ('scale', 'weight'),
        ('bias', 'bias'),
        ('mean', 'running_mean'),
        ('var', 'running_var'),
      ]
      for ours, theirs in pairs:
        state[f'{name}.{theirs}'] = np.asarray(getattr(module, ours)[...])
  return state


def test_a_torchvision_state_dict_loads_into_every_parameter_and_statistic():
  make = lambda seed: imagenet_resnet.ImageNetResNet(
    7, (32, 32, 3), rngs=nnx.Rngs(seed), stage_sizes=(1, 2), width=4
  )
  source, target = make(0), make(1)
  state = _as_torch(source)
  assert 'layer2.0.downsample.0.weight' in state and 'layer2.1.conv3.weight' in state
  rng = np.random.default_rng(0)
  state = {
    name: value + rng.uniform(0.1, 0.2, value.shape).astype(np.float32)
    for name, value in state.items()
  }
  state['bn1.num_batches_tracked'] = np.int64(3)  # torch's counter: nothing to load
  imagenet_resnet.load_torchvision(target, state)
  loaded = _as_torch(target)
  assert set(loaded) == set(state) - {'bn1.num_batches_tracked'}
  for name, value in loaded.items():
    np.testing.assert_allclose(value, state[name], rtol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match='no place for'):
    imagenet_resnet.load_torchvision(make(2), {**state, 'extra.weight': np.zeros(3)})
  broken = dict(state)
  broken['fc.weight'] = np.zeros((3, 3))
  with pytest.raises(ValueError, match=r'fc.weight: shape \(3, 3\)'):
    imagenet_resnet.load_torchvision(make(2), broken)


@pytest.mark.slow  # a short training run
@pytest.mark.parametrize('classes', [3, 10])  # the dataset's 3, or a head to start afresh
def test_init_from_takes_pytorch_weights(tmp_path, classes):
  import helpers
  import ml_collections

  from dlearn import configs, train

  data_dir = helpers.prepared_images(tmp_path, per_class=8)
  section = {'stage_sizes': (1, 1), 'width': 4, 'zero_init_last_norm': False}
  weights = imagenet_resnet.ImageNetResNet(
    classes, (8, 8, 3), rngs=nnx.Rngs(5), stage_sizes=(1, 1), width=4
  )
  state = _as_torch(weights)
  np.savez(tmp_path / 'weights.npz', **state)
  config = configs.base()
  config.model, config.imagenet_resnet = 'resnet50', ml_collections.ConfigDict(section)
  config.data.name, config.data.data_dir = 'toy_images', data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.batch_size, config.eval_batch_size, config.num_train_steps = 8, 8, 1
  config.learning_rate, config.write_plots = 0.0, False  # the step leaves the weights as loaded
  config.init_from = str(tmp_path / 'weights.npz')
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  params = result['state'].params
  np.testing.assert_allclose(
    np.asarray(params['stem']['kernel'][...]).transpose(3, 2, 0, 1),
    state['conv1.weight'],
    rtol=1e-6,
  )
  head = np.asarray(params['head']['kernel'][...]).T
  assert (head.shape == state['fc.weight'].shape) == (classes == 3)
  if classes == 3:
    np.testing.assert_allclose(head, state['fc.weight'], rtol=1e-6)
