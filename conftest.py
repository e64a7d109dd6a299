"""Forces 8 CPU devices before anything imports jax, so every test runs data-parallel code on a
laptop. Must stay the root conftest: pytest imports it before any test module."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after XLA_FLAGS, on purpose)

assert jax.device_count() == 8, (
  f'Tests need 8 host devices, got {jax.device_count()}: jax was imported before conftest.py '
  'set XLA_FLAGS.'
)
