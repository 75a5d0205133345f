"""Where a token is: the two fixed position encodings (docs/03-embeddings-and-positions.md).

- `sinusoidal_table`: the sin/cos table of "Attention Is All You Need",
  added to the token embeddings (`pos_encoding='sinusoidal'`).
- `apply_rope`: rotary embeddings, a rotation of each query and key by its
  position inside attention (`pos_encoding='rope'`).

The learned table (`pos_encoding='learned'`) is a parameter of the model
itself: see `GPT` in model.py, which uses all three.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    """The fixed sin/cos table of "Attention Is All You Need", [positions, dim].

    PE[p, 2i] = sin(p / 10000^(2i/dim)),  PE[p, 2i+1] = cos(p / 10000^(2i/dim)).
    """
    p = np.arange(num_positions)[:, None]
    freq = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)
    table = np.zeros((num_positions, dim), np.float32)
    table[:, 0::2] = np.sin(p * freq)
    table[:, 1::2] = np.cos(p * freq)
    return table


def apply_rope(x_BTHK: Array, positions_T: Array) -> Array:
    """Rotary position embedding (RoPE, Su et al. 2021).

    Each pair of features (x[2i], x[2i+1]) is rotated by the angle
    position * 10000^(-2i/K). A query at position m and a key at n then have a
    dot product that depends on m - n only: rotations compose.
    """
    K = x_BTHK.shape[-1]
    freq = 1.0 / 10000 ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K)
    angle_TK2 = positions_T.astype(jnp.float32)[:, None] * freq[None, :]
    sin, cos = jnp.sin(angle_TK2)[None, :, None, :], jnp.cos(angle_TK2)[None, :, None, :]
    x = x_BTHK.astype(jnp.float32)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x_BTHK.dtype)
