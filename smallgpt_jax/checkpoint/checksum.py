"""A checksum per saved array, so a restore notices data that changed on disk.

Orbax notices missing or truncated files, but not flipped bits inside an
array's data (zstd notices only those in its own headers and tables): such a
checkpoint restores "fine", then samples different text or makes training
diverge. So each save records one 32-bit checksum per array
(`meta["checksums"]`, keyed by the array's path like 'params/wte/embedding'),
and every restore recomputes and compares them.

The sum runs on the device where the arrays already are, in one small
program, and only the numbers come back: a save copies nothing extra to the
host. It is not a cryptographic hash, only a check that the bits are the
ones that were saved: every word is multiplied by an odd number that
depends on its position, so any single flipped bit, and any swap of two
different words, changes the sum.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util


def _array_sum(x: jax.Array) -> jax.Array:
    """Position-weighted sum of the array's bits, as 32-bit words (uint32 scalar)."""
    x = jnp.asarray(x).reshape(-1)
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)
    index = jnp.arange(words.size, dtype=jnp.uint32)
    odd = index * jnp.uint32(2654435761) | jnp.uint32(1)  # Knuth's multiplicative hash.
    return jnp.sum(words * odd, dtype=jnp.uint32)


_tree_sums = jax.jit(lambda tree: jax.tree.map(_array_sum, tree))


def _arrays(tree: Any) -> dict[str, Any]:
    """{'params/wte/embedding': array, ...}: `tree`'s arrays by name."""
    state = serialization.to_state_dict(tree)
    flat = traverse_util.flatten_dict(state, sep="/") if isinstance(state, dict) else {"": state}
    return {k: v for k, v in flat.items() if hasattr(v, "shape") or np.isscalar(v)}


def checksums(tree: Any, prefix: str = "") -> dict[str, int]:
    """{'params/wte/embedding': 1234567, ...} for every array in `tree` (a
    TrainState, or a dict of arrays; its state dict gives the names)."""
    sums = jax.device_get(_tree_sums(_arrays(tree)))
    return {prefix + k: int(v) for k, v in sums.items()}


def compile_for(shapes: Any) -> None:
    """Compiles the program `checksums` runs for arrays of these shapes and
    placements (`jax.ShapeDtypeStruct`s with shardings, in the tree a save
    passes), without running it: a training run's first save then finds it
    compiled (training/warmup.py)."""
    _tree_sums.lower(_arrays(shapes)).compile()


def mismatches(saved: dict[str, int] | None, tree: Any, prefix: str = "") -> list[str]:
    """The arrays of `tree` whose checksum differs from `saved` (those recorded
    at save time; a checkpoint written before checksums existed has none)."""
    if not saved:
        return []
    now = checksums(tree, prefix)
    return [k for k in now if k in saved and saved[k] != now[k]]
