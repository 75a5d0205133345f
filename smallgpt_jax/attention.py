"""Attention (docs/04-attention.md): each position mixes the values of the
positions before it, weighted by how well its query matches their keys.
`CausalSelfAttention` is the layer model.py's blocks call, with its KV cache
for decoding (docs/12); `attention_weights` the written-out softmax(q k^T /
sqrt(K)); `low_precision_softmax` the softmax with float32 statistics that
bfloat16 and float16 runs use. With `attention='flash'` the layer calls the
Pallas kernel of flash_attention.py instead (training and evaluation; the KV
cache and the attention pictures keep the explicit path).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallgpt_jax import dropout, flash_attention as flash, kernels
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.feedforward import init as _init, out_init
from smallgpt_jax.normalization import rms_norm
from smallgpt_jax.positions import apply_rope

Array = jax.Array


@jax.custom_vjp
def low_precision_softmax(x: Array) -> Array:
    """Softmax over the last axis, returned in x's dtype (bfloat16, float16):
    the max and the sum are taken in float32, and the backward pass keeps only
    the probabilities in x's dtype, half the bytes of float32 ones (PyTorch's
    autocast keeps them so too). Attention's [B, H, T, S] arrays are the
    largest of a step, so what they are stored in sets its memory traffic."""
    return _softmax_fwd(x)[0]


def _softmax_fwd(x: Array) -> tuple[Array, Array]:
    x32 = x.astype(jnp.float32)
    e = jnp.exp(x32 - x32.max(axis=-1, keepdims=True))
    p = (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
    return p, p


def _softmax_bwd(p: Array, g: Array) -> tuple[Array]:
    p32, g32 = p.astype(jnp.float32), g.astype(jnp.float32)
    return ((p32 * (g32 - (g32 * p32).sum(axis=-1, keepdims=True))).astype(p.dtype),)


low_precision_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def attention_weights(q_BTHK: Array, k_BSHK: Array, mask_TS: Array) -> Array:
    """softmax(q k^T / sqrt(K)) where the mask allows, 0 elsewhere: [B, H, T, S]
    in q's dtype (float32 statistics in low precision)."""
    att_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK) / math.sqrt(q_BTHK.shape[-1])
    att_BHTS = jnp.where(mask_TS, att_BHTS, -jnp.inf)
    if att_BHTS.dtype == jnp.float32:
        return jax.nn.softmax(att_BHTS, axis=-1)
    return low_precision_softmax(att_BHTS)


