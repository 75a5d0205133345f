"""Test setup: find Tiny Shakespeare without downloading, keep JAX quiet."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's (major, minor), read without importing JAX."""
    from importlib.metadata import version
    return tuple(int(part) for part in version("jaxlib").split(".")[:2])


def _find_corpus_dir() -> str | None:
    """Where a user would have Tiny Shakespeare: $SMALLGPT_DATA_DIR, the user
    cache a training run downloads it into, or a ../shared/data folder."""
    user_cache = os.path.join(os.environ.get("XDG_CACHE_HOME")
                              or os.path.join(os.path.expanduser("~"), ".cache"), "smallgpt_jax")
    for folder in (os.environ.get("SMALLGPT_DATA_DIR"), user_cache,
                   os.path.join(os.path.dirname(ROOT), "shared", "data")):
        if folder and os.path.isfile(os.path.join(folder, "tinyshakespeare", "input.txt")):
            return folder
    return None


# Tests never download. Found now, before the user cache is redirected below.
if _find_corpus_dir():
    os.environ["SMALLGPT_DATA_DIR"] = _find_corpus_dir()


# Test programs are tiny: compiling them fast matters, running them fast does
# not. Less LLVM optimization cuts XLA's CPU compile time by half or more, and
# XLA's older loop emitters for fusions compile in about half the time of the
# newer fusion emitters; neither changes the numbers beyond float rounding (the
# loss-regression fixture still matches). Set before JAX starts, so
# in-process tests and the subprocesses they start (which inherit os.environ)
# both get it.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if _jaxlib_version() < (0, 11):  # Newer XLA has only the fusion emitters (and stops
    FAST_COMPILE += " --xla_cpu_use_fusion_emitters=false"  # at a flag it does not know).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# The tests compute on this host's CPU. Said once for every test and the
# processes they start: with libtpu installed (the tpu extra, for the compile
# check) JAX would otherwise look for a TPU at each start, and the memory
# check would leave the activations to an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Caches live in one folder per test session, not in the user's ~/.cache:
# every session starts cold, as on a fresh machine, and leaves nothing behind.
# The pytest-xdist workers inherit the folder from the process that made it.
if "SMALLGPT_TEST_CACHE" not in os.environ:
    os.environ["SMALLGPT_TEST_CACHE"] = tempfile.mkdtemp(prefix="smallgpt_test_cache_")
    atexit.register(shutil.rmtree, os.environ["SMALLGPT_TEST_CACHE"], ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = os.environ["SMALLGPT_TEST_CACHE"]
# One JAX compilation cache for every test and every process tests start
# (the folder `compilation_cache='auto'` picks): many tests compile the same
# tiny programs, and a hit skips XLA. Every entry is kept, however small.
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
    os.environ["SMALLGPT_TEST_CACHE"], "smallgpt_jax", "jax_compilation_cache")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# In-process runs get the allocator and the Threefry lowering a command line
# sets (runtime.setup_process); not its log settings and unraisable hook,
# which would replace pytest's. After the variables above: JAX reads them
# when it is imported.
from smallgpt_jax.system import runtime  # noqa: E402 (imports no JAX itself)

# No size limit in any test process, runs included (runtime leaves a limit
# set here alone): with one, JAX locks the folder and reads every entry's
# access-time file on each write (thousands of tiny entries here); and an
# entry written without a limit (no access-time file) made a limited run's
# writes fail with a warning.
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = "-1"

runtime.tune_host_allocator()
# Token stores are prepared in the test process, as `prepare` does (a
# tuned process prepares in a child: store/prepare_child.py): tests patch the
# passes, which a child would not see. test_prepare_child.py turns it on.
os.environ.setdefault("SMALLGPT_PREPARE_IN_PROCESS", "1")
if runtime.tweaks_enabled():
    runtime.use_unrolled_threefry(True)


def has_shakespeare() -> bool:
    d = os.environ.get("SMALLGPT_DATA_DIR", "")
    return os.path.isfile(os.path.join(d, "tinyshakespeare", "input.txt"))


NO_CORPUS = ("no Tiny Shakespeare: put input.txt in $SMALLGPT_DATA_DIR/tinyshakespeare/ "
             "(or train once, which downloads it to ~/.cache/smallgpt_jax)")
needs_shakespeare = pytest.mark.skipif(not has_shakespeare(), reason=NO_CORPUS)


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests were skipped and why (pytest's own
    summary gives only the count unless run with -rs)."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if len(reasons) == 1:
        [(reason, n)] = reasons.items()
        terminalreporter.write_line(f"skipped {n} test{'s' * (n > 1)}: {reason}")
    elif reasons:
        terminalreporter.write_line(f"skipped {sum(reasons.values())} tests: " + "; ".join(
            f"{n} because {reason}" for reason, n in sorted(reasons.items(), key=lambda x: -x[1])))


def tiny_config(**overrides):
    """A model small enough to train in seconds on a CPU."""
    from smallgpt_jax.config import base_config
    c = base_config()
    c.model.num_layers, c.model.num_heads, c.model.embed_dim = 2, 2, 32
    c.model.block_size = 16
    c.train.batch_size, c.train.num_steps = 8, 20
    c.train.warmup_steps, c.train.eval_every, c.train.eval_steps = 5, 10, 2
    c.train.log_every, c.train.sample_tokens = 5, 20
    for key, value in overrides.items():
        section, field = key.split(".") if "." in key else (None, key)
        (c[section] if section else c)[field] = value
    return c


def load_file(path: str, name: str = "script"):
    """A Python file that is not in a package (a docs or experiments script), as a module."""
    from smallgpt_jax.cli.config_files import load_module
    return load_module(os.path.join(ROOT, path), name)


def run_cli(args, env_extra=None, timeout=300, module="smallgpt_jax.main"):
    """Runs a command-line entry point in a fresh process; returns CompletedProcess."""
    import subprocess
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
