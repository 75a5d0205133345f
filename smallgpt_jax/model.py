"""A GPT (decoder-only transformer) written out in Flax linen.

Every module's `apply` is a pure function of (params, inputs, rngs). Tensor
names carry their shape, one letter per axis:

    B  batch                       D  model width (embed_dim)
    T  query positions (tokens in) H  attention heads
    S  key/value positions         K  head size (D // H)
    V  vocabulary size             F  feed-forward hidden width

The switches in `config.model` pick between the classic design choices:
positional encoding (learned, sinusoidal, rope, none), LayerNorm or RMSNorm,
pre- or post-norm, GELU/ReLU/ReLU²/SwiGLU, biases, weight tying, an explicit
or fused attention kernel, and the GPT-2 speedrun's switches (QK-norm,
zero-initialised projections, a logit softcap, value embeddings, the x0
shortcut, smear; all off by default). With `decode=True` the attention layers keep a
key/value cache so generation costs one position per step (see generation.py).

Parts have modules of their own, each with its page of docs: the position
encodings (positions.py, page 3), attention (attention.py, page 4), the
feed-forward network (feedforward.py, page 5), the norms (normalization.py, page 6), and the GPT-2 speedrun's
extra paths, smear and the x0 shortcut (shortcuts.py, page 15).

What you read here is what runs: `jax.grad` differentiates these formulas,
except where `config.model.fast_backward` is on (by default on CPU only,
where it measures faster). Then `kernels.fast_ops` swaps in the dense matmul
and LayerNorm of kernels.py, which compute the same functions with
hand-written backward passes; tests/test_kernels.py checks they match `jax.grad`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax import dropout, flash_attention, kernels
from smallgpt_jax.attention import CausalSelfAttention
from smallgpt_jax.feedforward import MLP, init as _init, out_init
from smallgpt_jax.normalization import Norm
from smallgpt_jax.positions import sinusoidal_table
from smallgpt_jax.shortcuts import Smear, X0Shortcut
from smallgpt_jax.system import runtime
from smallgpt_jax.system.errors import UserError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's settings: `config.model` (see config.py for each field's
    meaning) plus the vocabulary size, every 'auto' resolved for one platform.
    Frozen, so hashable: it can be a static argument of jitted functions.
    Made by `model_config`; the model reads nothing else while tracing."""

    num_layers: int  # L: transformer blocks.
    num_heads: int  # H: attention heads per block.
    embed_dim: int  # D: width of the residual stream.
    mlp_ratio: int  # F = mlp_ratio * D.
    block_size: int  # T: the longest sequence the model takes.
    dropout: float  # On embeddings, attention weights and residual branches.
    dropout_rng: str  # The dropout key's generator (jax.random.key's impl), or 'hash'.
    pos_encoding: str  # 'learned', 'sinusoidal', 'rope' or 'none'.
    norm: str  # 'layernorm' or 'rmsnorm'.
    norm_position: str  # 'pre' or 'post'.
    activation: str  # 'gelu', 'relu', 'relu2' or 'swiglu'.
    use_bias: bool  # Biases in dense layers and norms.
    tie_embeddings: bool  # The output head reuses the token embedding.
    attention: str  # 'explicit', 'fused' or 'flash' ('auto' is resolved by `model_config`).
    dtype: str  # Compute dtype ('float32', 'bfloat16', 'float16').
    scan_layers: bool  # nn.scan over the blocks.
    remat: str  # What the backward pass recomputes: 'none', 'block', 'attention', 'mlp'.
    vocab_size: int  # V.
    # 'on' or 'off' ('auto' is resolved by `model_config`): see `kernels.fast_ops`.
    fast_backward: str
    # The fused attention kernel (`kernels.fused_implementation`) when not
    # decoding: 'cudnn', or None for XLA's own; for 'flash', 'mosaic' (the
    # TPU kernel) or 'interpret' (Pallas's interpreter, on a CPU).
    attention_impl: str | None
    # The GPT-2 speedrun's switches (config.py says what each does; off by
    # default, and off in checkpoints written before they existed).
    qk_norm: bool = False
    zero_init: bool = False
    logit_softcap: float = 0.0
    value_embeddings: bool = False
    x0_shortcut: bool = False
    smear: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _dropout(c: ModelConfig) -> nn.Module:
    """The residual branches' and the embeddings' dropout: masks from the
    dropout key's generator, or a counter hash (dropout_rng='hash')."""
    return dropout.HashDropout(c.dropout) if c.dropout_rng == "hash" else nn.Dropout(c.dropout)


