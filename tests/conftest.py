"""Test setup: find Tiny Shakespeare without downloading, keep JAX quiet."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests never download: use the shared copy when the caller did not say.
_shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
if "SMALLGPT_DATA_DIR" not in os.environ and os.path.isdir(_shared):
    os.environ["SMALLGPT_DATA_DIR"] = _shared


# Test programs are tiny: compiling them fast matters, running them fast does
# not. Less LLVM optimization cuts XLA's CPU compile time by half or more, and
# XLA's older loop emitters for fusions compile in about half the time of the
# newer fusion emitters; neither changes the numbers beyond float rounding (the
# loss-regression fixture still matches). Set before JAX starts, so
# in-process tests and the subprocesses they start (which inherit os.environ)
# both get it.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
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


def has_shakespeare() -> bool:
    d = os.environ.get("SMALLGPT_DATA_DIR", "")
    return os.path.isfile(os.path.join(d, "tinyshakespeare", "input.txt"))


needs_shakespeare = pytest.mark.skipif(
    not has_shakespeare(), reason="set SMALLGPT_DATA_DIR to a folder with tinyshakespeare/input.txt")


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


def run_cli(args, env_extra=None, timeout=300, module="smallgpt_jax.main"):
    """Runs a command-line entry point in a fresh process; returns CompletedProcess."""
    import subprocess
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
