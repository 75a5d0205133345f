"""Exercises for the guided tour: write each function yourself, then check it.

    python -m pytest tests/test_exercises.py -k exercise

Each function below raises NotImplementedError until you replace its body;
the test of an unfinished exercise is skipped, a finished one is compared
with the package's own code. Write your answers in this file, or copy it
and point the tests at your copy:

    SMALLGPT_EXERCISES=my_answers.py python -m pytest tests/test_exercises.py -k exercise

Use numpy or jax.numpy as you like; the pages named in each docstring
explain what to compute.
"""

from __future__ import annotations

import numpy as np


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    """Page 3: the fixed positional table, [num_positions, dim].

    P[p, 2i] = sin(p / 10000^(2i/dim)),  P[p, 2i+1] = cos(p / 10000^(2i/dim)).
    Checked against smallgpt_jax.positions.sinusoidal_table.
    """
    raise NotImplementedError


def causal_attention(q_TK: np.ndarray, k_TK: np.ndarray, v_TK: np.ndarray) -> np.ndarray:
    """Page 4: one head's output [T, K]: softmax(q kᵀ / √K + mask) v, where the
    mask is −∞ above the diagonal (a position sees only itself and the past).
    Checked against a one-head smallgpt_jax.attention.CausalSelfAttention.
    """
    raise NotImplementedError


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
               eps: float = 1e-5) -> np.ndarray:
    """Page 6: (x − mean) / √(var + eps) · scale + bias over the last axis.
    Checked against smallgpt_jax.normalization.layer_norm.
    """
    raise NotImplementedError


def top_k_filter(logits_V: np.ndarray, k: int) -> np.ndarray:
    """Page 12: the logits with every token outside the k largest set to −∞
    (no ties in the test). Checked against smallgpt_jax.sampling.filter_logits.
    """
    raise NotImplementedError


def top_p_filter(logits_V: np.ndarray, p: float) -> np.ndarray:
    """Page 12: the logits with −∞ for every token outside the nucleus: sort
    the tokens by probability (softmax of the logits), most likely first, and
    keep a token while the probability of the tokens before it is < p (so the
    last one kept is the one that brings the total to p). The most likely
    token is always kept. Checked against smallgpt_jax.sampling.filter_logits.
    """
    raise NotImplementedError


def kv_cache_step(cache_k_SK: np.ndarray, cache_v_SK: np.ndarray, index: int,
                  q_K: np.ndarray, k_K: np.ndarray, v_K: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Page 12: one decoding step of one head with a key/value cache.

    The cache has S slots; slots 0 … index−1 hold the keys and values of the
    tokens so far. Write the new token's k and v into slot `index`, then
    attend with q over slots 0 … index (softmax(q·k / √K), the slots after
    `index` masked). Returns (the head's output [K], the new key cache
    [S, K], the new value cache [S, K]). Checked against a one-head
    smallgpt_jax.attention.CausalSelfAttention with decode=True.
    """
    raise NotImplementedError


def bpe_merge(ids: list[int], new_id: int) -> tuple[tuple[int, int], list[int]]:
    """Page 2: one byte-pair-encoding merge by hand. Count every adjacent
    pair of ids, take the most frequent (no ties in the test), and replace
    each of its occurrences, left to right, by `new_id`. Returns (the pair,
    the merged ids). Checked against smallgpt_jax.tokenizers.bpe.BPETokenizer.train
    asked for one merge (256 + 1 tokens) on a text of one word.
    """
    raise NotImplementedError


def bits_per_char(loss_nats_per_token: float, tokens: int, chars: int) -> float:
    """Page 8: a loss in nats per token as bits per character, for a text of
    `chars` characters that the tokenizer made into `tokens` tokens.
    Checked against smallgpt_jax.train.bits_per_char.
    """
    raise NotImplementedError
