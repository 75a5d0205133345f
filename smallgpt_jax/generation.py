"""Autoregressive generation: pick a next token, append it, repeat.

Two ways to run the model, which give the same logits (to float32 rounding):
- `use_cache="never"` (naive): re-run the whole context for every new token.
- `use_cache="always"`: one "prefill" pass over the prompt fills each layer's
  key/value cache; then each new token is one cheap step that attends to the
  cache instead of recomputing it.
- `use_cache="auto"` (the command line's default): the cache when it pays.
  The prefill and the decode step are two more programs to compile; for a
  short run, or one that is mostly past the context window (where, with
  exact sliding, every token is a window run anyway), compiling them costs
  more than they save. The first window run (the no-cache program) is
  timed, and the cached programs are used only if the tokens they would
  serve save more than compiling them costs (see `_decoding_pays`);
  otherwise "auto" runs what "never" runs.

Both keep the context in a fixed-size window of `block_size` tokens,
left-aligned and padded at the end. The causal mask already hides every
position after the last real token, so the padding changes no logit, and one
fixed shape means each step function compiles once per (batch, block_size),
not once per prompt length or per token. (The price: a no-cache step and a
prefill always run block_size positions, even for a short context.)

Past the context window the model sees only the last `block_size` tokens.
With absolute positions the cache cannot simply slide (every cached key was
computed at its old position), so by default (`slide_step=1`, exact) each
token past the window re-runs the whole slid window, as the naive path does.
`slide_step=N` is a faster approximation: a full window drops its N oldest
tokens at once, the cache is re-filled from the rest, and N-1 cheap cached
steps follow until the window is full again. Each token then sees between
block_size-N+1 and block_size tokens of context (instead of exactly
block_size), for one window run per N tokens. The no-cache path follows the
same rule for the same `slide_step`, so the two paths always agree.

Choosing each token is sampling.py's `sample_logits` (temperature, top-k,
top-p). `decode` is the loop itself: it runs the step programs and yields
each token while it is still on the device, and reads no clock. `generate`
wraps it: it checks the options, decides "auto" by timing one window run,
brings the tokens to the host and streams them. Text in and text out (a
prompt's ids, streamed text, `sample_texts`) is text_generation.py.
"""

from __future__ import annotations

import collections
import time
from functools import partial
from typing import Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax import parallel
from smallgpt_jax.model import GPT
from smallgpt_jax.sampling import check_options, sample_logits
from smallgpt_jax.system.errors import UserError

Array = jax.Array
_IN_FLIGHT = 16  # Generation steps queued on the device before their tokens are read.
USE_CACHE = ("always", "never", "auto")  # generate's use_cache: see the module docstring.


# ---------------------------------------------------------------- running the model

@flax.struct.dataclass
class Sampling:
    """How each next token is chosen. Device scalars: the same compiled steps
    serve every value, and they go to the device once (the first local
    device, as generate places everything), not with every token."""

    key: Array  # Token i is drawn with fold_in(key, i).
    temperature: Array  # float32
    top_k: Array  # int32; 0: no top-k filter.
    top_p: Array  # float32

    @classmethod
    def make(cls, key: Array, temperature: float, top_k: int | None, top_p: float,
             vocab_size: int) -> "Sampling":
        # A top_k of the vocabulary's size or more keeps every token (and may not fit int32).
        return cls(key, *parallel.on_first_device((
            np.float32(temperature), np.int32(min(top_k or 0, vocab_size)), np.float32(top_p))))


@flax.struct.dataclass
class Window:
    """The context the next token follows: `tokens_BW` holds `n` real tokens,
    left-aligned (padding after them); the `drop` oldest leave as the new
    one goes in (a full window slides); `i` counts the new tokens."""

    tokens_BW: Array
    n: Array | int
    drop: Array | int
    i: Array | int


def init_cache(model_config, batch_size: int):
    """An empty key/value cache for `batch_size` sequences (all zeros)."""
    model = GPT(model_config, decode=True)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((batch_size, 1), jnp.int32)))["cache"]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _last_logits(logits_BWV: Array, n: Array) -> Array:
    """Logits at position n-1: the prediction after the window's last real token."""
    return jax.lax.dynamic_index_in_dim(logits_BWV, n - 1, axis=1, keepdims=False)


def _push(window_BW: Array, n: Array, drop: Array, token_B: Array) -> Array:
    """Drops the `drop` oldest of the window's n tokens, then writes `token_B` after the rest."""
    window_BW = jnp.roll(window_BW, -drop, axis=1)
    return jax.lax.dynamic_update_slice(window_BW, token_B[:, None].astype(window_BW.dtype),
                                        (0, n - drop))


