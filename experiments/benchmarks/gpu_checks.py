"""Correctness checks that need a GPU, run first by gpu_run.sh: JAX's cuDNN LSTM against dlearn's
scan (the CPU tests can only check the parameter packing, through JAX's reference of that kernel),
and bf16 mixed precision against float32. Prints one PASS/FAIL line per check; exit status 1 if
any fails."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlearn import configs
from dlearn.models import create_model, rnn


def cudnn_matches_scan(num_layers, bidirectional):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 32, 8)), jnp.float32)
  lengths = jnp.asarray(rng.integers(1, 33, 16), jnp.int32)
  results = []
  for implementation in ('scan', 'cudnn'):
    model = rnn.RNNClassifier(
      5,
      8,
      rngs=nnx.Rngs(0),
      cell='lstm',
      hidden_size=32,
      num_layers=num_layers,
      bidirectional=bidirectional,
      implementation=implementation,
    )
    graphdef, params = nnx.split(model)
    loss = jax.jit(lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x, lengths))))
    results.append(
      (jax.jit(lambda p: nnx.merge(graphdef, p)(x, lengths))(params), jax.grad(loss)(params))
    )
  (a, ga), (b, gb) = results
  # cuDNN may use TF32 matmuls by default on Ampere and later: a looser tolerance than on CPU.
  np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-3)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=5e-2, atol=5e-3), gb, ga)


def bfloat16_close_to_float32(model):
  config = configs.base()
  config.model, config.rnn.hidden_size = model, 64
  shape = (32, 8) if model == 'rnn' else (32, 32, 3)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, *shape)), jnp.float32)
  inputs = (x, jnp.full((8,), 32)) if model == 'rnn' else (x,)
  logits = {}
  for dtype in ('float32', 'bfloat16'):
    config.dtype = dtype
    network = create_model(config, num_classes=10, input_shape=shape, axis_name=None, seed=0)
    logits[dtype] = np.asarray(network(*inputs, train=False).astype(jnp.float32))
  scale = np.max(np.abs(logits['float32']))
  np.testing.assert_allclose(logits['bfloat16'], logits['float32'], atol=3e-2 * scale)


def main():
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}', flush=True)
  checks = [
    ('cudnn LSTM == scan, 1 layer', lambda: cudnn_matches_scan(1, False)),
    ('cudnn LSTM == scan, 2 bidirectional layers', lambda: cudnn_matches_scan(2, True)),
    ('bf16 ~ float32, seed_dcnn', lambda: bfloat16_close_to_float32('seed_dcnn')),
    ('bf16 ~ float32, resnet', lambda: bfloat16_close_to_float32('resnet')),
    ('bf16 ~ float32, lstm', lambda: bfloat16_close_to_float32('rnn')),
  ]
  failed = 0
  for name, check in checks:
    try:
      check()
      print(f'PASS {name}', flush=True)
    except Exception as e:  # report every check, then fail
      failed += 1
      print(f'FAIL {name}: {type(e).__name__}: {str(e)[:300]}', flush=True)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
