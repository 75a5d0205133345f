"""The feed-forward network (docs/05-feed-forward.md): widen, a nonlinearity,
project back, at every position on its own. model.py's blocks call `MLP`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallgpt_jax import kernels

Array = jax.Array
init = nn.initializers.normal(stddev=0.02)


def out_init(c: Any) -> nn.initializers.Initializer:
    """A residual branch's output projection (attention's and the MLP's): GPT-2's
    0.02 / sqrt(2L), so the stream's variance does not grow with depth; or
    zeros (`zero_init`, the speedrun's): every block starts as the identity."""
    if c.zero_init:
        return nn.initializers.zeros
    return nn.initializers.normal(0.02 / math.sqrt(2 * c.num_layers))


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, nonlinearity, project back."""

    config: Any  # model.ModelConfig

    @nn.compact
    def __call__(self, x_BTD: Array) -> Array:
        c = self.config
        dtype = jnp.dtype(c.dtype)
        F = c.mlp_ratio * c.embed_dim
        dot_general = kernels.fast_ops(c.fast_backward == "on")[0]
        dense = lambda n, name, kernel_init=init: nn.Dense(
            n, use_bias=c.use_bias, dtype=dtype, kernel_init=kernel_init, name=name,
            dot_general=dot_general)
        if c.activation == "swiglu":
            # Gated unit with 3 matrices; 2/3 of F keeps the parameter count ~equal.
            F = int(2 * F / 3)
            gate_BTF, up_BTF = jnp.split(dense(2 * F, "fc")(x_BTD), 2, axis=-1)
            h_BTF = nn.silu(gate_BTF) * up_BTF
        elif c.activation == "relu2":  # ReLU squared (Primer; the speedrun's).
            h_BTF = jnp.square(nn.relu(dense(F, "fc")(x_BTD)))
        else:
            act = nn.gelu if c.activation == "gelu" else nn.relu
            h_BTF = act(dense(F, "fc")(x_BTD))
        return dense(c.embed_dim, "proj", out_init(c))(h_BTF)
