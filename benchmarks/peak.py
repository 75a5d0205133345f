"""Peak FLOP/s and host memory, for turning benchmark timings into MFU.

``device_peak_flops`` returns a published dense (no structured sparsity)
peak for accelerators it knows by ``device.device_kind``, measures the CPU,
and returns ``None`` for anything else: the caller should then report MFU as
unknown rather than guess.
"""
from __future__ import annotations

import re
import resource
import sys
import time
from typing import Any

import numpy as np

__all__ = ["measure_cpu_matmul_peak", "device_peak_flops", "peak_memory_bytes"]

T = 1e12

# Dense per-device peaks in FLOP/s, keyed by matmul unit:
#   "bf16": bfloat16 (and float16) tensor/matrix units,
#   "tf32": TensorFloat-32 tensor cores (what float32 matmuls use by default
#           in JAX on Ampere and newer),
#   "fp32": true float32 (CUDA cores).
# A missing key means no such unit or no published figure.
# NVIDIA datasheets print tensor-core figures "with sparsity"; the dense
# figures below are half of those. Sources:
#   H100 SXM/PCIe/NVL: NVIDIA H100 Tensor Core GPU datasheet.
#   H200 SXM/NVL:      NVIDIA H200 Tensor Core GPU datasheet.
#   GH200:             NVIDIA GH200 Grace Hopper Superchip datasheet (same GPU
#                      compute figures as H100 SXM).
#   A100 (SXM4, PCIe, 40/80 GB): NVIDIA A100 Tensor Core GPU datasheet.
#   V100 (SXM2, PCIe, V100S): NVIDIA V100 datasheet (no bf16/tf32 support;
#                      its tensor cores run float16 only).
#   L4, L40S:          NVIDIA L4 and L40S datasheets.
#   TPU v4/v5e/v5p/v6e: analysis/aot.py's chip table (per-chip bf16 peak;
#                      no float32 figure is published).
# Patterns are tried in order, so more specific names come first.
_GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"GH200", {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T}),
    (r"H200 NVL", {"bf16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T}),
    (r"H200", {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T}),
    (r"H100 NVL", {"bf16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T}),
    (r"H100 PCIe", {"bf16": 756.5 * T, "tf32": 378 * T, "fp32": 51 * T}),
    # "NVIDIA H100 80GB HBM3" is how the SXM5 part names itself.
    (r"H100", {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T}),
    (r"A100", {"bf16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T}),
    (r"V100S", {"fp16": 130 * T, "fp32": 16.4 * T}),
    (r"V100-PCIE|V100 PCIe", {"fp16": 112 * T, "fp32": 14 * T}),
    (r"V100", {"fp16": 125 * T, "fp32": 15.7 * T}),  # SXM2
    (r"\bL40S\b", {"bf16": 362 * T, "tf32": 183 * T, "fp32": 91.6 * T}),
    (r"\bL4\b", {"bf16": 121 * T, "tf32": 60 * T, "fp32": 30.3 * T}),
]
# TPU chips' bf16 peaks come from the compile check's table (analysis/aot.py,
# one copy); imported where asked, so that the torch worker imports no JAX.
_TPU_CHIPS: list[tuple[str, str]] = [
    (r"v6 ?lite|v6e", "v6e"), (r"v5 ?lite|v5e", "v5e"), (r"v5p|v5\b", "v5p"), (r"v4\b", "v4")]


def _dtype_name(dtype: Any) -> str:
    """'float32', 'bfloat16', ... for numpy/JAX dtypes, scalar types or names."""
    if isinstance(dtype, str) and dtype.lower() == "bfloat16":
        return "bfloat16"  # a plain string numpy cannot resolve without ml_dtypes
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).lower()


def measure_cpu_matmul_peak(n: int = 2048, repeats: int = 10, *,
                            dtype: Any = np.float32, device: Any = None) -> float:
    """Fastest measured ``n x n @ n x n`` matmul rate on the CPU, in FLOP/s.

    Times a jit-compiled JAX matmul on ``device`` (default
    ``jax.devices("cpu")[0]``) and, for float32, NumPy's BLAS too: two
    warm-up calls each, then ``repeats`` timed calls. Returns the best single
    call of either (``2 * n**3`` FLOPs over its time). The best, not the
    median: a peak is what the machine can do, and on a 2-core machine one
    stray process slows a run of calls, which would lower the peak and so
    inflate MFU. The faster of the two libraries, so that MFU is not measured
    against XLA's own matmul only.
    """
    import jax
    import jax.numpy as jnp

    if n < 1 or repeats < 1:
        raise ValueError("need n >= 1 and repeats >= 1")
    dev = device if device is not None else jax.devices("cpu")[0]
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.device_put(jax.random.normal(ka, (n, n), dtype=jnp.float32).astype(dtype), dev)
    b = jax.device_put(jax.random.normal(kb, (n, n), dtype=jnp.float32).astype(dtype), dev)
    matmul = jax.jit(lambda x, y: x @ y)
    candidates = [lambda: matmul(a, b).block_until_ready()]
    if _dtype_name(dtype) == "float32":
        a_np, b_np = np.asarray(a), np.asarray(b)
        candidates.append(lambda: a_np @ b_np)
    best = float("inf")
    for run in candidates:
        for _ in range(2):
            run()
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def device_peak_flops(device: Any, dtype: Any, *, fast_f32_matmul: bool = True) -> float | None:
    """Peak dense matmul FLOP/s of a JAX ``device`` for ``dtype``, or None if unknown.

    CPU: measured with ``measure_cpu_matmul_peak`` (takes a few seconds).
    GPU/TPU: the published figure matched on ``device.device_kind``.
    ``fast_f32_matmul=True`` (JAX's default matmul precision) means float32
    matmuls run on TF32 tensor cores (Ampere and newer) or as one bf16 pass
    (TPU), so that unit's peak is returned; ``False`` asks for the true
    float32 peak, which is None on TPU. Unknown devices or dtypes give None.
    """
    platform = str(getattr(device, "platform", "")).lower()
    kind = str(getattr(device, "device_kind", ""))
    name = _dtype_name(dtype)
    if name not in ("float32", "bfloat16", "float16"):
        return None

    if platform == "cpu":
        return measure_cpu_matmul_peak(dtype=dtype, device=device)

    if platform == "tpu" or kind.upper().startswith("TPU"):
        from smallgpt_jax.analysis.aot import _CHIPS
        for pattern, chip in _TPU_CHIPS:
            if re.search(pattern, kind, re.IGNORECASE):
                if name == "float32" and not fast_f32_matmul:
                    return None
                return _CHIPS[chip]["peak_flops"]
        return None

    for pattern, peaks in _GPU_PEAKS:
        if re.search(pattern, kind, re.IGNORECASE):
            if name == "bfloat16":
                return peaks.get("bf16")
            if name == "float16":
                return peaks.get("fp16", peaks.get("bf16"))
            if fast_f32_matmul and "tf32" in peaks:
                return peaks["tf32"]
            return peaks.get("fp32")
    return None


def peak_memory_bytes() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024)


if __name__ == "__main__":
    import jax

    dev = jax.devices()[0]
    peak = device_peak_flops(dev, np.float32)
    shown = "unknown" if peak is None else f"{peak / 1e9:.1f} GFLOP/s"
    print(f"device={dev.device_kind!r} platform={dev.platform} float32 peak={shown}")
    print(f"peak RSS={peak_memory_bytes() / 2**20:.1f} MiB")
