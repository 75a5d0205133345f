"""Answers to docs/exercises.py: try each exercise before you read its answer.

The tests run these answers through the same checks as yours (they must
pass), so this file is also a way to see what a check accepts:

    SMALLGPT_EXERCISES=docs/exercises_answers.py python -m pytest tests/test_exercises.py -k exercise
"""

from __future__ import annotations

import collections
import math

import numpy as np


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    # One angle per (position, pair of features); sin on even features, cos on odd.
    angle = np.arange(num_positions)[:, None] / 10000 ** (np.arange(0, dim, 2) / dim)
    return np.stack([np.sin(angle), np.cos(angle)], -1).reshape(num_positions, dim)


def _softmax(scores: np.ndarray) -> np.ndarray:
    w = np.exp(scores - scores.max(-1, keepdims=True))  # −∞ scores give weight 0.
    return w / w.sum(-1, keepdims=True)


def causal_attention(q_TK: np.ndarray, k_TK: np.ndarray, v_TK: np.ndarray) -> np.ndarray:
    T, K = q_TK.shape
    mask_TT = np.triu(np.full((T, T), -np.inf), 1)  # −∞ above the diagonal: the future.
    return _softmax(q_TK @ k_TK.T / math.sqrt(K) + mask_TT) @ v_TK


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
               eps: float = 1e-5) -> np.ndarray:
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def top_k_filter(logits_V: np.ndarray, k: int) -> np.ndarray:
    kth_largest = np.sort(logits_V)[-k]
    return np.where(logits_V < kth_largest, -np.inf, logits_V)


def top_p_filter(logits_V: np.ndarray, p: float) -> np.ndarray:
    order = np.argsort(-logits_V)  # Most likely first.
    probs = _softmax(logits_V[order])
    mass_before = np.cumsum(probs) - probs
    keep = np.zeros(len(logits_V), bool)
    keep[order] = (mass_before < p) | (np.arange(len(order)) == 0)
    return np.where(keep, logits_V, -np.inf)


def kv_cache_step(cache_k_SK: np.ndarray, cache_v_SK: np.ndarray, index: int,
                  q_K: np.ndarray, k_K: np.ndarray, v_K: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cache_k_SK, cache_v_SK = cache_k_SK.copy(), cache_v_SK.copy()
    cache_k_SK[index], cache_v_SK[index] = k_K, v_K
    scores_S = cache_k_SK @ q_K / math.sqrt(len(q_K))
    scores_S[index + 1:] = -np.inf  # Slots not written yet.
    return _softmax(scores_S) @ cache_v_SK, cache_k_SK, cache_v_SK


def bpe_merge(ids: list[int], new_id: int) -> tuple[tuple[int, int], list[int]]:
    pair = collections.Counter(zip(ids, ids[1:])).most_common(1)[0][0]
    merged, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return pair, merged


def bits_per_char(loss_nats_per_token: float, tokens: int, chars: int) -> float:
    # Nats per token × tokens per character = nats per character; ÷ ln 2 = bits.
    return loss_nats_per_token * tokens / chars / math.log(2)
