"""Causal attention as one Pallas kernel pair (config.model.attention='flash'):
the [B, H, T, T] scores and probabilities live only in the TPU core's VMEM,
never in HBM. The forward writes y and each row's logsumexp; the backward
computes the probabilities again from q, k and that logsumexp.

Attention dropout happens inside the kernel. Its mask is not stored either:
it is a hash of (seed, batch, head, query, key) (`keep_mask`), so the
backward rebuilds exactly the forward's mask. `attention_reference` is the
same attention, hash included, in plain jnp: it runs anywhere and is what
the kernel is tested against.

Layout: the kernel reads the qkv projection's output as it is, [B, T, 3D]
(queries, keys, values, each head's K columns side by side), and writes y
as [B, T, D]: no transposes, and no padding where a head's K columns are
fewer than the TPU's 128 lanes, because a grid step takes a group of heads
whose columns fill whole lanes (`heads_per_step`: 2 heads of 64, 8 of 48).
The grid runs over (batch, head group, query block); a query block holds
all T keys in VMEM (which fits for the contexts this kernel takes, `check`)
and computes only the key tiles on or before its own rows: the causal
mask's zeros after them are neither computed nor counted (about half of
the T x T weights at T = 256, with tiles of 128).
On a CPU the kernel runs in Pallas interpret mode: correct, slow, for
tests of tiny models.
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
from smallgpt_jax.dropout import keep_mask
from smallgpt_jax.system.errors import UserError

Array = jax.Array

MAX_BLOCK = 256  # Query rows per grid step at most, where T is not a multiple of CHUNK.
CHUNK = 128  # Query rows and key columns per tile where T is a multiple of it.
MAX_T = 2048


def check(seq_len: int) -> str | None:
    """Why the kernel cannot take `seq_len` tokens, or None if it can."""
    if seq_len > MAX_T:
        return f"at most {MAX_T} tokens (the keys of a query block must fit VMEM)"
    if seq_len > MAX_BLOCK and seq_len % MAX_BLOCK:
        return f"a context over {MAX_BLOCK} must be a multiple of {MAX_BLOCK}"
    return None


def heads_per_step(num_heads: int, head_size: int, tpu: bool = True) -> int | None:
    """How many heads one grid step takes: the fewest whose columns fill
    whole 128-lane rows (a TPU block's last dim must be a multiple of 128);
    None on a TPU when no group of the heads does. The interpreter has no
    lanes: there, without such a group, all heads at once."""
    for group in range(1, num_heads + 1):
        if num_heads % group == 0 and group * head_size % 128 == 0:
            return group
    return None if tpu else num_heads


def resolve(setting: str, platform: str, block_size: int, num_heads: int,
            head_size: int) -> str:
    """config.model.attention for `platform`: 'auto' is 'flash' on a TPU when
    the kernel takes the shapes, else 'explicit'. 'flash' where it cannot
    run (a GPU: Mosaic kernels run on TPUs, or interpreted on CPUs; heads
    no group of which fills 128 lanes on a TPU) is one UserError."""
    tpu_heads = heads_per_step(num_heads, head_size)
    if setting == "auto":
        fits = check(block_size) is None and tpu_heads is not None
        return "flash" if platform == "tpu" and fits else "explicit"
    if setting == "flash" and platform == "gpu":
        raise UserError("config.model.attention='flash' is a TPU kernel and does not run on "
                        "a GPU; use 'fused' (cuDNN, dropout 0) or 'explicit'.")
    if setting == "flash" and platform == "tpu" and tpu_heads is None:
        raise UserError(f"config.model.attention='flash' needs heads whose columns fill "
                        f"128 lanes in groups: {num_heads} heads of {head_size} do not; use "
                        f"'explicit'.")
    return setting


def attention_reference(qkv: Array, seed: Array, num_heads: int, rate: float) -> Array:
    """The kernel's attention in plain jnp: qkv [B, T, 3D] in, y [B, T, D]
    out; causal softmax(q k^T / sqrt(K)) with float32 scores, the hash
    dropout (`keep_mask`, scaled by 1 / (1 - rate)), times v."""
    B, T, _ = qkv.shape
    q, k, v = jnp.moveaxis(qkv.reshape(B, T, 3, num_heads, -1), 2, 0)
    s = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
    rows, cols = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    s = jnp.where(cols <= rows, s / math.sqrt(q.shape[-1]), -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    if rate > 0:
        streams = jnp.arange(B * num_heads).reshape(B, num_heads, 1, 1)
        p = jnp.where(keep_mask(seed[0], streams, rows, cols, T, rate), p / (1 - rate), 0.0)
    y = jnp.einsum("bhts,bshk->bthk", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return y.reshape(B, T, -1).astype(qkv.dtype)


def _block(seq_len: int) -> int:
    """Query rows per grid step, and key columns per tile: CHUNK where the
    context is a multiple of it, so that a query block skips the key tiles
    wholly after it (the causal mask's zeros); else the whole context, up
    to MAX_BLOCK rows a step."""
    return CHUNK if seq_len % CHUNK == 0 else min(seq_len, MAX_BLOCK)


def _grid() -> tuple:
    """This grid step's (batch, head group, query block, head groups).
    Read in the kernel's body: inside pl.when the interpreter has no grid."""
    return pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.num_programs(1)


def _positions(i, kb: int, block: int) -> tuple[Array, Array]:
    """Query rows and key columns [block, block] of query block i against key
    tile kb: the same for every head of a grid step, so made once a tile."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (block, block), 0) + i * block
    cols = jax.lax.broadcasted_iota(jnp.int32, (block, block), 1) + kb * block
    return rows, cols


def _tile(seed_ref, grid: tuple, head: int, heads: int, q, k, rows, cols, rate: float,
          seq_len: int):
    """Head `head` of this grid step's group against a key tile at (`rows`,
    `cols`): the scaled, causally masked scores s [block, block] (float32)
    and dropout's scaled keep mask (None without dropout)."""
    b, j, _, groups = grid
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32) * (1.0 / math.sqrt(q.shape[1]))
    s = jnp.where(cols <= rows, s, -jnp.inf)
    scale = None
    if rate > 0:
        stream = (b * groups + j) * heads + head  # batch * H + head
        keep = keep_mask(seed_ref[0], stream, rows, cols, seq_len, rate)
        scale = jnp.where(keep, 1.0 / (1.0 - rate), 0.0)
    return s, scale


