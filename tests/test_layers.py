import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from dlearn import configs
from dlearn.models import create_model, layers


@pytest.mark.parametrize(
  'kernel, strides, padding',
  [
    ((3, 3), (1, 1), 'SAME'),
    ((3, 3), (2, 2), 'SAME'),
    ((1, 1), (2, 2), 'SAME'),
    ((3, 2), (1, 2), 'VALID'),
    ((5, 5), (1, 1), ((1, 3), (2, 0))),
  ],
)
def test_convolution_and_its_gradients_equal_xlas(kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*kernel, 4, 5)), jnp.float32)
  dimension_numbers = lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))
  outputs = {}
  for name, conv in (('xla', lax.conv_general_dilated), ('dlearn', layers.conv_general_dilated)):
    loss = lambda x, k: jnp.sum(
      jnp.sin(conv(x, k, strides, padding, dimension_numbers=dimension_numbers))
    )
    outputs[name] = (
      conv(x, k, strides, padding, dimension_numbers=dimension_numbers),
      *jax.grad(loss, (0, 1))(x, k),
    )
  for ours, xlas in zip(outputs['dlearn'], outputs['xla']):
    np.testing.assert_allclose(ours, xlas, rtol=1e-4, atol=1e-4)


def test_max_pool_and_its_gradient_equal_flaxs():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 6, 3)), jnp.float32)  # odd height
  flax_pool = lambda x: nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), flax_pool(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
  np.testing.assert_allclose(grad(layers.max_pool_2x2), grad(flax_pool), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('model', ['seed_dcnn', 'resnet', 'rnn'])
def test_bfloat16_computes_close_to_float32_with_float32_parameters(model):
  config = configs.base()
  config.model, config.resnet.stage_sizes, config.resnet.width = model, (1, 1), 8
  config.rnn.hidden_size = 16
  shape = (12, 4) if model == 'rnn' else (16, 16, 3)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, *shape)), jnp.float32)
  inputs = (x, jnp.array([12, 5, 1, 12])) if model == 'rnn' else (x,)
  logits = {}
  for dtype in ('float32', 'bfloat16'):
    config.dtype = dtype
    network = create_model(config, num_classes=3, input_shape=shape, axis_name=None, seed=0)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(network, nnx.Param))} == {
      jnp.dtype(jnp.float32)
    }
    logits[dtype] = network(*inputs, train=False)
  assert logits['bfloat16'].dtype == jnp.bfloat16
  # bf16 keeps 8 bits of mantissa: agreement to about 1e-2 relative to the logits' scale.
  scale = float(jnp.max(jnp.abs(logits['float32'])))
  np.testing.assert_allclose(
    logits['bfloat16'].astype(jnp.float32), logits['float32'], atol=3e-2 * scale
  )


def test_unknown_dtype_is_a_clear_error():
  config = configs.base()
  config.dtype = 'float16'
  with pytest.raises(ValueError, match="Unknown config.dtype 'float16'"):
    create_model(config, num_classes=3, input_shape=(8, 8, 3), axis_name=None, seed=0)
