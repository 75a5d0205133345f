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
    Checked against a one-head smallgpt_jax.model.CausalSelfAttention.
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
