"""smallgpt_jax: a small GPT in JAX/Flax, to learn from and to do research with.

Importing the package tunes the C allocator for XLA's large per-step buffers
(see runtime.py: no per-step page faults). It has to happen before NumPy or
JAX start their threads, which is why it is done here, on first import. Set
SMALLGPT_RUNTIME_TWEAKS=0 to leave the allocator alone.
"""

from smallgpt_jax import runtime as _runtime

_runtime.tune_host_allocator()
