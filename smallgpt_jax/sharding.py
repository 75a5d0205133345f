"""Fully sharded data parallelism (FSDP): the train state split over the devices.

Under 'pmap' and 'shard_map' every device holds all of the parameters and
both AdamW moments: 16 bytes per parameter in float32, per device, before a
single activation. With config.parallel='fsdp' each array of the state is
cut into N pieces along one axis, one piece per device, so a device holds
1/N of it:

- the axis is the array's largest one whose length N divides (a [768, 3072]
  kernel on 8 devices: 8 pieces of [768, 384]); an array with no such axis,
  or smaller than `MIN_SHARDED` entries, is replicated: splitting a bias
  saves nothing and costs a collective every step;
- the batch is split over the same devices as under shard_map;
- the step is train.py's pure `train_step` on the whole (global) batch,
  inside `jax.jit` with these shardings. XLA's partitioner inserts the
  communication: it gathers each weight where a matmul needs it whole, and
  reduce-scatters the gradients so each device updates only its own piece.

The same program computes the same losses as shard_map data parallelism
(tests/test_fsdp.py). The mesh is `parallel.data_mesh()`'s one 'data' axis.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from smallgpt_jax import train

P = jax.sharding.PartitionSpec
MIN_SHARDED = 256  # Entries; smaller arrays (norm scales, small biases, counters) stay whole.


def spec_for(shape: tuple[int, ...], n: int, axis: str) -> jax.sharding.PartitionSpec:
    """Where an array of `shape` is cut over `n` devices on mesh axis `axis`:
    its largest dimension that `n` divides (the first of equals), or nowhere."""
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED:
        return P()
    fits = [i for i, d in enumerate(shape) if d % n == 0]
    if not fits:
        return P()
    i = max(fits, key=lambda i: (shape[i], -i))
    return P(*([None] * i), axis)


def state_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """A NamedSharding for every array of `tree` (arrays or shapes), as `spec_for` says."""
    axis, n = mesh.axis_names[0], mesh.devices.size
    return jax.tree_util.tree_map(
        lambda x: jax.NamedSharding(mesh, spec_for(tuple(x.shape), n, axis)), tree)


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of `tree` (sharded arrays or ShapeDtypeStructs with shardings)."""
    return sum(int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) * x.dtype.itemsize
               for x in jax.tree_util.tree_leaves(tree))


def _global_rows(batch_DABT1: jax.Array, mesh: jax.sharding.Mesh) -> jax.Array:
    """[devices, A, b, T+1] (device d's rows in block d, as `parallel.put_batch`
    lays them out) -> [A, devices * b, T+1]: micro-batch i is every device's
    micro-batch i, as under shard_map, still split over the devices."""
    D, A, b, T1 = batch_DABT1.shape
    rows = batch_DABT1.transpose(1, 0, 2, 3).reshape(A, D * b, T1)
    return jax.lax.with_sharding_constraint(
        rows, jax.NamedSharding(mesh, P(None, mesh.axis_names[0])))


def make_fsdp_steps(model_config, tx, schedule, seed: int, mesh: jax.sharding.Mesh,
                    state_shapes: Any) -> tuple[Callable, Callable]:
    """`train.train_step` and `train.eval_step` under `jax.jit`, the state
    sharded as `state_shardings(state_shapes)` says and the batch split over
    the mesh; the state in is donated and comes out sharded the same way.

    Dropout draws its masks for the global batch from one key per step (no
    device index is folded in), so with dropout on the masks differ from
    shard_map's, not the model."""
    state_sh = state_shardings(state_shapes, mesh)
    rows = jax.NamedSharding(mesh, P(mesh.axis_names[0]))
    whole = jax.NamedSharding(mesh, P())

    def train_body(state, batch_DABT1):
        return train.train_step(state, _global_rows(batch_DABT1, mesh),
                                model_config=model_config, tx=tx, schedule=schedule,
                                seed=seed, axis_name=None)

    def eval_body(params, batches_DSbT1):
        return train.eval_step(params, _global_rows(batches_DSbT1, mesh),
                               model_config=model_config, axis_name=None)

    f_train = jax.jit(train_body, in_shardings=(state_sh, rows),
                      out_shardings=(state_sh, whole), donate_argnums=(0,))
    f_eval = jax.jit(eval_body, in_shardings=(state_sh.params, rows), out_shardings=whole)
    return f_train, f_eval


def placed(shapes: Any, mesh: jax.sharding.Mesh) -> Any:
    """`shapes` (jax.eval_shape's) with their FSDP shardings: where a state is
    made (`train.init_state(..., target)`) or restored from a checkpoint
    written on any number of devices, in its shards, so that no device ever
    holds all of it (GPT-2 XL's 24 GB of float32 state fits no 16 GB chip)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes, state_shardings(shapes, mesh))


def gather(tree: Any) -> Any:
    """Sharded arrays as whole host (NumPy) arrays, on every process: for a
    sample, the final parameters or a picture."""
    def whole(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x))
    return jax.tree_util.tree_map(whole, tree)


# One program copies the whole state (`x.copy()` per array compiled one per shape).
_copy = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.copy, tree))


def put(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """A state onto the mesh in its FSDP shards: copied shard by shard if it
    is there already (made or restored there, see `placed`; a copy, since the
    first step donates what this returns while the caller may keep `tree`),
    else from host values, which every process passes alike."""
    target = state_shardings(tree, mesh)
    if all(isinstance(x, jax.Array) and x.sharding == s for x, s in
           zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(target))):
        return _copy(tree)
    return jax.device_put(jax.device_get(tree), target)
