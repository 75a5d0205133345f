"""What the model computes about a text: its hidden states, layer by layer.

The residual stream (docs page 6) carries one D-wide vector per token from
layer to layer. Layer 0 is what enters the first block (token embedding
plus position), layer l (1..L) is what leaves block l; the output head
reads layer L (through the final norm, in a pre-norm model). These
vectors are features for other tasks: a linear classifier ("probe") trained
on them shows what a layer has made easy to read off (docs page 14).

    hidden_states(...)    [layers, n, D]      one vector per token
    line_states(...)      [layers, lines, D]  mean over the tokens of each line
    document_state(...)   [layers, D]         mean over all tokens

n is the number of tokens of the text, `layers` the number of layers asked
for (all L + 1 by default). Long texts are read with the sliding windows of
analysis/scoring.py, so a token's vector is computed with at least half a window of
context before it; like scoring, the text is read as if after a newline.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax.analysis import scoring
from smallgpt_jax.model import GPT, Block, unscan
from smallgpt_jax.system.errors import UserError


@partial(jax.jit, static_argnums=(0,))
def _states(model_config, params, tokens_BT: jax.Array) -> jax.Array:
    """The residual stream before block 1 and after every block: [B, L+1, T, D]."""
    states = []

    def grab(next_fun, args, kwargs, context):
        # Called for every module method during apply: keep the blocks' inputs/outputs.
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Block) and context.method_name == "__call__":
            states.extend([args[0], out] if not states else [out])
        return out

    with nn.intercept_methods(grab):
        GPT(model_config).apply({"params": params}, tokens_BT)
    return jnp.stack(states, axis=1).astype(jnp.float32)


def check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """The layer indices asked for (None: all of 0..L; negative counts from L)."""
    if layers is None:
        return list(range(num_layers + 1))
    out = []
    for layer in layers:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise UserError(f"layer {layer} does not exist: the model has layers 0 (embeddings) "
                            f"to {num_layers}.")
        out.append(layer % (num_layers + 1))
    return out


def hidden_states(params, model_config, tokenizer, text: str,
                  layers: Sequence[int] | None = None, stride: int | None = None,
                  batch_size: int = 16) -> np.ndarray:
    """Hidden states of the text's n tokens: [len(layers), n, D] float32."""
    if not text:
        raise UserError("the text is empty; it has no tokens to take hidden states of.")
    scoring.check_known(tokenizer, text)
    chosen = check_layers(layers, model_config.num_layers)
    params, model_config = unscan(params, model_config)  # Each block's output apart.
    prefix = scoring.newline_prefix(tokenizer)
    seq_N = np.concatenate([prefix, np.asarray(tokenizer.encode(text), np.int32)])
    out_LND = np.zeros((len(chosen), len(seq_N), model_config.embed_dim), np.float32)
    plan, outs = scoring.run_windows(_states, params, model_config, seq_N, stride, batch_size)
    for w, ((start, first, end), states_LTD) in enumerate(zip(plan, outs)):
        first = 0 if w == 0 else first  # The first window also owns position 0.
        out_LND[:, first:end] = states_LTD[chosen, first - start:end - start]
    return out_LND[:, len(prefix):]


def line_states(params, model_config, tokenizer, text: str,
                layers: Sequence[int] | None = None, **kwargs) -> np.ndarray:
    """Mean hidden state of each line's tokens (a token belongs to the line
    of its first character): [len(layers), lines, D]. A line is its text up
    to and including its newline."""
    states_LND = hidden_states(params, model_config, tokenizer, text, layers, **kwargs)
    M = len(scoring.split_lines(text))
    line_N = scoring.line_index(text, scoring.token_starts(tokenizer, tokenizer.encode(text), text))
    sums_LMD = np.zeros((states_LND.shape[0], M, states_LND.shape[2]), np.float32)
    np.add.at(sums_LMD, (slice(None), line_N), states_LND)
    counts_M = np.bincount(line_N, minlength=M)
    # A line can start inside a multi-character token and own none: it gets zeros.
    return sums_LMD / np.maximum(counts_M, 1)[None, :, None]


def document_state(params, model_config, tokenizer, text: str,
                   layers: Sequence[int] | None = None, **kwargs) -> np.ndarray:
    """Mean hidden state over all the text's tokens: [len(layers), D]."""
    return hidden_states(params, model_config, tokenizer, text, layers, **kwargs).mean(axis=1)