class FlatQKV(nn.Module):
    """The qkv projection of nn.DenseGeneral((3, H, K)), the same parameters
    (names, shapes, initial values), with its output as one axis: [B, T, 3D].
    The flash kernel reads that as it is; on a TPU a [B, T, 3, H, K] output
    is tiled over (H, K), and viewing it as [B, T, 3D] would copy it."""

    features: tuple[int, int, int]  # (3, H, K)
    use_bias: bool
    dtype: Any
    dot_general: Any = None

    @nn.compact
    def __call__(self, x_BTD: Array) -> Array:
        D, F = x_BTD.shape[-1], math.prod(self.features)
        # Initialised flat and reshaped, as DenseGeneral does: the same values.
        kernel = self.param("kernel", lambda key, shape: _init(key, (D, F)).reshape(shape),
                            (D, *self.features))
        y = (self.dot_general or jax.lax.dot_general)(
            x_BTD.astype(self.dtype), kernel.reshape(D, F).astype(self.dtype),
            (((x_BTD.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, self.features)
            y = y + bias.reshape(F).astype(self.dtype)
        return y


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    config: Any  # model.ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x_BTD: Array, positions_T: Array,
                 value_embed_BTHK: Array | None = None) -> Array:
        """`value_embed_BTHK`: added to the values (`value_embeddings`)."""
        c = self.config
        H, K = c.num_heads, c.embed_dim // c.num_heads
        dtype = jnp.dtype(c.dtype)
        dot_general = kernels.fast_ops(c.fast_backward == "on")[0]
        # One matmul makes queries, keys and values for all heads: [B, T, 3, H, K].
        if c.attention == "flash":
            qkv_BT3D = FlatQKV((3, H, K), c.use_bias, dtype, dot_general, name="qkv")(x_BTD)
            qkv = qkv_BT3D.reshape(*qkv_BT3D.shape[:2], 3, H, K)
        else:
            qkv = nn.DenseGeneral((3, H, K), use_bias=c.use_bias, dtype=dtype,
                                  kernel_init=_init, name="qkv",
                                  dot_general=dot_general)(x_BTD)
        q_BTHK, k_BTHK, v_BTHK = projected = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if c.qk_norm:  # Unit-RMS queries and keys: attention logits cannot blow up.
            q_BTHK, k_BTHK = rms_norm(q_BTHK), rms_norm(k_BTHK)
        if value_embed_BTHK is not None:
            v_BTHK = v_BTHK + value_embed_BTHK
        if c.pos_encoding == "rope":
            q_BTHK, k_BTHK = apply_rope(q_BTHK, positions_T), apply_rope(k_BTHK, positions_T)

        if self.decode:
            # Write this call's keys/values into the cache at their positions,
            # then attend over the whole cache; unwritten slots are masked.
            B = x_BTD.shape[0]
            cache_k = self.variable("cache", "key", jnp.zeros, (B, c.block_size, H, K), dtype)
            cache_v = self.variable("cache", "value", jnp.zeros, (B, c.block_size, H, K), dtype)
            if not self.is_initializing():
                start = (0, positions_T[0], 0, 0)
                cache_k.value = jax.lax.dynamic_update_slice(cache_k.value, k_BTHK, start)
                cache_v.value = jax.lax.dynamic_update_slice(cache_v.value, v_BTHK, start)
            k_BSHK, v_BSHK = cache_k.value, cache_v.value
            key_positions_S = jnp.arange(c.block_size)
        else:
            k_BSHK, v_BSHK, key_positions_S = k_BTHK, v_BTHK, positions_T
        # Causal mask: query at position t may look at keys at positions <= t.
        mask_TS = key_positions_S[None, :] <= positions_T[:, None]

        if c.attention == "fused":
            # jax's kernel; no attention dropout. Without a cache the mask is
            # plain causal: saying so (is_causal) lets a flash kernel skip the
            # masked blocks instead of reading a [T, S] mask.
            y_BTHK = jax.nn.dot_product_attention(
                q_BTHK, k_BSHK, v_BSHK, mask=mask_TS[None, None] if self.decode else None,
                is_causal=not self.decode,
                implementation=None if self.decode else c.attention_impl)
        elif c.attention == "flash" and self._flash_fits(x_BTD.shape[1]):
            rate = 0.0 if self.deterministic else c.dropout
            seed = (dropout.seed_from_key(self.make_rng("dropout")) if rate > 0
                    else jnp.zeros((1,), jnp.int32))
            if any(a is not b for a, b in zip((q_BTHK, k_BSHK, v_BSHK), projected)):
                # Changed since the projection (QK-norm, RoPE, value embeddings).
                qkv_BT3D = jnp.concatenate([q_BTHK, k_BSHK, v_BSHK], axis=2).reshape(
                    *qkv.shape[:2], -1)
            y_BTHK = flash.flash_attention(qkv_BT3D, seed, H, rate,
                                           c.attention_impl == "interpret").reshape(q_BTHK.shape)
        else:
            att_BHTS = attention_weights(q_BTHK, k_BSHK, mask_TS)
            self.sow("intermediates", "attention", att_BHTS.astype(jnp.float32))  # Pictures.
            att_BHTS = nn.Dropout(c.dropout)(att_BHTS, deterministic=self.deterministic)
            y_BTHK = jnp.einsum("bhts,bshk->bthk", att_BHTS, v_BSHK)
        # Concatenate heads and project back to the residual width.
        return nn.DenseGeneral(c.embed_dim, axis=(-2, -1), use_bias=c.use_bias,
                               dtype=dtype, kernel_init=out_init(c), name="proj",
                               dot_general=dot_general)(y_BTHK)

    def _flash_fits(self, T: int) -> bool:
        """Whether this call runs the flash kernel: not when decoding (the
        cache's queries are not the keys' positions), nor when the weights
        are recorded for pictures; a length the kernel cannot take (a short
        evaluation window) runs the explicit path, which without dropout
        is the same function."""
        if self.decode or self.is_mutable_collection("intermediates"):
            return False
        why = flash.check(T)
        if why is not None and not self.deterministic and self.config.dropout > 0:
            raise UserError(f"config.model.attention='flash' cannot train on {T} tokens: "
                            f"{why}.")
        return why is None
