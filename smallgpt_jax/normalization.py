"""Keeping the residual stream's numbers in range: LayerNorm and RMSNorm
(docs/06-residuals-and-normalization.md). model.py's blocks put a `Norm`
before (pre-norm) or after (post-norm) each sublayer.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * scale + bias, over the last axis."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * scale
    return y if bias is None else y + bias


def rms_norm(x: Array, eps: float = 1e-5) -> Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, in x's dtype: RMSNorm
    without a scale (also QK-norm's, on each head's queries and keys)."""
    return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps)


class Norm(nn.Module):
    """LayerNorm (subtract mean, divide by std) or RMSNorm (divide by RMS only)."""

    kind: str = "layernorm"
    use_bias: bool = True
    eps: float = 1e-5
    layer_norm_fn: Callable = layer_norm  # Or kernels.layer_norm (see kernels.fast_ops).

    @nn.compact
    def __call__(self, x_BTD: Array) -> Array:
        D = x_BTD.shape[-1]
        x = x_BTD.astype(jnp.float32)  # Statistics in float32 for stability.
        scale = self.param("scale", nn.initializers.ones, (D,))
        if self.kind == "layernorm":
            # (x - mean) / sqrt(var + eps) * scale + bias: `layer_norm` above.
            bias = self.param("bias", nn.initializers.zeros, (D,)) if self.use_bias else None
            return self.layer_norm_fn(x, scale, bias, self.eps).astype(x_BTD.dtype)
        # RMSNorm: x / sqrt(mean(x^2) + eps) * scale.
        return (rms_norm(x, self.eps) * scale).astype(x_BTD.dtype)