def _causal_tiles(i, block: int, seq_len: int, body) -> None:
    """body(kb) for each key tile kb that query block i sees: kb <= i. The
    tiles after it are all masked: neither computed nor read."""
    for kb in range(seq_len // block):
        pl.when(kb <= i)(functools.partial(body, kb))


def _forward_kernel(seed_ref, q_ref, k_ref, v_ref, y_ref, lse_ref, m_sc, l_sc, acc_sc, *,
                    rate: float, block: int, heads: int, K: int):
    """Online softmax over the key tiles: a running row max m, sum l and
    unnormalised y per head, rescaled as a tile raises the max."""
    T, grid = k_ref.shape[0], _grid()
    m_sc[...] = jnp.full_like(m_sc, -jnp.inf)
    l_sc[...] = jnp.zeros_like(l_sc)
    acc_sc[...] = jnp.zeros_like(acc_sc)

    def tile(kb):
        keys, (rows, cols) = slice(kb * block, (kb + 1) * block), _positions(grid[2], kb, block)
        for g in range(heads):  # The group's heads, each in its K columns.
            c = slice(g * K, (g + 1) * K)
            s, scale = _tile(seed_ref, grid, g, heads, q_ref[:, c], k_ref[keys, c], rows, cols,
                             rate, T)
            # Rows [1, block] in scratch, as lse: no lane padding.
            m_old = m_sc[g:g + 1, :].T
            m_new = jnp.maximum(m_old, s.max(axis=-1, keepdims=True))
            alpha, e = jnp.exp(m_old - m_new), jnp.exp(s - m_new)
            l_sc[g:g + 1, :] = (alpha * l_sc[g:g + 1, :].T + e.sum(-1, keepdims=True)).T
            m_sc[g:g + 1, :] = m_new.T
            if scale is not None:
                e = e * scale
            v = v_ref[keys, c]
            acc_sc[:, c] = alpha * acc_sc[:, c] + jnp.dot(
                e.astype(v.dtype), v, preferred_element_type=jnp.float32)

    _causal_tiles(grid[2], block, T, tile)
    for g in range(heads):
        c = slice(g * K, (g + 1) * K)
        m, total = m_sc[g:g + 1, :], l_sc[g:g + 1, :]
        y_ref[:, c] = (acc_sc[:, c] / total.T).astype(y_ref.dtype)
        lse_ref[g:g + 1, :] = m + jnp.log(total)


def _backward_kernel(seed_ref, q_ref, k_ref, v_ref, y_ref, dy_ref, lse_ref,
                     dq_ref, dk_ref, dv_ref, dk_acc, dv_acc, dq_acc, *, rate: float,
                     block: int, heads: int, K: int):
    T, grid = k_ref.shape[0], _grid()
    i = grid[2]

    @pl.when(i == 0)
    def _():
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    dq_acc[...] = jnp.zeros_like(dq_acc)
    # Sums over this block's rows: [block, block] x [block, K].
    t_dot = lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                                             preferred_element_type=jnp.float32)

    heads_cols = [slice(g * K, (g + 1) * K) for g in range(heads)]
    # The gradient through softmax needs rowsum(dP * P) = rowsum(dy * y),
    # dropout or not: one [block, K] product per head instead of [block, T].
    deltas = [(dy_ref[:, c].astype(jnp.float32) * y_ref[:, c].astype(jnp.float32)).sum(
        -1, keepdims=True) for c in heads_cols]

    def tile(kb):
        keys, (rows, cols) = slice(kb * block, (kb + 1) * block), _positions(i, kb, block)
        for g, (c, delta) in enumerate(zip(heads_cols, deltas)):
            q, k, v, dy = q_ref[:, c], k_ref[keys, c], v_ref[keys, c], dy_ref[:, c]
            s, scale = _tile(seed_ref, grid, g, heads, q, k, rows, cols, rate, T)
            p = jnp.exp(s - lse_ref[g:g + 1, :].T)
            dp = jax.lax.dot_general(dy, v, (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32)
            dropped = p if scale is None else p * scale
            if scale is not None:
                dp = dp * scale
            ds = p * (dp - delta) * (1.0 / math.sqrt(K))
            dv_acc[keys, c] += t_dot(dropped.astype(dy.dtype), dy)
            dk_acc[keys, c] += t_dot(ds.astype(q.dtype), q)
            dq_acc[:, c] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    _causal_tiles(i, block, T, tile)
    dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)

    @pl.when(i == pl.num_programs(2) - 1)
    def _():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _same_vary(seed: Array, q: Array) -> Array:
    """The seed cast to vary over q's mesh axes: a kernel's operands must agree."""
    missing = kernels.varying_axes(q) - kernels.varying_axes(seed)
    return jax.lax.pcast(seed, tuple(sorted(missing)), to="varying") if missing else seed


