"""Choosing the next token from the model's logits: the sampling strategy.

A pure function of the logits and an explicit PRNG key: temperature, then
top-k, then top-p (nucleus) on what top-k kept; temperature 0 is greedy
decoding. The knobs may be traced values, so changing them does not
recompile anything. generation.py runs the model and calls `sample_logits`
once per new token.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from smallgpt_jax.system.errors import UserError

Array = jax.Array


def filter_logits(logits_BV: Array, temperature: float | Array = 1.0,
                  top_k: int | Array = 0, top_p: float | Array = 1.0) -> Array:
    """Logits divided by the temperature, with -inf for every token that
    top-k or top-p removes (float32).

    top-k keeps exactly the k most likely tokens (ties go to the lower id);
    top-p then keeps the smallest set of most likely tokens whose probability,
    renormalised over what top-k kept, reaches p. top_k=0 and top_p=1 switch
    the filters off. The most likely token always survives.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    # Temperature 0 means greedy (see sample_logits); avoid dividing by it.
    logits_BV = logits_BV / jnp.where(temperature > 0, temperature, 1.0)
    # Ranking sorts the vocabulary: skip it when no filter is on.
    return jax.lax.cond((top_k > 0) | (top_p < 1), _filter_by_rank, lambda l, k, p: l,
                        logits_BV, top_k, top_p)


def _filter_by_rank(logits_BV: Array, top_k: int | Array, top_p: float | Array) -> Array:
    """filter_logits' top-k and top-p, on logits already divided by the temperature."""
    V = logits_BV.shape[-1]
    # Rank the tokens, most likely first. Filtering by rank rather than by
    # comparing with the k-th value keeps exactly k tokens even when logits tie.
    order_BV = jnp.argsort(-logits_BV, axis=-1, stable=True)  # rank -> token id
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    rank_V = jnp.arange(V)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    keep_BV = rank_V[None, :] < k
    # Nucleus: keep a token while the mass of the more likely ones is below p,
    # so the last one kept is the one that makes the total reach p.
    probs_BV = jax.nn.softmax(jnp.where(keep_BV, sorted_BV, -jnp.inf), axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # (top_p >= 1 keeps all: float rounding could push a tail's mass_before to 1.)
    keep_BV = keep_BV & ((mass_before_BV < top_p) | (rank_V[None, :] == 0) | (top_p >= 1))
    # Back from rank order to token order: token `order[r]` has rank r.
    keep_BV = jnp.put_along_axis(jnp.zeros_like(keep_BV), order_BV, keep_BV, axis=-1,
                                 inplace=False)
    return jnp.where(keep_BV, logits_BV, -jnp.inf)


def sample_logits(logits_BV: Array, key: Array, temperature: float | Array = 1.0,
                  top_k: int | Array = 0, top_p: float | Array = 1.0) -> Array:
    """Draws one token id per row from `filter_logits(...)`; temperature 0
    returns the most likely token (greedy). Int32 [B]."""
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    filtered_BV = filter_logits(logits_BV, temperature, top_k, top_p)
    sampled_B = jax.random.categorical(key, filtered_BV, axis=-1)
    return jnp.where(temperature == 0, greedy_B, sampled_B).astype(jnp.int32)


def check_options(*, max_new_tokens: int = 0, num_samples: int = 1,
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float = 1.0, slide_step: int = 1,
                  block_size: int | None = None) -> None:
    """Raises UserError naming the first bad sampling option.

    top_k=None means no top-k filter; an explicit top_k must be >= 1.
    """
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens={max_new_tokens} must be 0 or more.")
    if num_samples < 1:
        raise UserError(f"num_samples={num_samples} must be at least 1.")
    if not 0 <= temperature < math.inf:  # Also catches NaN.
        raise UserError(f"temperature={temperature} must be >= 0 and finite (0 means greedy).")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k={top_k} must be at least 1 (leave it out for no top-k filter).")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p={top_p} must be in (0, 1] (1 means no nucleus filter).")
    if slide_step < 1 or (block_size is not None and slide_step > block_size):
        limit = f" and at most block_size={block_size}" if block_size is not None else ""
        raise UserError(f"slide_step={slide_step} must be at least 1{limit} (1 is exact).")
