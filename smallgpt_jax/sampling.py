"""Autoregressive generation: pick a next token, append it, repeat.

Two ways to run the model, which give the same tokens:
- `use_cache=False` (naive): re-run the whole context for every new token.
- `use_cache=True`: one "prefill" pass over the prompt fills each layer's
  key/value cache; then each new token is one cheap step that attends to the
  cache instead of recomputing it.

Past the context window (`block_size`) the model sees only the last
`block_size` tokens. With absolute positions the cache cannot simply slide
(every cached key was computed at the old position), so the exact default
re-runs the prefill over the slid window for each token past the window.

Choosing the token (`sample_logits`) is a pure function of the logits and an
explicit PRNG key: temperature, then top-k, then top-p (nucleus); temperature
0 is greedy decoding.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax.model import GPT

Array = jax.Array


def sample_logits(logits_BV: Array, key: Array, temperature: float | Array = 1.0,
                  top_k: int | Array = 0, top_p: float | Array = 1.0) -> Array:
    """Draws one token id per row. top_k=0 and top_p=1 switch those filters off."""
    logits_BV = logits_BV.astype(jnp.float32)
    V = logits_BV.shape[-1]
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    logits_BV = logits_BV / jnp.maximum(temperature, 1e-6)
    # top-k: drop everything below the k-th largest logit.
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_B1 = jnp.take_along_axis(sorted_BV, jnp.full((logits_BV.shape[0], 1), k - 1), -1)
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    # top-p: keep the smallest set of most likely tokens whose mass reaches p.
    sorted_BV = jnp.where(sorted_BV < kth_B1, -jnp.inf, sorted_BV)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = mass_before_BV < top_p  # The first token is always kept.
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    sampled_B = jax.random.categorical(key, logits_BV, axis=-1)
    return jnp.where(temperature == 0, greedy_B, sampled_B).astype(jnp.int32)


def init_cache(model_config, batch_size: int):
    """An empty key/value cache for `batch_size` sequences (all zeros)."""
    model = GPT(model_config, decode=True)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((batch_size, 1), jnp.int32)))["cache"]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@partial(jax.jit, static_argnums=(0,))
def _prefill(model_config, params, tokens_BT, key, temperature, top_k, top_p):
    """Fills a fresh cache with `tokens_BT`; samples the token after them."""
    cache = init_cache(model_config, tokens_BT.shape[0])
    logits_BTV, vars_ = GPT(model_config, decode=True).apply(
        {"params": params, "cache": cache}, tokens_BT, mutable=["cache"])
    next_B = sample_logits(logits_BTV[:, -1], key, temperature, top_k, top_p)
    return next_B, vars_["cache"]


@partial(jax.jit, static_argnums=(0,))
def _decode_step(model_config, params, cache, tokens_B, key, temperature, top_k, top_p):
    """One new position: attends to the cache, appends to it, samples the next token."""
    logits_B1V, vars_ = GPT(model_config, decode=True).apply(
        {"params": params, "cache": cache}, tokens_B[:, None], mutable=["cache"])
    return sample_logits(logits_B1V[:, 0], key, temperature, top_k, top_p), vars_["cache"]


@partial(jax.jit, static_argnums=(0,))
def _full_step(model_config, params, tokens_BT, key, temperature, top_k, top_p):
    """The naive way: run the whole (cropped) context, sample from the last position."""
    logits_BTV = GPT(model_config).apply({"params": params}, tokens_BT)
    return sample_logits(logits_BTV[:, -1], key, temperature, top_k, top_p)


def generate(params, model_config, prompt_ids: np.ndarray, max_new_tokens: int,
             key: Array, *, num_samples: int = 1, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, use_cache: bool = True,
             on_token: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Continues `prompt_ids` (1-D, non-empty) in `num_samples` parallel rows.

    Returns the new tokens, shape [num_samples, max_new_tokens]. `on_token`,
    if given, is called with each new column of ids as soon as it exists
    (for streaming output). The same key gives the same tokens.
    """
    window = model_config.block_size
    tokens_BL = np.tile(np.asarray(prompt_ids, np.int32)[None], (num_samples, 1))
    knobs = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
    new_tokens, cache = [], None
    for i in range(max_new_tokens):
        step_key = jax.random.fold_in(key, i)
        length = tokens_BL.shape[1]
        if not use_cache:
            next_B = _full_step(model_config, params, tokens_BL[:, -window:], step_key, *knobs)
        elif cache is None or length > window:
            # First token, or the window slid: (re)fill the cache from scratch.
            next_B, cache = _prefill(model_config, params, tokens_BL[:, -window:],
                                     step_key, *knobs)
        else:
            next_B, cache = _decode_step(model_config, params, cache, tokens_BL[:, -1],
                                         step_key, *knobs)
        next_B = np.asarray(next_B)
        tokens_BL = np.concatenate([tokens_BL, next_B[:, None]], axis=1)
        new_tokens.append(next_B)
        if on_token is not None:
            on_token(next_B)
    return np.stack(new_tokens, axis=1) if new_tokens else np.zeros((num_samples, 0), np.int32)
