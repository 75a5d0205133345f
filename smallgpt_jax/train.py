"""The optimizer, the loss, and one pure train step.

`train_step(state, batch)` is a pure function: it computes the loss and its
gradients on this device's share of the batch, averages gradients across
devices with `lax.pmean`, and applies one AdamW update. `eval_step` computes
the losses of a stack of batches without dropout. parallel.py runs both on
every device at once (pmap or shard_map), each device on its own slice of
the global batch while the parameters stay identical everywhere.

Shapes: a batch is [A, b, T+1] per device (A gradient-accumulation
micro-batches of b sequences of T+1 tokens; inputs are the first T tokens,
targets the last T).
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from smallgpt_jax import muon
from smallgpt_jax.kernels import varying_axes
from smallgpt_jax.model import GPT


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. Dropout keys are derived from
    (seed, step), so no RNG state needs carrying."""

    step: jax.Array
    params: Any
    opt_state: Any


def learning_rate_schedule(t, peak: float | None = None) -> optax.Schedule:
    """Linear warmup from 0 to the peak (learning_rate, or `peak`), then
    cosine decay to the minimum (min_learning_rate, scaled with the peak)."""
    warmup = min(t.warmup_steps, t.num_steps)
    if peak is None:
        peak, end = t.learning_rate, t.min_learning_rate
    else:
        end = peak * (t.min_learning_rate / t.learning_rate if t.learning_rate else 0.0)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(t.num_steps, warmup + 1), end_value=end)


def decay_mask(params) -> Any:
    """Weight decay by parameter name: `kernel` (dense matrices) and
    `embedding` (the token table) are decayed; biases and norm scales are not
    (shrinking them has no regularising meaning). The learned position table
    `pos_embed` is a matrix but is not decayed here (nanoGPT decays it)."""
    def is_matrix(path, _):
        name = path[-1].key
        return name in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(is_matrix, params)


def optimizer_labels(t, params) -> Any:
    """Each parameter's optimizer part, by name: 'muon' (muon.labels, with
    optimizer='muon'), 'embedding' (the token and value tables, when their
    rate differs) or 'adamw'."""
    base = (muon.labels(params) if t.optimizer == "muon"
            else jax.tree_util.tree_map(lambda _: "adamw", params))
    if t.embedding_learning_rate_scale == 1.0:
        return base

    def label(path, part):
        return "embedding" if path[-1].key == "embedding" and part == "adamw" else part
    return jax.tree_util.tree_map_with_path(label, base)


