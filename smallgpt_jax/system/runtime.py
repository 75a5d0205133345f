"""Process-wide settings that make training faster without changing results.

Nothing here runs on import: a notebook or another program that imports
smallgpt_jax keeps its process as it was. The command lines apply the
settings through one call, `setup_process()`, first thing in their main()
(before they import NumPy or JAX); a run adds its own, `setup_run(config.compilation_cache)`.
Each piece is measured in benchmarks/README.md:

* `tune_host_allocator`: XLA:CPU allocates each step's temporary buffers (tens
  of MB to GB) in one block, from one of its worker threads; glibc hands
  blocks that large out with mmap and unmaps them on free, so every step
  page-faulted its whole working set again (~13k faults and a quarter of the
  step's CPU time spent in the kernel for the 4-layer model at batch 12, 120k
  faults for the 12-layer one). One heap for all threads, no mmap and no
  trimming make the next step reuse the same memory. The cost: the process
  keeps its peak heap size. It must run before NumPy or JAX start threads
  (a thread that already has an arena of its own keeps it), which is why
  this module imports nothing heavy at its top.
* `use_unrolled_threefry`: on CPU, JAX lowers the Threefry hash behind
  `jax.random` (and so dropout) as a 5-iteration loop, one pass over the whole
  random array per iteration; the unrolled form JAX uses on GPU computes the
  same bits in one fused pass.
* `quiet_library_logs`: library log noise (absl, orbax, jax) stays out of the
  console, and so do the tracebacks Orbax and asyncio print for failures our
  own error line already reports.
* No matplotlib backend is chosen: analysis/pictures.py draws on `matplotlib.figure.Figure`
  with the Agg canvas, which needs no display and no pyplot.
* `enable_compilation_cache`: JAX's persistent compilation cache, so a
  restarted run (resume, another seed, evaluation) loads its compiled train
  step from disk instead of compiling it again.
* `use_default_xla_flags`: on an NVIDIA GPU matrix products come from cuBLAS
  instead of XLA's Triton GEMMs (`GPU_XLA_FLAGS`; a user's XLA_FLAGS are
  added, and win for a flag they name too): in one measurement on a shared H100, the
  shakespeare_char step compiled several times faster so, at the same step
  time. XLA reads XLA_FLAGS once,
  when JAX starts its backend, so this runs before anything touches a device.
* `cache_dir`: the user's cache folder (`$XDG_CACHE_HOME/smallgpt_jax`), for
  downloaded corpora, token stores and the compilation cache.
* `resolve_dtype`: `config.model.dtype='auto'` (the default) computes in
  bfloat16 on GPUs and TPUs, which are built for it, and in float32 on CPU,
  where bfloat16 matmuls are slower and the results are the tested ones.

Set SMALLGPT_RUNTIME_TWEAKS=0 (before starting Python) to leave the allocator
and the Threefry lowering as they are, e.g. to measure what they bring.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import sys

from absl import logging as absl_logging

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


def allocator_tuned() -> bool:
    """Whether `tune_host_allocator`'s setting is in effect in this process
    (multi-threaded libraries are slower under it: see store/prepare_child.py)."""
    return _allocator_tuned


def use_unrolled_threefry(unrolled: bool = True) -> bool:
    """Lowers jax.random's Threefry hash on CPU unrolled (True) or as JAX's
    default loop (False). Same bits either way. Returns True if it could be set
    (it uses JAX internals, so a future JAX may not offer it)."""
    try:  # JAX is imported here, not at the top: see the module docstring.
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
        rule = tf._threefry2x32_lowering_rule if unrolled else tf._threefry2x32_cpu_lowering_rule
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
        return True
    except (ImportError, AttributeError):
        return False


def cache_dir() -> str:
    """The per-user cache folder: downloaded corpora, token stores and the
    compilation cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(base, "smallgpt_jax")


def default_compilation_cache_dir() -> str:
    return os.path.join(cache_dir(), "jax_compilation_cache")


def enable_compilation_cache(path: str, max_bytes: int = 2**30) -> str | None:
    """Turns on JAX's persistent compilation cache in `path` ('' = off).

    Entries are keyed by the program, the compiler flags and the JAX version,
    so one cache can serve every run; the least recently used entries are
    deleted once it grows past `max_bytes`. Returns the directory used.
    """
    if not path:
        return None
    import jax  # Here: this module is imported before JAX may be.
    path = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:  # A limit the user set wins.
        jax.config.update("jax_compilation_cache_max_size", max_bytes)
    return path


GPU_XLA_FLAGS = "--xla_gpu_enable_triton_gemm=false"  # Why: see the module docstring.


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def xla_flags_for(environ: dict, gpu: bool) -> tuple[str, str]:
    """(the XLA_FLAGS a run uses, where they come from). On a GPU the user's
    flags are added to GPU_XLA_FLAGS, and a flag the user also names is
    theirs (a user asking for `--xla_dump_to` alone keeps cuBLAS GEMMs; one
    setting `--xla_gpu_enable_triton_gemm=true` gets Triton). Elsewhere the
    user's flags are used as they are."""
    users = environ.get("XLA_FLAGS")
    if not gpu:
        return (users, "set by the user") if users is not None else ("", "none")
    if not users or not users.strip():
        return GPU_XLA_FLAGS, "smallgpt_jax's GPU default"
    named = {_flag_name(f) for f in users.split()}
    kept = [f for f in GPU_XLA_FLAGS.split() if _flag_name(f) not in named]
    if not kept:
        return users, "set by the user"
    return " ".join(kept + [users.strip()]), "smallgpt_jax's GPU default, then the user's"


