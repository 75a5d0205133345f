"""smallgpt_jax: a small GPT in JAX/Flax, to learn from and to do research with.

Importing the package, or any module of it, changes nothing in the process:
the command lines apply their process-wide settings (allocator, logs, the
Threefry lowering) through one call, `runtime.setup_process()`; see
system/runtime.py and docs/architecture.md.
"""
