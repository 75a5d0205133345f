"""Causal attention as one Pallas kernel pair (config.model.attention='flash'):
the [B, H, T, T] scores and probabilities live only in the TPU core's VMEM,
never in HBM. The forward writes y and each row's logsumexp; the backward
computes the probabilities again from q, k and that logsumexp.

Attention dropout happens inside the kernel. Its mask is not stored either:
it is a hash of (seed, batch, head, query, key) (`keep_mask`), so the
backward rebuilds exactly the forward's mask. `attention_reference` is the
same attention, hash included, in plain jnp: it runs anywhere and is what
the kernel is tested against.

Layout: q, k, v and y are [B, H, T, K] (a block's last two dims are then
whole, as the TPU's tiling wants). The grid runs over (batch, head, query
block); a query block holds all T keys, which fits VMEM for the contexts
this kernel takes (`check`). On a CPU the kernel runs in Pallas interpret
mode: correct, slow, for tests of tiny models.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from smallgpt_jax import kernels
from smallgpt_jax.system.errors import UserError

Array = jax.Array

MAX_BLOCK = 256  # Query rows per grid step: a [256, T] float32 tile per array.
MAX_T = 2048
_GOLDEN = 0x9E3779B9  # Spreads consecutive (batch, head) streams apart.


def check(seq_len: int) -> str | None:
    """Why the kernel cannot take `seq_len` tokens, or None if it can."""
    if seq_len > MAX_T:
        return f"at most {MAX_T} tokens (the keys of a query block must fit VMEM)"
    if seq_len > MAX_BLOCK and seq_len % MAX_BLOCK:
        return f"a context over {MAX_BLOCK} must be a multiple of {MAX_BLOCK}"
    return None


def resolve(setting: str, platform: str, block_size: int) -> str:
    """config.model.attention for `platform`: 'auto' is 'flash' on a TPU when
    the context fits the kernel, else 'explicit'. 'flash' on a GPU is a
    UserError: Mosaic kernels run on TPUs only (and interpreted on CPUs)."""
    if setting == "auto":
        return "flash" if platform == "tpu" and check(block_size) is None else "explicit"
    if setting == "flash" and platform == "gpu":
        raise UserError("config.model.attention='flash' is a TPU kernel and does not run on "
                        "a GPU; use 'fused' (cuDNN, dropout 0) or 'explicit'.")
    return setting


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
    """Which attention weights dropout keeps: True with probability 1 - rate,
    a pure function of (seed, stream = batch * H + head, query row, key col).
    `seed` and `stream` are scalars; `rows` and `cols` broadcast together."""
    base = _fmix(seed.astype(jnp.uint32) ^ (stream.astype(jnp.uint32) * jnp.uint32(_GOLDEN)))
    bits = _fmix((rows * seq_len + cols).astype(jnp.uint32) ^ base)
    return bits >= jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))


def attention_reference(q: Array, k: Array, v: Array, seed: Array, rate: float) -> Array:
    """The kernel's attention in plain jnp, [B, H, T, K] in and out: causal
    softmax(q k^T / sqrt(K)) with float32 scores, the hash dropout
    (`keep_mask`, scaled by 1 / (1 - rate)), times v."""
    B, H, T, K = q.shape
    s = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32)
    rows, cols = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    s = jnp.where(cols <= rows, s / math.sqrt(K), -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    if rate > 0:
        keep = keep_mask(seed[0], jnp.arange(B * H).reshape(B, H, 1, 1), rows, cols, T, rate)
        p = jnp.where(keep, p / (1 - rate), 0.0)
    y = jnp.einsum("bhts,bhsk->bhtk", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return y.astype(q.dtype)


def _tile(seed_ref, q, k, lse_col, rate: float, block: int):
    """This grid step's probabilities p [block, T] (float32) and dropout's
    scaled keep mask (None without dropout). `lse_col`: the rows'
    logsumexp [block, 1], or None to compute it (the forward)."""
    b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    T, K = k.shape
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32) * (1.0 / math.sqrt(K))
    rows = jax.lax.broadcasted_iota(jnp.int32, (block, T), 0) + i * block
    cols = jax.lax.broadcasted_iota(jnp.int32, (block, T), 1)
    s = jnp.where(cols <= rows, s, -jnp.inf)
    if lse_col is None:
        m = s.max(axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        total = e.sum(axis=-1, keepdims=True)
        p, lse_col = e / total, m + jnp.log(total)
    else:
        p = jnp.exp(s - lse_col)
    scale = None
    if rate > 0:
        keep = keep_mask(seed_ref[0], b * pl.num_programs(1) + h, rows, cols, T, rate)
        scale = jnp.where(keep, 1.0 / (1.0 - rate), 0.0)
    return p, scale, lse_col


def _forward_kernel(seed_ref, q_ref, k_ref, v_ref, y_ref, lse_ref, *, rate: float,
                    block: int):
    p, scale, lse_col = _tile(seed_ref, q_ref[...], k_ref[...], None, rate, block)
    if scale is not None:
        p = p * scale
    v = v_ref[...]
    y_ref[...] = jnp.dot(p.astype(v.dtype), v,
                         preferred_element_type=jnp.float32).astype(y_ref.dtype)
    lse_ref[...] = lse_col.T  # Stored as a row [1, block]: no lane padding in HBM.


def _backward_kernel(seed_ref, q_ref, k_ref, v_ref, y_ref, dy_ref, lse_ref,
                     dq_ref, dk_ref, dv_ref, dk_acc, dv_acc, *, rate: float, block: int):
    i = pl.program_id(2)

    @pl.when(i == 0)
    def _():
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    q, k, v, dy = q_ref[...], k_ref[...], v_ref[...], dy_ref[...]
    p, scale, _ = _tile(seed_ref, q, k, lse_ref[...].T, rate, block)
    # The gradient through softmax needs rowsum(dP * P) = rowsum(dy * y),
    # dropout or not: one [block, K] product instead of a [block, T] one.
    delta = (dy.astype(jnp.float32) * y_ref[...].astype(jnp.float32)).sum(-1, keepdims=True)
    dp = jax.lax.dot_general(dy, v, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    dropped = p if scale is None else p * scale
    if scale is not None:
        dp = dp * scale
    ds = p * (dp - delta) * (1.0 / math.sqrt(q.shape[-1]))
    # Sums over this block's rows: [T, block] x [block, K].
    t_dot = lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                                             preferred_element_type=jnp.float32)
    dv_acc[...] += t_dot(dropped.astype(dy.dtype), dy)
    dk_acc[...] += t_dot(ds.astype(q.dtype), q)
    dq_ref[...] = jnp.dot(ds.astype(k.dtype), k,
                          preferred_element_type=jnp.float32).astype(dq_ref.dtype)

    @pl.when(i == pl.num_programs(2) - 1)
    def _():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _same_vary(seed: Array, q: Array) -> Array:
    """The seed cast to vary over q's mesh axes: a kernel's operands must agree."""
    missing = kernels.varying_axes(q) - kernels.varying_axes(seed)
    return jax.lax.pcast(seed, tuple(sorted(missing)), to="varying") if missing else seed


def _call(kernel, q: Array, seed: Array, inputs: list, outputs: list, matmuls: int,
          rate: float, interpret: bool, scratch: tuple = ()):
    """kernel(seed, *inputs, *outputs, *scratch) over the grid (batch, head,
    query block). `inputs`: (block, array) pairs; `outputs`: (block, shape,
    dtype); a block is 'rows' (this grid step's query rows of a [B, H, T, K]
    array), 'whole' (all T rows) or 'lse' (its rows' logsumexp in [B, H, 1, T]).
    The cost declared for the compile check: `matmuls` [T, T] x K products,
    an exp per weight, and every array read or written once."""
    B, H, T, K = q.shape
    block = min(T, MAX_BLOCK)
    specs = {
        "rows": pl.BlockSpec((None, None, block, K), lambda b, h, i, seed: (b, h, i, 0)),
        "whole": pl.BlockSpec((None, None, T, K), lambda b, h, i, seed: (b, h, 0, 0)),
        "lse": pl.BlockSpec((None, None, 1, block), lambda b, h, i, seed: (b, h, 0, i))}
    arrays = [a for _, a in inputs] + [jax.ShapeDtypeStruct(s, d) for _, s, d in outputs]
    n = B * H * T * T
    cost = pl.CostEstimate(flops=2 * matmuls * n * K, transcendentals=n,
                           bytes_accessed=sum(a.size * a.dtype.itemsize for a in arrays))
    # Under shard_map an output varies over the mesh axes its inputs vary
    # over (pallas_call cannot infer that).
    out_shape = [jax.ShapeDtypeStruct(s, d, manual_axis_type=jax.typeof(q).mat)
                 for _, s, d in outputs]
    return pl.pallas_call(
        functools.partial(kernel, rate=rate, block=block), out_shape=out_shape,
        interpret=interpret, cost_estimate=cost,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(B, H, T // block),
            in_specs=[specs[b] for b, _ in inputs], out_specs=[specs[b] for b, _, _ in outputs],
            scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch]),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
    )(_same_vary(seed, q), *(a for _, a in inputs))


def _forward(q, k, v, seed, rate, interpret):
    B, H, T, K = q.shape
    return _call(_forward_kernel, q, seed, [("rows", q), ("whole", k), ("whole", v)],
                 [("rows", q.shape, q.dtype), ("lse", (B, H, 1, T), jnp.float32)],
                 2, rate, interpret)


def _backward(q, k, v, y, dy, lse, seed, rate, interpret):
    T, K = k.shape[2:]
    # Five matmuls: the scores again, dp, dv, dk, dq; dk and dv summed over
    # the query blocks in float32 scratch.
    return _call(_backward_kernel, q, seed,
                 [("rows", q), ("whole", k), ("whole", v), ("rows", y), ("rows", dy),
                  ("lse", lse)],
                 [("rows", q.shape, q.dtype), ("whole", k.shape, k.dtype),
                  ("whole", v.shape, v.dtype)],
                 5, rate, interpret, scratch=((T, K), (T, K)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def flash_attention(q: Array, k: Array, v: Array, seed: Array, rate: float = 0.0,
                    interpret: bool = False) -> Array:
    """Causal attention of [B, H, T, K] queries, keys and values with
    dropout `rate` on the weights (the hash mask of `keep_mask` under
    `seed`, an int32 [1]); `interpret`: Pallas interpret mode (any backend).
    The same function as `attention_reference`."""
    return _forward(q, k, v, seed, rate, interpret)[0]


def _vjp_forward(q, k, v, seed, rate, interpret):
    y, lse = _forward(q, k, v, seed, rate, interpret)
    return y, (q, k, v, y, lse, seed)


def _vjp_backward(rate, interpret, residuals, dy):
    q, k, v, y, lse, seed = residuals
    dq, dk, dv = _backward(q, k, v, y, dy.astype(q.dtype), lse, seed, rate, interpret)
    return dq, dk, dv, np.zeros(seed.shape, jax.dtypes.float0)


flash_attention.defvjp(_vjp_forward, _vjp_backward)


def seed_from_key(key: Array) -> Array:
    """The kernel's int32 [1] seed from a dropout key (any generator)."""
    bits = jax.random.bits(key, (1,), jnp.uint32)
    return jax.lax.bitcast_convert_type(bits, jnp.int32)
