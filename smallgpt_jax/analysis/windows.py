"""Sliding windows over a token sequence longer than the model's context.

Windows of `block_size` tokens, `stride` apart (scoring uses block_size // 2),
each owning the positions its predecessor did not reach: every token after
the first window is computed with at least block_size - stride tokens of
context, and every position exactly once (`window_plan`). The sequence can
arrive in pieces and is never held whole (`stream_windows`): scoring a file
of any size takes the memory of one batch of windows. scoring.py and
representations.py run their model functions over these windows.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax.system.errors import UserError


def window_plan(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, first, end) per window for a sequence of `n` tokens.

    Window w reads tokens [start, start + block_size) and owns positions
    [first, end): the first window owns 1..block_size-1 (position 0 has no
    past), each later one the positions its predecessor did not reach. The
    last window is moved back to end exactly at `n` (more context, not less).
    """
    if not 1 <= stride <= block_size - 1:
        raise UserError(f"stride={stride} must be between 1 and block_size-1={block_size - 1}.")
    plan = [(0, 1, min(block_size, n))]
    while plan[-1][2] < n:
        start = min(plan[-1][0] + stride, n - block_size)
        plan.append((start, plan[-1][2], start + block_size))
    return plan


def stream_windows(fn, params, model_config, pieces: Iterable[np.ndarray],
                   stride: int | None, batch_size: int = 16) -> Iterator[tuple]:
    """Runs `fn(model_config, params, windows_BT)` over the sliding windows of
    the token sequence that `pieces` (id arrays) make up, batched; yields
    (start, first, end, that window's output) in the order of `window_plan`.

    The sequence is read as it comes, never whole: a window is run once its
    tokens have arrived, and it is the plan's window, since only the last
    (moved back to end at the sequence's end) depends on the length. Every
    batch has the same shape [batch, block_size] (short windows and the last
    batch are padded; the model is causal, so padding after a token changes
    nothing before it): one compile per batch size, which is the smallest
    power of two >= the window count, at most `batch_size`.
    """
    T = model_config.block_size
    stride = T // 2 if stride is None else stride
    window_plan(T, T, stride)  # Checks the stride.
    ready, B = [], None  # Windows not run yet: ((start, first, end), tokens).
    for window in _windows(pieces, T, stride):
        ready.append(window)
        if len(ready) == batch_size:
            B = batch_size
            yield from _run_batch(fn, params, model_config, ready, B)
            ready = []
    if ready:
        B = B or min(batch_size, 1 << (len(ready) - 1).bit_length())
        yield from _run_batch(fn, params, model_config, ready, B)


def _windows(pieces: Iterable[np.ndarray], T: int, stride: int):
    """((start, first, end), tokens) of each window of `window_plan`, as the
    pieces arrive; only the tokens from the last window's start on are kept."""
    buf, base, n, last = np.zeros(0, np.int32), 0, 0, None  # buf[0] is token `base`.
    for piece in pieces:
        buf, n = np.concatenate([buf, np.asarray(piece, np.int32)]), n + len(piece)
        while True:
            start, first = (0, 1) if last is None else (last[0] + stride, last[2])
            if start + T > n:  # Not there yet, or the (moved) last window.
                break
            last = (start, first, start + T)
            yield last, buf[start - base:start - base + T].copy()
            buf, base = buf[start - base:], start
    if last is None and n:
        last = (0, 1, n)  # Shorter than a window.
        yield last, buf[:n].copy()
    while last is not None and last[2] < n:
        start = min(last[0] + stride, n - T)
        last = (start, last[2], start + T)
        yield last, buf[start - base:start - base + T].copy()


def _run_batch(fn, params, model_config, windows: list, B: int):
    batch_BT = np.zeros((B, model_config.block_size), np.int32)
    for j, (_, tokens) in enumerate(windows):
        batch_BT[j, :len(tokens)] = tokens
    out = jax.device_get(fn(model_config, params, jnp.asarray(batch_BT)))
    for j, (window, _) in enumerate(windows):
        yield (*window, jax.tree.map(lambda a: a[j], out))


def run_windows(fn, params, model_config, ids_N: np.ndarray, stride: int | None,
                batch_size: int = 16) -> tuple[list[tuple[int, int, int]], list[np.ndarray]]:
    """`stream_windows` over `ids_N`, whole: (plan, one output per window)."""
    done = list(stream_windows(fn, params, model_config, [ids_N], stride, batch_size))
    return [w[:3] for w in done], [w[3] for w in done]
