"""Extra paths for information that the GPT-2 speedrun (modded-nanogpt) added
to the plain residual stream, each a switch in config.model and each
starting as a no-op that training may open (docs/15-modern-recipe.md):

- `smear`: each position's embedding mixes in the previous token's, through
  a learned gate (a cheap bigram feature before any attention);
- `x0_shortcut`: every block's input is lambda_a * x + lambda_b * x0, x0 the
  embeddings, so a deep block can read the tokens directly;
- `value_embeddings` (in model.py's blocks): each block's attention values
  add a learned row per input token, v <- v + E_l[token], E_l zero at first.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
SMEAR_DIMS = 12  # The gate reads this many leading dimensions of the embedding.


class Smear(nn.Module):
    """x[t] += lambda * sigmoid(w . x[t, :12]) * x[t-1]; nothing at position 0.
    lambda and w start at zero: the model starts without it (lambda learns
    first; w gets a gradient once lambda is not 0). With `decode`, the
    embeddings are cached by position, as attention caches keys: a call
    reads the previous position's from there."""

    decode: bool = False
    block_size: int = 0  # The cache's length (decode only).

    @nn.compact
    def __call__(self, x_BTD: Array, positions_T: Array) -> Array:
        B, _, D = x_BTD.shape
        G = min(SMEAR_DIMS, D)
        w = self.param("gate", nn.initializers.zeros, (G,))
        lam = self.param("lambda", nn.initializers.zeros, ())
        if self.decode:
            seen = self.variable("cache", "embeddings", jnp.zeros, (B, self.block_size, D),
                                 x_BTD.dtype)
            if not self.is_initializing():
                seen.value = jax.lax.dynamic_update_slice(seen.value, x_BTD,
                                                          (0, positions_T[0], 0))
            prev_BTD = seen.value[:, jnp.maximum(positions_T - 1, 0)]
        else:
            prev_BTD = jnp.concatenate([jnp.zeros_like(x_BTD[:, :1]), x_BTD[:, :-1]], axis=1)
        gate_T = jax.nn.sigmoid(x_BTD[..., :G] @ w.astype(x_BTD.dtype)) * lam
        gate_T = jnp.where(positions_T > 0, gate_T, 0.0)  # The first token has no past.
        return x_BTD + (gate_T[..., None] * prev_BTD).astype(x_BTD.dtype)


class X0Shortcut(nn.Module):
    """A block's input lambda_a * x + lambda_b * x0, starting at (1, 0)."""

    @nn.compact
    def __call__(self, x_BTD: Array, x0_BTD: Array) -> Array:
        lam = self.param("lambdas", lambda _, s: jnp.array([1.0, 0.0]), (2,))
        return (lam[0] * x_BTD + lam[1] * x0_BTD).astype(x_BTD.dtype)
