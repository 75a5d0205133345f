"""Putting the train step on every device: data parallelism and data placement.

train.py's steps are pure functions of one device's share of the batch. Here
they run on every device at once, each on its own slice of the global batch
while the parameters stay identical everywhere, in one of two ways:
- `make_parallel_steps` wraps them in `jax.pmap` (config.parallel='pmap');
- `make_sharded_steps` wraps them in `jax.shard_map` over a device `Mesh`
  inside `jax.jit` (config.parallel='shard_map'), the path current JAX
  recommends. Both compute the same losses.
`data_parallel` picks one and bundles it with how states and batches get on
and off the devices (`DataParallel`), which differs between the two.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache, partial
from typing import Any, Callable

import jax
import numpy as np

from smallgpt_jax import sharding, train
from smallgpt_jax.system.errors import UserError

# The one name of the device axis the batch is split along and the steps
# average over: pmap's axis, the shard_map mesh axis and the per-process mesh.
AXIS = "data"


def make_parallel_steps(model_config, tx, schedule, seed: int) -> tuple[Callable, Callable]:
    """pmap-ed train and eval steps over all local devices.

    The train state is donated: its buffers are reused for the new state,
    so the step does not hold two copies of params and optimizer state.
    """
    p_train = jax.pmap(partial(train.train_step, model_config=model_config, tx=tx,
                               schedule=schedule, seed=seed, axis_name=AXIS),
                       axis_name=AXIS, donate_argnums=(0,))
    p_eval = jax.pmap(partial(train.eval_step, model_config=model_config, axis_name=AXIS),
                      axis_name=AXIS)
    return p_train, p_eval


def data_mesh() -> jax.sharding.Mesh:
    """Every device of every process on one 'data' axis.

    jax.devices() lists each process's devices together, in process order,
    so device i of the mesh gets the same rows as replica i under pmap.
    """
    return jax.sharding.Mesh(np.array(jax.devices()), (AXIS,))


def make_sharded_steps(model_config, tx, schedule, seed: int,
                       mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
    """The same train and eval steps, as `jax.jit` of `jax.shard_map` over `mesh`.

    The state is replicated (spec P(): every device holds all of it); the
    batch [devices, A, b, T+1] is split along its first axis over 'data', so
    each device sees [1, A, b, T+1]: the same rows pmap would give it. Inside,
    each device runs `train_step` on its block, with pmean over 'data'
    (`train.own_copy` keeps autodiff from summing the replicated parameters'
    gradients before it)."""
    P = jax.sharding.PartitionSpec

    def train_body(state, batch_1ABT1):
        return train.train_step(state, batch_1ABT1[0], model_config=model_config, tx=tx,
                                schedule=schedule, seed=seed, axis_name=AXIS)

    def eval_body(params, batches_1SBT1):
        return train.eval_step(params, batches_1SBT1[0], model_config=model_config,
                               axis_name=AXIS)

    # out_specs=P(): after pmean, state and metrics are the same on every device.
    s_train = jax.jit(jax.shard_map(train_body, mesh=mesh, in_specs=(P(), P(AXIS)),
                                    out_specs=P()), donate_argnums=(0,))
    s_eval = jax.jit(jax.shard_map(eval_body, mesh=mesh, in_specs=(P(), P(AXIS)),
                                   out_specs=P()))
    return s_train, s_eval


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A data-parallel (train, eval) step pair and how values get on and off
    its devices, which differs between the two paths:

    - pmap works on this process's devices: the state is stacked once per
      local device, a batch is [local devices, ...], outputs come back the same.
    - shard_map works on global arrays spanning all processes: the state is
      one replicated array, a batch is one array split over the whole mesh.
    """

    train_step: Callable  # (state on devices, batch on devices) -> (state, metrics)
    eval_step: Callable  # (params on devices, S batches put as A=S) -> losses [S]
    put_state: Callable  # a host (or one-device) pytree -> on all devices
    put_batch: Callable  # (this process's rows [n, T+1], A or None) -> on devices
    unreplicate: Callable  # a pytree on devices -> one copy, on this process
    # An abstract state (jax.eval_shape) -> the same with the shardings a state
    # is made or restored in (none: on the first device, put_state spreads it).
    state_target: Callable = lambda shapes: shapes
    # The state on devices -> what a checkpoint writes (default `unreplicate`).
    to_save: Callable | None = None

    def saved(self, rstate) -> Any:
        """What a checkpoint of `rstate` writes: one copy, or fsdp's shards as they are."""
        return (self.to_save or self.unreplicate)(rstate)

    def saved_shapes(self, rstate, state_shapes) -> Any:
        """What `saved(rstate)` returns, as ShapeDtypeStructs placed as it is
        (a save's checksum program compiles ahead for these): one copy of
        `state_shapes` on the first local device, or `to_save`'s arrays."""
        if self.to_save is not None:
            return placed_shapes(self.to_save(rstate))
        first = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=first), state_shapes)


