"""dlearn: data-parallel CNN and RNN training in JAX/Flax."""

import os

# NumPy's OpenBLAS threads otherwise spin for about 0.1 s after each call (its default timeout,
# 2^28 cycles) and take the cores from XLA's next program: between a ridge head's decomposition
# and the next fold's transform on a small CPU (README, "ROCKET"). Read when NumPy first loads
# OpenBLAS, so set before it; a value the user set is kept.
os.environ.setdefault('OPENBLAS_THREAD_TIMEOUT', '4')
