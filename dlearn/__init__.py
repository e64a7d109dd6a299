"""dlearn: data-parallel CNN and RNN training in JAX/Flax."""