def placed_shapes(tree) -> Any:
    """`tree`'s arrays as ShapeDtypeStructs with their shardings: what a
    program compiled ahead for them takes (the arrays may be donated since)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def data_parallel(kind: str, model_config, tx, schedule, seed: int) -> DataParallel:
    """The steps and data movement for config.parallel ('pmap', 'shard_map' or 'fsdp')."""
    if kind == "pmap":
        p_train, p_eval = make_parallel_steps(model_config, tx, schedule, seed)
        return DataParallel(p_train, p_eval, replicate_local, shard_batch, unreplicate_local)
    if kind not in ("shard_map", "fsdp"):
        raise UserError(f"config.parallel={kind!r} is not one of pmap, shard_map, fsdp.")
    mesh = data_mesh()
    if kind == "fsdp":  # The state split over the devices: sharding.py.
        shapes = jax.eval_shape(lambda: train.init_state(model_config, tx, seed))
        f_train, f_eval = sharding.make_fsdp_steps(model_config, tx, schedule, seed, mesh,
                                                   shapes)
        return DataParallel(f_train, f_eval, put_state=partial(sharding.put, mesh=mesh),
                            put_batch=partial(global_batch, mesh),
                            # Placed as the others leave their copy, so the
                            # warm-up's sampler program serves the run's.
                            unreplicate=lambda tree: on_first_device(sharding.gather(tree)),
                            state_target=partial(sharding.placed, mesh=mesh),
                            to_save=lambda rstate: rstate)  # Orbax writes the shards.
    s_train, s_eval = make_sharded_steps(model_config, tx, schedule, seed, mesh)
    replicated = jax.NamedSharding(mesh, jax.P())
    return DataParallel(
        s_train, s_eval,
        # Via host memory: across processes, device_put takes host values
        # (and checks that every process passed the same ones).
        put_state=lambda tree: jax.device_put(jax.device_get(tree), replicated),
        put_batch=partial(global_batch, mesh),
        unreplicate=first_shards)


def replicate_local(tree) -> Any:
    """One copy of each array per local device, stacked on a leading axis,
    for pmap: laid out exactly as pmap returns the new state (split along a
    mesh axis named AXIS), so the second step does not compile a second
    program. Placed from host memory, where flax's `replicate` compiles a
    `stack` program per array shape (10 before char_cpu's first step)."""
    n = jax.local_device_count()

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.device_put(np.broadcast_to(x, (n, *x.shape)), _local_devices_sharding())

    return jax.tree_util.tree_map(put, tree)


def unreplicate_local(tree) -> Any:
    """The first local device's copy of pmap outputs, without the leading
    axis, placed as `on_first_device` places it. Through host memory: taking
    the row on the device compiles a `squeeze` per array shape."""
    return on_first_device(jax.tree_util.tree_map(
        lambda x: np.asarray(x.addressable_data(0))[0], tree))


def on_first_device(tree) -> Any:
    """`tree` committed to this process's first device, where `unreplicate`
    leaves its copy: a program compiled for values placed so (the sampler)
    is not compiled again for the run's values."""
    return jax.device_put(tree, jax.local_devices()[0])


def first_shards(tree) -> Any:
    """Each array's first local shard: after pmean or out_specs=P() every
    device holds the whole (replicated) value, so one local copy is it."""
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree)


def host_values(tree) -> Any:
    """Device values (step metrics, losses) as host NumPy arrays, one copy of
    each (`first_shards`). Nothing runs on the device: indexing a pmap output
    (`x[0]`) would queue a slicing program behind the newest step and so wait
    for that step too, instead of only for the step that made `x`."""
    return jax.device_get(first_shards(tree))


def per_device_batch(global_batch: int, grad_accum: int) -> int:
    """Sequences per device per micro-batch; a clear error if it does not divide."""
    devices = jax.device_count()
    if global_batch % (devices * grad_accum):
        raise UserError(
            f"config.train.batch_size={global_batch} does not split evenly over "
            f"{devices} device(s) x {grad_accum} accumulation step(s); use a "
            f"multiple of {devices * grad_accum}.")
    return global_batch // (devices * grad_accum)


def _per_device(batch_NT1: np.ndarray, grad_accum: int | None) -> np.ndarray:
    """[N, T+1] -> [local devices, N/devices, T+1], or with A = grad_accum
    micro-batches [local devices, A, N/(devices*A), T+1]."""
    micro = () if grad_accum is None else (grad_accum,)
    return batch_NT1.reshape(jax.local_device_count(), *micro, -1, batch_NT1.shape[-1])


@lru_cache(maxsize=None)
def _local_devices_sharding() -> jax.sharding.NamedSharding:
    """Split along the first axis over this process's devices (built once, not per batch)."""
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
    return jax.NamedSharding(mesh, jax.P(AXIS))


def shard_batch(batch_NT1: np.ndarray, grad_accum: int | None = None) -> jax.Array:
    """Splits this process's [N, T+1] rows over its devices (see `_per_device`)."""
    return jax.device_put(_per_device(batch_NT1, grad_accum), _local_devices_sharding())


def global_batch(mesh: jax.sharding.Mesh, batch_NT1: np.ndarray,
                 grad_accum: int | None = None) -> jax.Array:
    """This process's [N, T+1] rows, laid out as in `shard_batch`, become its
    part of one global [devices, (A,) b, T+1] array split over the mesh's 'data'
    axis (each process passes only its own rows)."""
    return jax.make_array_from_process_local_data(
        jax.NamedSharding(mesh, jax.P(AXIS)), _per_device(batch_NT1, grad_accum))


def process_rows(batch_NT1: np.ndarray) -> np.ndarray:
    """The rows of a global batch that this process feeds to its devices."""
    n = batch_NT1.shape[0] // jax.process_count()
    i = jax.process_index()
    return batch_NT1[i * n:(i + 1) * n]
