"""The process settings of smallgpt_jax/runtime.py do what they claim."""

import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

# In a fresh interpreter (the allocator must be tuned before NumPy starts):
# fill a block, free it, fill a block of the same size again, and count the
# minor page faults of the second fill. A block kept by the heap is refilled
# without faults; one given back to the kernel faults in every page again.
_REFILL = textwrap.dedent("""
    import ctypes, resource, sys
    import smallgpt_jax  # noqa: F401 (SMALLGPT_RUNTIME_TWEAKS=0 leaves the allocator alone)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = int(sys.argv[1])
    block = libc.malloc(n); ctypes.memset(block, 1, n); libc.free(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(n); ctypes.memset(block, 1, n)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, n // 4096)
""")

def _refill_faults(nbytes: int, tweaks: bool) -> tuple[int, int]:
    env = {"SMALLGPT_RUNTIME_TWEAKS": "1" if tweaks else "0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _REFILL, str(nbytes)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc allocator only")


@linux_only
@pytest.mark.parametrize("nbytes", [64 << 20, (2 << 30) + (256 << 20)])
def test_freed_step_buffers_stay_mapped(nbytes):
    # 64 MiB is a small model's step; 2.25 GiB is more than the 2 GiB trim
    # threshold that used to give a big step's memory back to the kernel.
    faults, pages = _refill_faults(nbytes, tweaks=True)
    assert faults < pages // 100


@linux_only
def test_without_the_tweak_the_refill_faults():
    # What the test above guards against: glibc's defaults unmap the block.
    faults, pages = _refill_faults(64 << 20, tweaks=False)
    assert faults > pages // 2


# ---------------------------------------------------------------- GPU defaults, tested on CPU

def test_xla_flags_default_only_on_a_gpu_and_never_over_the_users():
    from smallgpt_jax import runtime
    assert runtime.xla_flags_for({}, gpu=True) == (runtime.GPU_XLA_FLAGS,
                                                   "smallgpt_jax's GPU default")
    assert "triton_gemm=false" in runtime.GPU_XLA_FLAGS
    assert runtime.xla_flags_for({}, gpu=False) == ("", "none")
    for users in ("--xla_gpu_autotune_level=0", ""):  # Set, even empty: theirs.
        assert runtime.xla_flags_for({"XLA_FLAGS": users}, gpu=True) == (users, "set by the user")


def test_cuda_is_ruled_out_by_jax_platforms():
    from smallgpt_jax import runtime
    assert not runtime.may_use_cuda({"JAX_PLATFORMS": "cpu"})
    assert not runtime.may_use_cuda({"JAX_PLATFORMS": "tpu,cpu"})


def test_on_this_cpu_machine_a_run_leaves_xla_flags_alone():
    # A fresh process without XLA_FLAGS (the tests set some): nothing is added.
    code = ("import os, smallgpt_jax.runtime as r; print(r.use_default_xla_flags(), "
            "'XLA_FLAGS' in os.environ)")
    env = {"PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('', 'none') False"


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
    from smallgpt_jax import runtime
    assert runtime.resolve_dtype("auto", "gpu") == "bfloat16"
    assert runtime.resolve_dtype("auto", "tpu") == "bfloat16"
    assert runtime.resolve_dtype("auto", "cpu") == "float32"
    assert runtime.resolve_dtype("float32", "gpu") == "float32"  # Asked for: kept.
    assert runtime.resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_auto_dtype_is_the_default_and_resolves_in_the_model_config():
    from smallgpt_jax.config import base_config
    from smallgpt_jax.model import model_config
    assert base_config().model.dtype == "auto"
    assert model_config(base_config(), 65).dtype == "float32"  # This is a CPU.


def test_fused_attention_uses_cudnn_only_where_it_can(monkeypatch):
    from smallgpt_jax import model, runtime
    monkeypatch.setattr(runtime, "may_use_cuda", lambda environ: True)
    pick = model.fused_implementation
    assert pick("gpu", "bfloat16", 64, decode=False) == "cudnn"
    assert pick("gpu", "float16", 128, decode=False) == "cudnn"
    assert pick("gpu", "float32", 64, decode=False) is None  # cuDNN: half precision only.
    assert pick("gpu", "bfloat16", 64, decode=True) is None  # The cache needs a mask.
    assert pick("gpu", "bfloat16", 12, decode=False) is None  # Head size not a multiple of 8.
    assert pick("cpu", "bfloat16", 64, decode=False) is None
    monkeypatch.setattr(runtime, "may_use_cuda", lambda environ: False)  # e.g. ROCm.
    assert pick("gpu", "bfloat16", 64, decode=False) is None
