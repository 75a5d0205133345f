"""Test setup: find Tiny Shakespeare without downloading, keep JAX quiet."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests never download: use the shared copy when the caller did not say.
_shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
if "SMALLGPT_DATA_DIR" not in os.environ and os.path.isdir(_shared):
    os.environ["SMALLGPT_DATA_DIR"] = _shared


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