def make_optimizer(t) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(The optimizer config.train names, with global-norm clipping; its
    learning rate schedule): the one schedule the optimizer steps with and
    the run reports. 'adamw': AdamW for every parameter. 'muon': Muon
    (muon.py) for the blocks' matrices, at muon_learning_rate on the same
    schedule's shape, and AdamW for the rest (muon.labels). The embeddings'
    AdamW peaks at learning_rate * embedding_learning_rate_scale."""
    schedule = learning_rate_schedule(t)

    def adamw(rate):
        return optax.adamw(rate, b1=t.beta1, b2=t.beta2,
                           weight_decay=t.weight_decay, mask=decay_mask)
    parts = {"adamw": adamw(schedule)}
    if t.embedding_learning_rate_scale != 1.0:
        parts["embedding"] = adamw(learning_rate_schedule(
            t, t.learning_rate * t.embedding_learning_rate_scale))
    if t.optimizer == "muon":
        parts["muon"] = optax.chain(
            muon.scale_by_muon(muon.momentum_schedule(t),
                               muon.ns_coefficients(t.muon_ns_steps, t.muon_ns_coefficients)),
            optax.scale_by_learning_rate(learning_rate_schedule(t, t.muon_learning_rate)))
    tx = (parts["adamw"] if len(parts) == 1
          else optax.multi_transform(parts, lambda params: optimizer_labels(t, params)))
    clip = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    return optax.chain(*clip, tx), schedule


def init_state(model_config, tx: optax.GradientTransformation, seed: int,
               target: Any = None) -> TrainState:
    """Fresh parameters and optimizer state: on the default device, or made
    in the shardings of `target` (shapes with shardings, sharding.placed)."""
    def init(key):
        dummy_BT = jnp.zeros((1, model_config.block_size), jnp.int32)
        params = GPT(model_config).init(key, dummy_BT)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params))
    # Compiled: one XLA program instead of hundreds of small eager ops.
    leaves, tree = jax.tree_util.tree_flatten(target)
    shardings = [getattr(x, "sharding", None) for x in leaves]
    out = (None if target is None or None in shardings
           else jax.tree_util.tree_unflatten(tree, shardings))
    return jax.jit(init, out_shardings=out)(jax.random.key(seed))


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the targets, in nats per token."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean()


def loss_fn(params, model_config, batch_BT1: jax.Array, dropout_key=None) -> jax.Array:
    inputs_BT, targets_BT = batch_BT1[:, :-1], batch_BT1[:, 1:]
    train = dropout_key is not None
    logits_BTV = GPT(model_config, deterministic=not train).apply(
        {"params": params}, inputs_BT, rngs={"dropout": dropout_key} if train else None)
    return cross_entropy(logits_BTV, targets_BT)


def own_copy(params, batch, axis_name: str | None) -> Any:
    """The parameters typed as varying over the device axis whenever this
    device's batch is, so that their gradient is this device's alone and the
    pmean in `train_step` averages N of them.

    Under shard_map, replicated parameters (in_specs P()) are typed as the
    same on every device; autodiff then already sums their gradient over the
    axis (the transpose of the implicit cast to meet the varying batch), and
    a pmean after it returned N times the mean. The cast only changes the
    type: nothing moves. pmap's parameters are mapped, varying already."""
    if axis_name is None or axis_name not in varying_axes(batch):
        return params
    return jax.tree_util.tree_map(
        lambda p: p if axis_name in varying_axes(p)
        else jax.lax.pcast(p, axis_name, to="varying"), params)


def train_step(state: TrainState, batch_ABT1: jax.Array, *, model_config,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               seed: int, axis_name: str | None = None) -> tuple[TrainState, dict]:
    """One optimizer update from A accumulated micro-batches (pure function).
    `axis_name`: the device axis to average over (parallel.py passes
    parallel.AXIS); None on one device."""
    # Dropout randomness depends only on (seed, step, device, micro-batch)
    # (and with an 'rbg' generator on the backend too).
    impl = "threefry2x32" if model_config.dropout_rng == "hash" else model_config.dropout_rng
    key = jax.random.fold_in(jax.random.key(seed, impl=impl), state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn)
    params = own_copy(state.params, batch_ABT1, axis_name)

    def micro_step(grads_sum, i_and_batch):
        i, batch_BT1 = i_and_batch
        dropout_key = jax.random.fold_in(key, i)
        loss, grads = grad_fn(params, model_config, batch_BT1, dropout_key)
        return jax.tree_util.tree_map(jnp.add, grads_sum, grads), loss

    A = batch_ABT1.shape[0]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
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
              axis_name: str | None = None) -> jax.Array:
    """The mean loss of each of S batches, without dropout, averaged over
    devices: [S]. The batches are looped over inside the program (lax.map),
    so a whole evaluation is one dispatch and one read-back, not S of each."""
    losses_S = jax.lax.map(lambda batch_BT1: loss_fn(params, model_config, batch_BT1),
                           batches_SBT1)
    return jax.lax.pmean(losses_S, axis_name) if axis_name is not None else losses_S


def bits_per_char(loss_nats: float, tokens_per_char: float) -> float:
    """Converts nats per token into bits per character of the original text."""
    return loss_nats * tokens_per_char / math.log(2)
