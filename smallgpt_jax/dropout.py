"""Dropout whose mask is a counter hash (config.model.dropout_rng='hash').

nn.Dropout draws its mask from the dropout key's generator: Threefry by
default, a 20-round hash that XLA writes out inside every fusion that uses a
mask, and what a TPU compile spends most of its time on. `HashDropout` keeps
each element with probability 1 - rate by one murmur finalizer of (seed, row,
column), `keep_mask`, which the flash kernel's attention dropout uses too: a
few integer operations per element, the same on every backend, a pure
function of the seed so the backward pass and a recomputation (remat) draw
the same mask. The seed comes from the dropout key as nn.Dropout's bits do.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_GOLDEN = 0x9E3779B9  # Spreads consecutive streams (rows, or batch x head) apart.


def _fmix(x: Array) -> Array:
    """MurmurHash3's 32-bit finalizer: each output bit depends on every input
    bit. Only uint32 multiply, xor and shift, which Mosaic and XLA both have."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def keep_mask(seed: Array, stream: Array, rows: Array, cols: Array, seq_len: int,
              rate: float) -> Array:
    """Which elements dropout keeps: True with probability 1 - rate, a pure
    function of (seed, stream, row, col): for the attention weights stream =
    batch * H + head and (row, col) = (query, key); for HashDropout one
    stream per sequence and (position, feature). `seed` and `stream` are
    scalars or broadcast with `rows` and `cols`; `seq_len` is the row length."""
    base = _fmix(seed.astype(jnp.uint32) ^ (stream.astype(jnp.uint32) * jnp.uint32(_GOLDEN)))
    bits = _fmix((rows * seq_len + cols).astype(jnp.uint32) ^ base)
    return bits >= jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))


def seed_from_key(key: Array) -> Array:
    """The kernel's int32 [1] seed from a dropout key (any generator)."""
    bits = jax.random.bits(key, (1,), jnp.uint32)
    return jax.lax.bitcast_convert_type(bits, jnp.int32)


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
        seed = seed_from_key(self.make_rng("dropout"))[0]
        *lead, T, D = x.shape
        # One stream per row of the leading dims (a sequence of the batch).
        stream = jnp.arange(math.prod(lead), dtype=jnp.uint32).reshape(*lead, 1, 1)
        keep = keep_mask(seed, stream, jnp.arange(T)[:, None], jnp.arange(D)[None, :], D,
                         self.rate)
        return jax.lax.select(keep, x / jnp.asarray(1.0 - self.rate, x.dtype),
                              jnp.zeros_like(x))
