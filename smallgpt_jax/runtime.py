"""Process-wide settings that make training faster without changing results.

`setup(config)` is called once at the start of a run (loop.py does it). Each
piece is measured in benchmarks/README.md:

* `tune_host_allocator`: XLA:CPU allocates each step's temporary buffers (tens
  of MB to GB) in one block, from one of its worker threads; glibc hands
  blocks that large out with mmap and unmaps them on free, so every step
  page-faulted its whole working set again (~13k faults and a quarter of the
  step's CPU time spent in the kernel for the 4-layer model at batch 12, 120k
  faults for the 12-layer one). One heap for all threads, no mmap and no
  trimming make the next step reuse the same memory. The cost: the process
  keeps its peak heap size. It must run before NumPy or JAX start threads
  (a thread that already has an arena of its own keeps it), so importing
  `smallgpt_jax` does it.
* `use_unrolled_threefry`: on CPU, JAX lowers the Threefry hash behind
  `jax.random` (and so dropout) as a 5-iteration loop, one pass over the whole
  random array per iteration; the unrolled form JAX uses on GPU computes the
  same bits in one fused pass.
* `enable_compilation_cache`: JAX's persistent compilation cache, so a
  restarted run (resume, another seed, evaluation) loads its compiled train
  step from disk instead of compiling it again.

Set SMALLGPT_RUNTIME_TWEAKS=0 (before starting Python) to leave the allocator
and the Threefry lowering as they are, e.g. to measure what they bring.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("smallgpt_jax")

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def tweaks_enabled() -> bool:
    return os.environ.get("SMALLGPT_RUNTIME_TWEAKS", "1") != "0"


_allocator_tuned = False


def tune_host_allocator() -> bool:
    """Serve large allocations from the heap and keep freed memory (glibc only).

    Returns True if the setting is in effect.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux") or not tweaks_enabled():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # A thread's own arena maps big blocks whatever M_MMAP_MAX says, so
        # all threads share the main heap; it then never maps and never trims.
        ok = libc.mallopt(_M_ARENA_MAX, 1) == 1
        ok &= libc.mallopt(_M_MMAP_MAX, 0) == 1
        # -1 turns trimming off altogether (a threshold, even 2 GiB, is
        # crossed when a step of a big model frees more than that).
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
        _allocator_tuned = bool(ok)
        return _allocator_tuned
    except (OSError, AttributeError):  # Not glibc (e.g. musl): nothing to do.
        return False


def use_unrolled_threefry(unrolled: bool = True) -> bool:
    """Lowers jax.random's Threefry hash on CPU unrolled (True) or as JAX's
    default loop (False). Same bits either way. Returns True if it could be set
    (it uses JAX internals, so a future JAX may not offer it)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
        rule = tf._threefry2x32_lowering_rule if unrolled else tf._threefry2x32_cpu_lowering_rule
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
        return True
    except (ImportError, AttributeError):
        return False


def default_compilation_cache_dir() -> str:
    from smallgpt_jax.data import cache_dir
    return os.path.join(cache_dir(), "jax_compilation_cache")


def enable_compilation_cache(path: str, max_bytes: int = 2**30) -> str | None:
    """Turns on JAX's persistent compilation cache in `path` ('' = off).

    Entries are keyed by the program, the compiler flags and the JAX version,
    so one cache can serve every run; the least recently used entries are
    deleted once it grows past `max_bytes`. Returns the directory used.
    """
    if not path:
        return None
    import jax
    path = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", max_bytes)
    return path


def setup(config=None) -> dict:
    """Applies the settings above; `config.compilation_cache` picks the cache
    directory ('auto': the user cache, '': off). Returns what was applied."""
    applied = {"host_allocator": tune_host_allocator()}  # Done at import already.
    if tweaks_enabled():
        applied["unrolled_threefry"] = use_unrolled_threefry(True)
    cache = getattr(config, "compilation_cache", "") if config is not None else ""
    if cache == "auto":
        cache = default_compilation_cache_dir()
    applied["compilation_cache"] = enable_compilation_cache(cache)
    log.debug("runtime settings: %s", applied)
    return applied
