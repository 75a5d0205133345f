"""The optimizer, the loss, and one pure train step, made data-parallel.

`train_step(state, batch)` is a pure function: it computes the loss and its
gradients on this device's share of the batch, averages gradients across
devices with `lax.pmean`, and applies one AdamW update. Two ways run it on
every device at once, each on its own slice of the global batch while the
parameters stay identical everywhere:
- `make_parallel_steps` wraps it in `jax.pmap` (config.parallel='pmap');
- `make_sharded_steps` wraps it in `jax.shard_map` over a device `Mesh`
  inside `jax.jit` (config.parallel='shard_map'), the path current JAX
  recommends. Both compute the same losses.

Shapes: a batch is [A, b, T+1] per device (A gradient-accumulation
micro-batches of b sequences of T+1 tokens; inputs are the first T tokens,
targets the last T).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache, partial
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from smallgpt_jax.errors import UserError
from smallgpt_jax.model import GPT

AXIS = "batch"  # Name of the device axis that pmean averages over (pmap).
DATA = "data"  # Name of the mesh axis the batch is split along (shard_map).


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. Dropout keys are derived from
    (seed, step), so no RNG state needs carrying."""

    step: jax.Array
    params: Any
    opt_state: Any


def learning_rate_schedule(t) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to the minimum."""
    warmup = min(t.warmup_steps, t.num_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.learning_rate, warmup_steps=warmup,
        decay_steps=max(t.num_steps, warmup + 1), end_value=t.min_learning_rate)


def decay_mask(params) -> Any:
    """Weight decay applies to matrices (dense kernels, the token embedding)
    and not to biases, norm scales or the learned position table: shrinking
    those towards zero has no regularising meaning."""
    def is_matrix(path, _):
        name = path[-1].key
        return name in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(t) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, following config.train."""
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    parts.append(optax.adamw(learning_rate_schedule(t), b1=t.beta1, b2=t.beta2,
                             weight_decay=t.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def init_state(model_config, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh parameters and optimizer state (on the default device)."""
    def init(key):
        dummy_BT = jnp.zeros((1, model_config.block_size), jnp.int32)
        params = GPT(model_config).init(key, dummy_BT)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params))
    # Compiled: one XLA program instead of hundreds of small eager ops.
    return jax.jit(init)(jax.random.key(seed))


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the targets, in nats per token."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean()


def loss_fn(params, model_config, batch_BT1: jax.Array, dropout_key=None) -> jax.Array:
    inputs_BT, targets_BT = batch_BT1[:, :-1], batch_BT1[:, 1:]
    train = dropout_key is not None
    logits_BTV = GPT(model_config, deterministic=not train).apply(
        {"params": params}, inputs_BT, rngs={"dropout": dropout_key} if train else None)
    return cross_entropy(logits_BTV, targets_BT)


def train_step(state: TrainState, batch_ABT1: jax.Array, *, model_config,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               seed: int, axis_name: str | None = AXIS) -> tuple[TrainState, dict]:
    """One optimizer update from A accumulated micro-batches (pure function)."""
    # Dropout randomness depends only on (seed, step, device, micro-batch).
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn)

    def micro_step(grads_sum, i_and_batch):
        i, batch_BT1 = i_and_batch
        dropout_key = jax.random.fold_in(key, i)
        loss, grads = grad_fn(state.params, model_config, batch_BT1, dropout_key)
        return jax.tree_util.tree_map(jnp.add, grads_sum, grads), loss

    A = batch_ABT1.shape[0]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    grads, losses_A = jax.lax.scan(micro_step, zeros, (jnp.arange(A), batch_ABT1))
    grads = jax.tree_util.tree_map(lambda g: g / A, grads)
    loss = losses_A.mean()
    if axis_name is not None:  # Average over data-parallel devices.
        grads, loss = jax.lax.pmean((grads, loss), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batches_SBT1: jax.Array, *, model_config,
              axis_name: str | None = AXIS) -> jax.Array:
    """The mean loss of each of S batches, without dropout, averaged over
    devices: [S]. The batches are looped over inside the program (lax.map),
    so a whole evaluation is one dispatch and one read-back, not S of each."""
    losses_S = jax.lax.map(lambda batch_BT1: loss_fn(params, model_config, batch_BT1),
                           batches_SBT1)
    return jax.lax.pmean(losses_S, axis_name) if axis_name is not None else losses_S


def make_parallel_steps(model_config, tx, schedule, seed: int) -> tuple[Callable, Callable]:
    """pmap-ed train and eval steps over all local devices.

    The train state is donated: its buffers are reused for the new state,
    so the step does not hold two copies of params and optimizer state.
    """
    p_train = jax.pmap(partial(train_step, model_config=model_config, tx=tx,
                               schedule=schedule, seed=seed),
                       axis_name=AXIS, donate_argnums=(0,))
    p_eval = jax.pmap(partial(eval_step, model_config=model_config), axis_name=AXIS)
    return p_train, p_eval


def data_mesh() -> jax.sharding.Mesh:
    """Every device of every process on one 'data' axis.

    jax.devices() lists each process's devices together, in process order,
    so device i of the mesh gets the same rows as replica i under pmap.
    """
    return jax.sharding.Mesh(np.array(jax.devices()), (DATA,))


def make_sharded_steps(model_config, tx, schedule, seed: int,
                       mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
    """The same train and eval steps, as `jax.jit` of `jax.shard_map` over `mesh`.

    The state is replicated (spec P(): every device holds all of it); the
    batch [devices, A, b, T+1] is split along its first axis over 'data', so
    each device sees [1, A, b, T+1]: the same rows pmap would give it. Inside,
    each device runs `train_step` on its block, with pmean over 'data'.
    """
    P = jax.sharding.PartitionSpec

    def train_body(state, batch_1ABT1):
        return train_step(state, batch_1ABT1[0], model_config=model_config, tx=tx,
                          schedule=schedule, seed=seed, axis_name=DATA)

    def eval_body(params, batches_1SBT1):
        return eval_step(params, batches_1SBT1[0], model_config=model_config, axis_name=DATA)

    # out_specs=P(): after pmean, state and metrics are the same on every device.
    s_train = jax.jit(jax.shard_map(train_body, mesh=mesh, in_specs=(P(), P(DATA)),
                                    out_specs=P()), donate_argnums=(0,))
    s_eval = jax.jit(jax.shard_map(eval_body, mesh=mesh, in_specs=(P(), P(DATA)),
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


def data_parallel(kind: str, model_config, tx, schedule, seed: int) -> DataParallel:
    """The steps and data movement for config.parallel ('pmap' or 'shard_map')."""
    if kind == "pmap":
        from flax import jax_utils
        p_train, p_eval = make_parallel_steps(model_config, tx, schedule, seed)
        # Copies laid out exactly as pmap returns the new state (a mesh axis
        # named AXIS), so the second step does not compile a second program.
        put_state = partial(jax_utils.replicate, axis_name=AXIS)
        return DataParallel(p_train, p_eval, put_state, shard_batch, jax_utils.unreplicate)
    if kind != "shard_map":
        raise UserError(f"config.parallel={kind!r} is not one of pmap, shard_map.")
    mesh = data_mesh()
    s_train, s_eval = make_sharded_steps(model_config, tx, schedule, seed, mesh)
    replicated = jax.NamedSharding(mesh, jax.P())
    return DataParallel(
        s_train, s_eval,
        # Via host memory: across processes, device_put takes host values
        # (and checks that every process passed the same ones).
        put_state=lambda tree: jax.device_put(jax.device_get(tree), replicated),
        put_batch=partial(global_batch, mesh),
        unreplicate=first_shards)


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
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("d",))
    return jax.NamedSharding(mesh, jax.P("d"))


def shard_batch(batch_NT1: np.ndarray, grad_accum: int | None = None) -> jax.Array:
    """Splits this process's [N, T+1] rows over its devices (see `_per_device`)."""
    return jax.device_put(_per_device(batch_NT1, grad_accum), _local_devices_sharding())


def global_batch(mesh: jax.sharding.Mesh, batch_NT1: np.ndarray,
                 grad_accum: int | None = None) -> jax.Array:
    """This process's [N, T+1] rows, laid out as in `shard_batch`, become its
    part of one global [devices, (A,) b, T+1] array split over the mesh's 'data'
    axis (each process passes only its own rows)."""
    return jax.make_array_from_process_local_data(
        jax.NamedSharding(mesh, jax.P(DATA)), _per_device(batch_NT1, grad_accum))


def bits_per_char(loss_nats: float, tokens_per_char: float) -> float:
    """Converts nats per token into bits per character of the original text."""
    return loss_nats * tokens_per_char / math.log(2)