# Each step function below samples the token after the window's n tokens and
# returns (that token, its logits, the window with it pushed in).

def _choose_and_push(logits_BV: Array, w: Window, s: Sampling) -> tuple[Array, Array, Array]:
    next_B = sample_logits(logits_BV, jax.random.fold_in(s.key, w.i), s.temperature,
                           s.top_k, s.top_p)
    return next_B, logits_BV, _push(w.tokens_BW, w.n, w.drop, next_B)


@partial(jax.jit, static_argnums=(0,))
def _full_step(model_config, params, w: Window, s: Sampling):
    """The naive way: run the whole window, sample from its last real position."""
    logits_BV = _last_logits(GPT(model_config).apply({"params": params}, w.tokens_BW), w.n)
    return _choose_and_push(logits_BV, w, s)


@partial(jax.jit, static_argnums=(0,))
def _prefill(model_config, params, w: Window, s: Sampling):
    """Fills a fresh cache from the window's n tokens, then samples as above.

    The padding after the n real tokens is run too (one shape for every n):
    its keys/values land in cache slots >= n, which no query attends to
    before a real token overwrites them. The cache index is then set to n, so
    the next decode step writes at position n.
    """
    cache = init_cache(model_config, w.tokens_BW.shape[0])
    logits_BWV, vars_ = GPT(model_config, decode=True).apply(
        {"params": params, "cache": cache}, w.tokens_BW, mutable=["cache"])
    cache = {**vars_["cache"], "index": jnp.asarray(w.n, jnp.int32)}
    return *_choose_and_push(_last_logits(logits_BWV, w.n), w, s), cache


@partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _decode_step(model_config, params, cache, w: Window, s: Sampling):
    """One new position: the cache holds the first n-1 tokens of the window;
    the n-th attends to them, is appended to the cache, and predicts the next.

    The old cache is donated: its buffers are updated in place, not copied.
    """
    token_B = w.tokens_BW[:, w.n - 1]
    logits_B1V, vars_ = GPT(model_config, decode=True).apply(
        {"params": params, "cache": cache}, token_B[:, None], mutable=["cache"])
    return *_choose_and_push(logits_B1V[:, 0], w, s), vars_["cache"]


def decode(params, model_config, tokens_BW: Array, n: int, max_new_tokens: int,
           sampling: Sampling, *, cached: bool, slide_step: int = 1,
           first: tuple | None = None) -> Iterator[tuple[Array, Array]]:
    """The decode loop: yields each new token's (ids [B], logits [B, V]), on
    the device, after the window `tokens_BW` of `n` real tokens. `cached`:
    with the KV cache (a prefill at each window run, then decode steps) or
    without (a window run per token). `first`: the first step's output when
    it was already run (by `generate`'s timing), without the cache."""
    W, cache = model_config.block_size, None  # None: (re)fill it at the next step.
    for i in range(max_new_tokens):
        # A full window slides as the new token goes in; the cached keys then
        # sit at the wrong positions, so the next step re-fills the cache.
        drop = slide_step if n == W else 0
        w = Window(tokens_BW, n, drop, i)
        if i == 0 and first is not None and not cached:
            next_B, logits_BV, tokens_BW = first
        elif not cached:
            next_B, logits_BV, tokens_BW = _full_step(model_config, params, w, sampling)
        elif cache is None:
            # A window run. The cached path always runs it as a prefill (even
            # when the cache is thrown away right after): one program fewer to
            # compile than with a separate no-cache step.
            next_B, logits_BV, tokens_BW, cache = _prefill(model_config, params, w, sampling)
        else:
            next_B, logits_BV, tokens_BW, cache = _decode_step(model_config, params, cache, w,
                                                               sampling)
        if drop:
            cache = None
        n = n - drop + 1
        yield next_B, logits_BV


MIN_COMPILE_S = 1.0  # About the least a decode step takes to compile on a CPU.


def _cached_steps(tokens: int, n: int, W: int, slide_step: int) -> int:
    """Of `tokens` new tokens, the first drawn by a window run on n tokens,
    how many would be cheap decode steps (decode's rule, replayed)."""
    count, cached = 0, False
    for _ in range(tokens):
        drop = slide_step if n == W else 0
        count += cached
        cached = not drop  # A slid window invalidates the cache.
        n = n - drop + 1
    return count