def _call(kernel, qkv: Array, seed: Array, num_heads: int, inputs: list, outputs: list,
          matmuls: int, arrays: int, rate: float, interpret: bool, backward: bool = False):
    """kernel(seed, *inputs, *outputs, *scratch) over the grid (batch, head
    group, query block); scratch: the forward's running max, sum and y, or
    the backward's dk, dv and dq accumulators. `inputs`: (block, array) pairs;
    `outputs`: (block, shape) pairs. A block is one of: 'q', 'k', 'v' (this
    step's query rows, or all T rows of keys or values, of the group's
    columns of qkv [B, T, 3D]), 'rows' or 'whole' (the same of a [B, T, D]
    array), 'lse' (the group's logsumexp rows, [B, H / group, group, T]).
    The cost declared for the compile check: `matmuls` [block, block] x K
    products per tile computed (those on or below the diagonal: about half
    of T x T), an exp per weight, `arrays` [B, T, D] arrays read or written once."""
    B, T, D3 = qkv.shape
    K = D3 // 3 // num_heads
    heads = heads_per_step(num_heads, K, tpu=not interpret)
    block, lanes, groups = _block(T), heads * K, num_heads // heads
    spec = lambda rows, where: pl.BlockSpec((None, rows, lanes), where)
    specs = {
        "q": spec(block, lambda b, j, i, s: (b, i, j)),
        "k": spec(T, lambda b, j, i, s: (b, 0, groups + j)),
        "v": spec(T, lambda b, j, i, s: (b, 0, 2 * groups + j)),
        "rows": spec(block, lambda b, j, i, s: (b, i, j)),
        "whole": spec(T, lambda b, j, i, s: (b, 0, j)),
        "lse": pl.BlockSpec((None, None, heads, block), lambda b, j, i, s: (b, j, 0, i))}
    f32 = jnp.float32
    if backward:  # dk and dv summed over the query blocks, dq over the key tiles.
        scratch = [pltpu.VMEM((T, lanes), f32)] * 2 + [pltpu.VMEM((block, lanes), f32)]
    else:  # Each head's running max and sum (as rows), the unnormalised y.
        scratch = [pltpu.VMEM((heads, block), f32)] * 2 + [pltpu.VMEM((block, lanes), f32)]
    tiles = T // block * (T // block + 1) // 2
    n = B * num_heads * tiles * block * block  # Weights computed.
    cost = pl.CostEstimate(
        flops=2 * matmuls * n * K, transcendentals=n,
        bytes_accessed=(arrays * B * T * D3 // 3) * qkv.dtype.itemsize + B * num_heads * T * 4)
    # Under shard_map an output varies over the mesh axes its inputs vary
    # over (pallas_call cannot infer that).
    out_shape = [jax.ShapeDtypeStruct(shape, jnp.float32 if b == "lse" else qkv.dtype,
                                      manual_axis_type=jax.typeof(qkv).mat)
                 for b, shape in outputs]
    return pl.pallas_call(
        functools.partial(kernel, rate=rate, block=block, heads=heads, K=K),
        out_shape=out_shape, interpret=interpret, cost_estimate=cost,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(B, groups, T // block),
            in_specs=[specs[b] for b, _ in inputs], out_specs=[specs[b] for b, _ in outputs],
            scratch_shapes=scratch),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
    )(_same_vary(seed, qkv), *(a for _, a in inputs))


def _forward(qkv, seed, num_heads, rate, interpret):
    B, T, D3 = qkv.shape
    heads = heads_per_step(num_heads, D3 // 3 // num_heads, tpu=not interpret)
    return _call(_forward_kernel, qkv, seed, num_heads, [("q", qkv), ("k", qkv), ("v", qkv)],
                 [("rows", (B, T, D3 // 3)), ("lse", (B, num_heads // heads, heads, T))],
                 2, 4, rate, interpret)


def _backward(qkv, y, dy, lse, seed, num_heads, rate, interpret):
    # Five matmuls: the scores again, dp, dv, dk, dq; dk and dv summed over
    # the query blocks in float32 scratch, dq over the key tiles.
    shape = y.shape
    return _call(_backward_kernel, qkv, seed, num_heads,
                 [("q", qkv), ("k", qkv), ("v", qkv), ("rows", y), ("rows", dy), ("lse", lse)],
                 [("rows", shape), ("whole", shape), ("whole", shape)],
                 5, 8, rate, interpret, backward=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def flash_attention(qkv: Array, seed: Array, num_heads: int, rate: float = 0.0,
                    interpret: bool = False) -> Array:
    """Causal attention: qkv [B, T, 3D] (queries, keys, values; each head's
    K = D / num_heads columns side by side) in, y [B, T, D] out, dropout
    `rate` on the weights (the hash mask of `keep_mask` under `seed`, an
    int32 [1]); `interpret`: Pallas interpret mode (any backend). The same
    function as `attention_reference`."""
    return _forward(qkv, seed, num_heads, rate, interpret)[0]


def _vjp_forward(qkv, seed, num_heads, rate, interpret):
    y, lse = _forward(qkv, seed, num_heads, rate, interpret)
    return y, (qkv, y, lse, seed)


def _vjp_backward(num_heads, rate, interpret, residuals, dy):
    qkv, y, lse, seed = residuals
    grads = _backward(qkv, y, dy.astype(y.dtype), lse, seed, num_heads, rate, interpret)
    return jnp.concatenate(grads, axis=-1), np.zeros(seed.shape, jax.dtypes.float0)


flash_attention.defvjp(_vjp_forward, _vjp_backward)
