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
  for path, name in imagenet_resnet._torch_names(model).items():
    module = model
    for key in path:
      module = module[key] if isinstance(key, int) else getattr(module, key)
    if module is None:
      continue
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
