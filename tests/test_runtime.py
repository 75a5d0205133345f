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