class Block(nn.Module):
    """One transformer block: attention then MLP, each with a residual and a norm.

    pre-norm  (GPT-2):  x = x + Attn(Norm(x));   x = x + MLP(Norm(x))
    post-norm (GPT-1):  x = Norm(x + Attn(x));   x = Norm(x + MLP(x))

    With `x0_shortcut` the block's input first mixes in the embeddings x0;
    with `value_embeddings` the values add a table row of each input token.
    """

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x_BTD: Array, positions_T: Array, x0_BTD: Array | None = None,
                 tokens_BT: Array | None = None) -> Array:
        c = self.config
        if c.x0_shortcut:
            x_BTD = X0Shortcut(name="x0")(x_BTD, x0_BTD)
        ve_BTHK = None
        if c.value_embeddings:  # Zeros at first: the plain values until trained.
            ve_BTHK = nn.Embed(c.vocab_size, c.embed_dim, embedding_init=nn.initializers.zeros,
                               dtype=jnp.dtype(c.dtype), name="value_embed")(tokens_BT)
            ve_BTHK = ve_BTHK.reshape(*tokens_BT.shape, c.num_heads, -1)
        layer_norm_fn = kernels.fast_ops(c.fast_backward == "on")[1]
        norm = lambda name: Norm(c.norm, c.use_bias, layer_norm_fn=layer_norm_fn, name=name)
        attn = CausalSelfAttention(c, self.deterministic, self.decode, name="attn")
        mlp = _remat(MLP, "mlp", c, self.decode)(c, name="mlp")
        drop = lambda y: _dropout(c)(y, deterministic=self.deterministic)
        if c.norm_position == "pre":
            x_BTD = x_BTD + drop(attn(norm("norm1")(x_BTD), positions_T, ve_BTHK))
            x_BTD = x_BTD + drop(mlp(norm("norm2")(x_BTD)))
        else:
            x_BTD = norm("norm1")(x_BTD + drop(attn(x_BTD, positions_T, ve_BTHK)))
            x_BTD = norm("norm2")(x_BTD + drop(mlp(x_BTD)))
        return x_BTD