def _decoding_pays(model_config, params, w: Window, s: Sampling, tokens: int,
                   slide_step: int) -> tuple[bool, tuple | None]:
    """Will compiling the cached programs pay for themselves? Measured:
    compiles and runs the window program of the no-cache path, then runs it
    again; the prefill and the decode step are taken to cost as much to
    compile each (at least MIN_COMPILE_S), and each cached token to save
    about one window run. Returns the answer and the window run's output
    (None if it did not run), which the no-cache path uses for this token."""
    steps = _cached_steps(tokens, w.n, model_config.block_size, slide_step)
    if steps == 0:
        return False, None
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        out = jax.block_until_ready(_full_step(model_config, params, w, s))
        timings.append(time.perf_counter() - start)
    compile_s, run_s = max(timings[0] - timings[1], 0.0), timings[1]
    # The window program may have come from the compilation cache while the
    # cached ones are not there: count at least a cold compile of a small program.
    return steps * run_s > 2 * max(compile_s, MIN_COMPILE_S), out


def generate(params, model_config, prompt_ids: np.ndarray, max_new_tokens: int,
             key: Array, *, num_samples: int = 1, temperature: float = 1.0,
             top_k: int | None = None, top_p: float = 1.0, use_cache: str = "always",
             slide_step: int = 1,
             on_token: Callable[[np.ndarray], None] | None = None,
             return_logits: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Continues `prompt_ids` (1-D, non-empty) in `num_samples` rows at once.

    Returns the new tokens, int32 [num_samples, max_new_tokens] (and, with
    `return_logits`, the float32 logits each one was drawn from,
    [num_samples, max_new_tokens, vocab]). top_k None or 0: no top-k filter.
    `on_token`, if given, gets each new column of ids as soon as it exists
    (for streaming). The same key gives the same tokens. `use_cache`: one of
    USE_CACHE, and `slide_step` (1 is exact): see the module docstring.
    """
    W = model_config.block_size
    if not isinstance(use_cache, str) or use_cache not in USE_CACHE:
        raise UserError(f"use_cache={use_cache!r} is not one of {', '.join(USE_CACHE)}.")
    check_options(max_new_tokens=max_new_tokens, num_samples=num_samples,
                  temperature=temperature, top_k=top_k or None, top_p=top_p,
                  slide_step=slide_step, block_size=W)
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    if prompt.size == 0:
        raise UserError("the prompt is empty; give at least one token.")
    prompt = prompt[-W:]  # The model only ever sees the last W tokens.
    n = prompt.size  # Real tokens in the window; the rest is padding.
    # Everything the steps take is committed to one device, the one
    # parallel.unreplicate leaves a training run's copy on: a step's outputs
    # (the window) are then placed as its inputs were, so the program of a
    # step that takes them back is not compiled a second time, and a run's
    # warm-up compiles for the run's own placement (training/warmup.py).
    tokens_BW, key, params = parallel.on_first_device(
        (np.tile(np.pad(prompt, (0, W - n)), (num_samples, 1)), key, params))
    sampling = Sampling.make(key, temperature, top_k, top_p, model_config.vocab_size)
    # Each step's tokens go to the host a few steps later (by then the device
    # has computed them, so the loop does not wait), into arrays allocated
    # once: time and memory stay linear in max_new_tokens.
    tokens_BN = np.zeros((num_samples, max_new_tokens), np.int32)
    logits_BNV = (np.zeros((num_samples, max_new_tokens, model_config.vocab_size), np.float32)
                  if return_logits else None)
    in_flight = collections.deque()  # (i, next_B, logits_BV) still on the device.
    # (Allocated first: sizes that cannot fit fail here, before any program runs.)
    cached, first = use_cache == "always", None
    if use_cache == "auto" and max_new_tokens:  # Compile and time the window run first.
        cached, first = _decoding_pays(model_config, params, Window(
            tokens_BW, n, slide_step if n == W else 0, 0), sampling, max_new_tokens, slide_step)

    def to_host(i, next_B, logits_BV):
        tokens_BN[:, i] = np.asarray(next_B)
        if return_logits:
            logits_BNV[:, i] = np.asarray(logits_BV)

    steps = decode(params, model_config, tokens_BW, n, max_new_tokens, sampling,
                   cached=cached, slide_step=slide_step, first=first)
    for i, (next_B, logits_BV) in enumerate(steps):
        in_flight.append((i, next_B, logits_BV if return_logits else None))
        if len(in_flight) > _IN_FLIGHT:
            to_host(*in_flight.popleft())
        if on_token is not None:
            on_token(np.asarray(next_B))  # Waits for the device: only when streaming.
    while in_flight:
        to_host(*in_flight.popleft())
    return (tokens_BN, logits_BNV) if return_logits else tokens_BN
