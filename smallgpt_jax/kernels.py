"""Faster implementations of the model's operations, and where they are used.

The model's formulas run as written unless a setting picks a kernel from
here; the two choices are made in this file:
- `fast_ops`: `config.model.fast_backward` ('auto': on CPU only, where they
  measure faster; resolved by `resolve_fast_backward`) swaps in the matmul
  and LayerNorm below;
- `fused_implementation`: `attention='fused'` runs cuDNN's flash attention
  where it can, else XLA's own fused attention.

The matmul and LayerNorm here have hand-written backward passes. They
compute exactly the same functions as `x @ W` and the textbook LayerNorm
(`normalization.layer_norm`); only the way XLA is handed the gradient
changes (results agree to float32 rounding; tests/test_kernels.py compares
them with `jax.grad` of the plain formulas). Under shard_map their
operands are first cast to the same varying mesh axes (`_vary_like`), so the
train step keeps shard_map's replication checks on. Why they exist (measured on XLA:CPU, jax 0.10;
see benchmarks/README.md):

* `dense_dot_general`: left to autodiff, the weight gradient of a dense layer
  on a [B, T, D] input made XLA:CPU copy activations into transposed layouts,
  and the copies re-added the residual stream's gradient contributions from
  every later layer inside each copy. Written as two plain 2-D matmuls
  (dX = dY W^T, dW = X^T dY), the copies disappear.
* `layer_norm`: the textbook backward, dx = (g' - mean(g') - x^ mean(g' x^)) / sigma
  with g' = g * scale, is two row reductions and one elementwise pass; autodiff
  of the forward formula took more passes over [B, T, D].
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from smallgpt_jax import normalization
from smallgpt_jax.system import runtime

Array = jax.Array


def resolve_fast_backward(setting: str, platform: str) -> str:
    """`config.model.fast_backward` as 'on' or 'off' on `platform`: 'auto' is
    on for CPU only. The kernels below are the same functions with
    hand-written backward passes that XLA:CPU runs faster
    (benchmarks/README.md); on GPU and TPU they gain nothing."""
    return "on" if setting == "on" or (setting == "auto" and platform == "cpu") else "off"


def fast_ops(on: bool) -> tuple[Callable | None, Callable]:
    """(dot_general for dense layers, layer_norm): the one place the
    fast_backward switch acts. Off: flax's default matmul and the LayerNorm
    formula of normalization.py, both differentiated by `jax.grad`. On: the
    versions below."""
    if not isinstance(on, bool):  # A setting string here would always be true.
        raise TypeError(f"fast_ops takes a bool, not {on!r}")
    return (dense_dot_general, layer_norm) if on else (None, normalization.layer_norm)


def fused_implementation(platform: str, dtype, head_size: int, decode: bool) -> str | None:
    """The kernel of `attention='fused'`: cuDNN's flash attention on an NVIDIA
    GPU, for what it supports (bfloat16/float16, head size a multiple of 8 up
    to 128, the plain causal mask: not decoding); else None, XLA's own."""
    if (platform == "gpu" and runtime.may_use_cuda(os.environ) and not decode
            and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_size % 8 == 0 and head_size <= 128):
        return "cudnn"
    return None


def varying_axes(a) -> frozenset:
    """The shard_map mesh axes `a` varies over, as its type records them
    (empty outside shard_map, on a one-device axis, or with check_vma off)."""
    if a is None:
        return frozenset()
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)  # jax 0.10: aval.mat.varying; earlier: aval.vma.
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def _vary_like(*arrays):
    """Under shard_map, casts the operands to vary over the same mesh axes.

    Inside shard_map, a replicated parameter meeting per-device data is made
    'varying' implicitly by JAX's own ops (and its gradient summed back). A
    custom_vjp must return gradients of the same type as its inputs, so the
    cast has to happen before the call, explicitly; outside shard_map it is
    a no-op. None entries (no bias) pass through.
    """
    vmas = [varying_axes(a) for a in arrays]
    union = frozenset().union(*vmas)
    if not union:
        return arrays
    return tuple(a if a is None or v == union
                 else jax.lax.pcast(a, tuple(sorted(union - v)), to="varying")
                 for a, v in zip(arrays, vmas))


@jax.custom_vjp
def _matmul_2d(x_MK: Array, w_KN: Array) -> Array:
    return jnp.dot(x_MK, w_KN)


def _matmul_2d_fwd(x_MK, w_KN):
    return jnp.dot(x_MK, w_KN), (x_MK, w_KN)


def _matmul_2d_bwd(residuals, g_MN):
    x_MK, w_KN = residuals
    return jnp.dot(g_MN, w_KN.T), jnp.dot(x_MK.T, g_MN)


_matmul_2d.defvjp(_matmul_2d_fwd, _matmul_2d_bwd)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> Array:
    """`lax.dot_general` for dense layers (flax's `dot_general=` argument).

    Handles what nn.Dense / nn.DenseGeneral ask for: the last n axes of `lhs`
    contracted with the first n axes of `rhs`, no batch axes. Both sides are
    flattened to 2-D, multiplied by `_matmul_2d`, and reshaped back.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    if (lhs_batch or rhs_batch or tuple(lhs_contract) != tuple(range(lhs.ndim - n, lhs.ndim))
            or tuple(rhs_contract) != tuple(range(n))):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    k = math.prod(lhs.shape[lhs.ndim - n:])
    out_shape = lhs.shape[:lhs.ndim - n] + rhs.shape[n:]
    # Flax casts both operands to the compute dtype before calling us.
    y = _matmul_2d(*_vary_like(lhs.reshape(-1, k), rhs.reshape(k, -1)))
    if preferred_element_type is not None:
        y = y.astype(preferred_element_type)
    return y.reshape(out_shape)


def _layer_norm_parts(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    centered = x - mean
    rstd = jax.lax.rsqrt((centered * centered).mean(-1, keepdims=True) + eps)
    y = centered * rstd * scale
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (float32)."""
    return _layer_norm(*_vary_like(x, scale, bias), eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps):
    return _layer_norm_parts(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    y, mean, rstd = _layer_norm_parts(x, scale, bias, eps)
    return y, (x, mean, rstd, scale, bias)  # bias may be None (an empty pytree).


def _layer_norm_bwd(eps, residuals, g):
    x, mean, rstd, scale, bias = residuals
    x_hat = (x - mean) * rstd
    g_scaled = g * scale
    dx = rstd * (g_scaled - g_scaled.mean(-1, keepdims=True)
                 - x_hat * (g_scaled * x_hat).mean(-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    d_scale = (g * x_hat).sum(rows)
    d_bias = None if bias is None else g.sum(rows)
    return dx, d_scale, d_bias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