class _ScanBlock(nn.Module):
    """Adapts Block to nn.scan's (carry, x) -> (carry, y) signature."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x_BTD: Array, positions_T: Array, x0_BTD: Array | None,
                 tokens_BT: Array):
        return Block(self.config, self.deterministic, self.decode, name="block")(
            x_BTD, positions_T, x0_BTD, tokens_BT), None


# config.model.remat -> (the part whose activations the backward pass
# computes again from the part's input, and what it keeps: jax.checkpoint's
# policies). 'block': a whole block, keeping nothing but its input, one
# [B, T, D] per layer. 'attention': a whole block, keeping the outputs of the
# matmuls with weights (qkv, proj, fc) and recomputing the attention's
# [B, H, T, T] scores and probabilities (the batched matmuls) and the cheap
# elementwise steps. 'mlp': the feed-forward network alone, whose [B, T, 4D]
# hidden is the largest array a block keeps besides attention's, at one
# matmul per layer. The same function every way: the same losses.
REMAT_POLICIES = {
    "block": ("block", jax.checkpoint_policies.nothing_saveable),
    "attention": ("block", jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    "mlp": ("mlp", jax.checkpoint_policies.nothing_saveable),
}


def resolve_remat(setting: str, platform: str, scan_layers: bool) -> str:
    """config.model.remat for `platform`: 'auto' is 'block' on a TPU when the
    layers are scanned, where every residual a block keeps is stacked for all
    layers in HBM and recomputing the block moves fewer bytes (XLA's and HBM
    counts) and keeps a tenth of the temporaries (benchmarks/README.md);
    'none' elsewhere (CPU and GPU runs as they were)."""
    if setting != "auto":
        return setting
    return "block" if platform == "tpu" and scan_layers else "none"


def _remat(module: type[nn.Module], part: str, c: ModelConfig,
           decode: bool) -> type[nn.Module]:
    """`module` (the model's `part`: 'block' or 'mlp') under jax.checkpoint
    where config.model.remat names that part (not when decoding: no gradient
    is taken there)."""
    remat_part, policy = REMAT_POLICIES.get(c.remat, (None, None))
    if remat_part != part or decode:
        return module
    # In a scan, XLA cannot merge the recomputation into the forward pass
    # anyway, and keeping it from trying (prevent_cse) would only slow it.
    return nn.remat(module, policy=policy, prevent_cse=not c.scan_layers)


class GPT(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, V] (float32)."""

    config: ModelConfig
    deterministic: bool = True  # False turns dropout on (training).
    decode: bool = False  # True: autoregressive decoding with a KV cache.

    @nn.compact
    def __call__(self, tokens_BT: Array) -> Array:
        c = self.config
        dtype = jnp.dtype(c.dtype)
        T = tokens_BT.shape[1]
        if T > c.block_size:
            # Position tables have block_size rows and JAX's gather clamps
            # out-of-range rows: without this check, positions past the end
            # would silently reuse the last row.
            raise UserError(
                f"a sequence of {T} tokens is longer than the model's context "
                f"(config.model.block_size={c.block_size}); give at most "
                f"{c.block_size} tokens (keep the last {c.block_size}).")
        if self.decode:
            # Where this call's tokens sit in the sequence being generated.
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            positions_T = index.value + jnp.arange(T)
            if not self.is_initializing():
                index.value = index.value + T
        else:
            positions_T = jnp.arange(T)

        embed = nn.Embed(c.vocab_size, c.embed_dim, embedding_init=_init,
                         dtype=dtype, name="token_embed")
        x_BTD = embed(tokens_BT)
        if c.pos_encoding == "learned":
            table = self.param("pos_embed", _init, (c.block_size, c.embed_dim))
            x_BTD = x_BTD + table[positions_T].astype(dtype)
        elif c.pos_encoding == "sinusoidal":
            # The fixed table's entries are of size ~1 and cannot shrink, while
            # embeddings start at 0.02: scaled by sqrt(D), as in "Attention Is
            # All You Need", tokens are not drowned out by positions at the start.
            table = jnp.asarray(sinusoidal_table(c.block_size, c.embed_dim))
            x_BTD = x_BTD * math.sqrt(c.embed_dim) + table[positions_T].astype(dtype)
        # 'rope' is applied inside attention; 'none' relies on the causal mask alone.
        if c.smear:
            x_BTD = Smear(self.decode, c.block_size, name="smear")(x_BTD, positions_T)
        x_BTD = _dropout(c)(x_BTD, deterministic=self.deterministic)
        x0_BTD = x_BTD if c.x0_shortcut else None

        if c.scan_layers:
            blocks = nn.scan(_remat(_ScanBlock, "block", c, self.decode),
                             variable_axes={"params": 0, "cache": 0},
                             split_rngs={"params": True, "dropout": True},
                             in_axes=nn.broadcast, length=c.num_layers)
            x_BTD, _ = blocks(c, self.deterministic, self.decode, name="blocks")(
                x_BTD, positions_T, x0_BTD, tokens_BT)
        else:
            block = _remat(Block, "block", c, self.decode)
            for i in range(c.num_layers):
                x_BTD = block(c, self.deterministic, self.decode, name=f"block_{i}")(
                    x_BTD, positions_T, x0_BTD, tokens_BT)

        if c.norm_position == "pre":  # Post-norm blocks already end in a norm.
            layer_norm_fn = kernels.fast_ops(c.fast_backward == "on")[1]
            x_BTD = Norm(c.norm, c.use_bias, layer_norm_fn=layer_norm_fn, name="norm_f")(x_BTD)
        if c.tie_embeddings:
            logits_BTV = embed.attend(x_BTD)
        else:
            head_init = nn.initializers.zeros if c.zero_init else _init
            logits_BTV = nn.Dense(c.vocab_size, use_bias=False, dtype=dtype,
                                  kernel_init=head_init, name="head")(x_BTD)
        logits_BTV = logits_BTV.astype(jnp.float32)
        if c.logit_softcap:  # Smoothly bounded to (-cap, cap): no overconfident logit.
            logits_BTV = c.logit_softcap * jnp.tanh(logits_BTV / c.logit_softcap)
        return logits_BTV


def model_config(model: Any, vocab_size: int, platform: str | None = None) -> ModelConfig:
    """`model` (a config's `model` section, a ConfigDict or a dict) with the
    vocabulary size filled in, as a ModelConfig whose 'auto' settings (dtype,
    fast_backward, dropout_rng) and fused attention kernel are resolved for `platform`
    ('cpu', 'gpu', 'tpu'; default: this host's backend). A compile for
    another machine names that machine's platform."""
    m = dict(model.to_dict() if hasattr(model, "to_dict") else model)
    derived = {"vocab_size", "attention_impl"}  # Filled in here, not settings.
    unknown = set(m) - ({f.name for f in dataclasses.fields(ModelConfig)} - derived)
    if unknown:
        raise UserError(f"config.model has fields the model does not know: "
                        f"{', '.join(sorted(unknown))}.")
    platform = platform or jax.default_backend()
    m["dtype"] = runtime.resolve_dtype(m["dtype"], platform)
    # A checkpoint's config may lack the field: then it is 'auto', the default.
    m["fast_backward"] = kernels.resolve_fast_backward(m.get("fast_backward", "auto"), platform)
    # Nor remat: it changes no parameter.
    m["remat"] = resolve_remat(m.get("remat", "none"), platform, m["scan_layers"])
    # Nor dropout_rng: JAX's default then.
    m["dropout_rng"] = dropout.resolve(m.get("dropout_rng", "threefry2x32"), platform)
    K = m["embed_dim"] // m["num_heads"]
    impl = kernels.fused_implementation(platform, m["dtype"], K, decode=False)
    m["attention"] = flash_attention.resolve(m.get("attention", "explicit"), platform,
                                             m["block_size"], m["num_heads"], K)
    if m["attention"] == "flash":  # Mosaic on a TPU; elsewhere the Pallas interpreter.
        impl = "mosaic" if platform == "tpu" else "interpret"
    return ModelConfig(**m, vocab_size=vocab_size, attention_impl=impl)


def unscan(params, c: ModelConfig) -> tuple[Any, ModelConfig]:
    """The same model with one module per layer: scanned params ([L, ...]
    under 'blocks/block') split into block_0..block_{L-1}. Inside nn.scan a
    layer's outputs and sown values cannot be picked out one by one."""
    if not c.scan_layers:
        return params, c
    params = dict(params)
    stacked = params.pop("blocks")["block"]
    for i in range(c.num_layers):
        params[f"block_{i}"] = jax.tree_util.tree_map(lambda p: p[i], stacked)
    return params, c.replace(scan_layers=False)


def count_params(params) -> int:
    """The number of parameters (every entry of every array)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