def may_use_cuda(environ: dict) -> bool:
    """Whether JAX may start on an NVIDIA GPU, known without starting it: a
    CUDA plugin is installed and JAX_PLATFORMS (if set) allows CUDA."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return False
    return any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda13_plugin", "jax_cuda12_plugin"))


_XLA_FLAGS_APPLIED: tuple[str, str] | None = None  # The first call's answer.


def use_default_xla_flags() -> tuple[str, str]:
    """Sets XLA_FLAGS on a CUDA machine to GPU_XLA_FLAGS plus the user's
    (`xla_flags_for`); returns (flags, source). Too late once JAX's backend
    has started: then the source says so. Later calls return the first
    call's answer (the flags it set are not all the user's)."""
    global _XLA_FLAGS_APPLIED
    if _XLA_FLAGS_APPLIED is None:
        gpu = may_use_cuda(os.environ)
        flags, source = xla_flags_for(os.environ, gpu)
        users = os.environ.get("XLA_FLAGS")
        if gpu and flags != users:
            from jax._src import xla_bridge  # Here: see enable_compilation_cache.
            if xla_bridge.backends_are_initialized():
                flags = users or ""
                source = (f"{'set by the user' if users else 'none'} (JAX had started "
                          "before smallgpt_jax could add its GPU default)")
            else:
                os.environ["XLA_FLAGS"] = flags
        _XLA_FLAGS_APPLIED = (flags, source)
    return _XLA_FLAGS_APPLIED


def resolve_dtype(dtype: str, platform: str) -> str:
    """config.model.dtype: 'auto' -> 'bfloat16' on 'gpu'/'tpu', 'float32' on
    'cpu' (and anything else); other names are kept."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if platform in ("gpu", "tpu") else "float32"


class _QuietOrbaxErrors(logging.Filter):
    """Orbax logs an error (often with a traceback) from each thread of a save
    that failed (a full disk, say). Every such failure also reaches our code
    as an exception, and our own error line says what failed and what to do,
    so these records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and f"{os.sep}orbax{os.sep}" in record.pathname)


_QUIET_ORBAX_ERRORS = _QuietOrbaxErrors()  # One instance: adding it again is a no-op.


def _quiet_unraisable(unraisable) -> None:
    """Exceptions Python cannot raise (in a gc callback, a __del__):

    - After a restore fails (damaged files), TensorStore finishes the reads
      still in flight and reports them to Orbax's asyncio loop, closed by then,
      and each read of a missing array file whose coroutine is dropped reports
      a page of TensorStore spec. Our error line already says what failed:
      those are dropped.
    - A signal's handler that raised to end the process (SystemExit,
      KeyboardInterrupt, stopping.StopNow: an `exit_status`) while a gc
      callback ran would be dropped, and the process would go on as if no
      signal came: it ends here instead, at once, with the exception's line.

    Anything else is printed as usual."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    if "See full TensorStore details" in str(error):
        return
    if isinstance(error, SystemExit):  # Its handler printed its line already.
        status, line = error.code if isinstance(error.code, int) else 1, ""
    elif isinstance(error, KeyboardInterrupt):
        status, line = 130, "error: interrupted"
    elif isinstance(getattr(error, "exit_status", None), int):
        status, line = error.exit_status, str(error)
    else:
        sys.__unraisablehook__(unraisable)
        return
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        if line:
            print(line, file=sys.stderr, flush=True)
    os._exit(status)


def quiet_library_logs() -> None:
    """Keeps library log noise (absl, orbax, jax) out of the console."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax", "absl", "orbax", "tensorboardX", "etils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_QUIET_ORBAX_ERRORS)
    # After a failed restore, Orbax leaves reads in flight whose errors asyncio
    # would log as "Future exception was never retrieved"; ours is reported.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = _quiet_unraisable
    logging.getLogger("smallgpt_jax").setLevel(logging.INFO)


def setup_process() -> dict:
    """Applies the process-wide settings above: the allocator first, then the
    logs, then the Threefry lowering. Every command line that runs JAX calls
    it once, first thing in main(), before it imports NumPy or JAX. Commands
    that run no step (prepare, sweep, shapes) only quiet the logs: the
    allocator setting slows other libraries' threads. Returns what was
    applied."""
    applied = {"host_allocator": tune_host_allocator()}
    quiet_library_logs()
    if tweaks_enabled():
        applied["unrolled_threefry"] = use_unrolled_threefry(True)
    log.debug("process settings: %s", applied)
    return applied


def setup_run(compilation_cache: str = "") -> dict:
    """A run's settings: the default XLA flags (before JAX starts its backend)
    and the compilation cache that `config.compilation_cache` picks ('auto':
    the user cache, '': off, else a folder). Returns what was applied.

    The cache is a JAX setting of the whole process, but it belongs to the
    run: its value is a field of the run's config, known once the config is
    read, and it changes no result, only how long compiling takes. (JAX
    decides at the process's first compilation whether to use it, so a run
    started after other code compiled runs without it.)"""
    applied = {"xla_flags": use_default_xla_flags()}
    cache = compilation_cache
    if cache == "auto":
        cache = default_compilation_cache_dir()
    applied["compilation_cache"] = enable_compilation_cache(cache)
    log.debug("run settings: %s", applied)
    return applied
