"""Dropout whose mask is a counter hash (config.model.dropout_rng='hash').

nn.Dropout draws its mask from the dropout key's generator: Threefry by
default, a 20-round hash that XLA writes out inside every fusion that uses a
mask, and what a TPU compile spends most of its time on. `HashDropout` keeps
each element with probability 1 - rate by one murmur finalizer of (seed, row,
column), flash_attention's `keep_mask` (the flash kernel's own dropout): a
few integer operations per element, the same on every backend, a pure
function of the seed so the backward pass and a recomputation (remat) draw
the same mask. The seed comes from the dropout key as nn.Dropout's bits do.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallgpt_jax import flash_attention

Array = jax.Array


def resolve(setting: str, platform: str) -> str:
    """config.model.dropout_rng for `platform`: 'auto' is 'hash' on a TPU,
    whose compile it cuts most (benchmarks/README.md), and Threefry
    elsewhere (a CPU run's masks, and so its losses, as they were)."""
    if setting != "auto":
        return setting
    return "hash" if platform == "tpu" else "threefry2x32"


class HashDropout(nn.Module):
    """Zeroes each element of x [..., T, D] with probability `rate` and scales
    the rest by 1 / (1 - rate), as nn.Dropout does, with a hash mask."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        seed = flash_attention.seed_from_key(self.make_rng("dropout"))[0]
        *lead, T, D = x.shape
        # One stream per row of the leading dims (a sequence of the batch).
        stream = jnp.arange(math.prod(lead), dtype=jnp.uint32).reshape(*lead, 1, 1)
        keep = flash_attention.keep_mask(seed, stream, jnp.arange(T)[:, None],
                                         jnp.arange(D)[None, :], D, self.rate)
        return jax.lax.select(keep, x / jnp.asarray(1.0 - self.rate, x.dtype),
                              jnp.zeros_like(x))
