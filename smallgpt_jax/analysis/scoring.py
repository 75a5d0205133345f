"""Score any text with a trained model: how surprised was it by each token?

A token's surprise is -log2 p(token | the tokens before it), in bits: 0 for
a token the model was sure of, log2(V) for a uniform guess, more for a token
it thought unlikely. Averaged over characters it is the bits per character
of docs page 8; 2 ** (mean bits per token) is the perplexity.

Texts longer than the context are scored with a sliding window (see
`window_plan`): windows of `block_size` tokens, `stride` = block_size // 2
apart, each scoring only the tokens its predecessor did not reach, so every
token after the first window sees at least block_size - stride (at least
half a window) tokens of context. All windows have the same shape, so the
model is compiled once per batch shape.

The text is scored as if it followed a newline (the sampler's empty prompt
does the same): the model then has a context for the very first token.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax.model import GPT
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.words import PIECE

LN2 = math.log(2.0)


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


def run_windows(fn, params, model_config, ids_N: np.ndarray, stride: int | None,
                batch_size: int = 16) -> tuple[list[tuple[int, int, int]], list[np.ndarray]]:
    """Runs `fn(model_config, params, windows_BT)` over the sliding windows of
    `ids_N`, batched, and returns (plan, one output array per window).

    Every batch has the same shape [batch, block_size] (short windows and the
    last batch are padded; the model is causal, so padding after a token
    changes nothing before it): one compile per batch size, which is the
    smallest power of two >= the window count, at most `batch_size`.
    """
    T = model_config.block_size
    stride = T // 2 if stride is None else stride
    plan = window_plan(len(ids_N), T, stride)
    windows_WT = np.zeros((len(plan), T), np.int32)
    for w, (start, _, end) in enumerate(plan):
        windows_WT[w, :end - start] = ids_N[start:end]
    B = min(batch_size, 1 << (len(plan) - 1).bit_length())
    outputs = []
    for i in range(0, len(plan), B):
        batch_BT = np.zeros((B, T), np.int32)
        chunk = windows_WT[i:i + B]
        batch_BT[:len(chunk)] = chunk
        out = jax.device_get(fn(model_config, params, jnp.asarray(batch_BT)))
        outputs.extend(jax.tree.map(lambda a, j=j: a[j], out) for j in range(len(chunk)))
    return plan, outputs


@partial(jax.jit, static_argnums=(0,))
def _surprise(model_config, params, tokens_BT: jax.Array):
    """(bits of each next token [B, T-1], the model's most likely token [B, T-1])."""
    logits_BTV = GPT(model_config).apply({"params": params}, tokens_BT)
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1], axis=-1)
    targets_BT = tokens_BT[:, 1:]
    logp_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return -logp_BT / LN2, jnp.argmax(logp_BTV, axis=-1).astype(jnp.int32)


def token_byte_lengths(tokenizer, ids, text: str) -> np.ndarray:
    """How many UTF-8 bytes of `text` (which `ids` encode) each token stands for."""
    ids = np.asarray(ids, np.int64)
    if tokenizer.kind == "byte":
        return np.ones(len(ids), np.int64)
    if tokenizer.kind == "char":
        sizes = np.array([len(c.encode("utf-8")) for c in tokenizer.chars], np.int64)
        return sizes[ids]
    if tokenizer.kind == "word":  # One token per piece, an unknown word included.
        return np.array([len(p.encode("utf-8")) for p in PIECE.findall(text)], np.int64)
    return tokenizer.byte_lengths(ids)  # Byte-level BPE.


def _bytes(tokenizer, ids, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of each token [n], character index of each byte of `text`)."""
    nbytes = token_byte_lengths(tokenizer, ids, text)
    char_of_byte = np.repeat(np.arange(len(text)), [len(c.encode("utf-8")) for c in text])
    if nbytes.sum() != len(char_of_byte):
        raise RuntimeError("the tokens' bytes do not add up to the text's: a tokenizer mismatch")
    return nbytes, char_of_byte


def _starts(nbytes: np.ndarray, char_of_byte: np.ndarray) -> np.ndarray:
    """The character index of each token's first byte [n]."""
    return char_of_byte[np.concatenate([[0], np.cumsum(nbytes)[:-1]])].astype(np.int64)


def token_starts(tokenizer, ids, text: str) -> np.ndarray:
    """The index in `text` of each token's first character [n]."""
    return _starts(*_bytes(tokenizer, ids, text))


def line_index(text: str, offsets) -> np.ndarray:
    """The line (from 0; a line ends with its newline) of each character offset."""
    ends = np.cumsum([len(line) for line in split_lines(text)])
    return np.searchsorted(ends, np.asarray(offsets), side="right")


def newline_prefix(tokenizer) -> np.ndarray:
    """The tokens of a newline, read before the text so its first token has a
    context; empty for a vocabulary without one (the first token is then
    not scored)."""
    try:
        return np.asarray(tokenizer.encode("\n"), np.int32)
    except UserError:
        return np.zeros(0, np.int32)


def unknown_characters(tokenizer, text: str) -> list[str]:
    """The distinct characters of `text` the vocabulary cannot encode (only a
    character tokenizer has any)."""
    if tokenizer.kind != "char":
        return []
    known = set(tokenizer.chars)
    return sorted({c for c in text if c not in known})


def check_known(tokenizer, text: str) -> None:
    """Raises UserError naming the characters of `text` the vocabulary lacks."""
    missing = unknown_characters(tokenizer, text)
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20])
        raise UserError(f"{len(missing)} character(s) not in the model's vocabulary: {shown}; "
                        "pass --unknown=skip to score the rest and report these as unknown.")


@dataclasses.dataclass
class Scores:
    """Per-token and per-character surprise of one text.

    n tokens, C characters. `token_bits` is NaN for a token nothing was
    scored for (the first one, when the vocabulary has no newline). With
    unknown='skip', the characters in `unknown` were left out of what the
    model read; `char_bits` is NaN there and `char_unknown` True.
    """

    text: str
    token_ids: np.ndarray        # [n] int
    token_bits: np.ndarray       # [n] float, -log2 p(token | past)
    token_predicted: np.ndarray  # [n] int, the model's most likely token there
    token_start: np.ndarray      # [n] index in `text` of each token's first character
    char_bits: np.ndarray        # [C] float, each token's bits spread over its bytes
    char_unknown: np.ndarray     # [C] bool
    unknown: list[str]           # distinct characters skipped as unknown


def score_text(params, model_config, tokenizer, text: str, *, unknown: str = "error",
               stride: int | None = None, batch_size: int = 16) -> Scores:
    """Scores every token of `text` (see the module docstring).

    unknown='error' raises UserError naming the characters the vocabulary
    lacks; unknown='skip' leaves them out of what the model reads and marks
    them as unknown (they get no bits) in the result.
    """
    if not text:
        raise UserError("the text is empty; there is nothing to score.")
    missing = unknown_characters(tokenizer, text)
    if missing and unknown != "skip":
        check_known(tokenizer, text)  # Its error names them.
    skip = set(missing)
    char_unknown = np.array([c in skip for c in text], bool)
    known_at = np.flatnonzero(~char_unknown)  # Index in `text` of each character read.
    read = "".join(text[i] for i in known_at) if missing else text
    if not read:
        raise UserError("every character of the text is unknown to the model's vocabulary.")
    ids = np.asarray(tokenizer.encode(read), np.int32)
    prefix = newline_prefix(tokenizer)
    seq_N = np.concatenate([prefix, ids])
    bits_N = np.full(len(seq_N), np.nan)
    predicted_N = np.full(len(seq_N), -1, np.int32)
    if len(seq_N) > 1:
        plan, outs = run_windows(_surprise, params, model_config, seq_N, stride, batch_size)
        for (start, first, end), (bits_T, pred_T) in zip(plan, outs):
            bits_N[first:end] = bits_T[first - start - 1:end - start - 1]
            predicted_N[first:end] = pred_T[first - start - 1:end - start - 1]
    bits, predicted = bits_N[len(prefix):], predicted_N[len(prefix):]

    # Spread each token's bits evenly over its bytes, then sum bytes per character.
    nbytes, char_of_byte = _bytes(tokenizer, ids, read)
    byte_bits = np.repeat(np.nan_to_num(bits) / nbytes, nbytes)
    read_bits = np.bincount(char_of_byte, byte_bits, minlength=len(read))
    if np.isnan(bits[0]):  # An unscored first token leaves its characters unscored.
        read_bits[char_of_byte[:nbytes[0]]] = np.nan
    char_bits = np.full(len(text), np.nan)
    char_bits[known_at] = read_bits
    token_start = known_at[_starts(nbytes, char_of_byte)]
    return Scores(text, ids, bits, predicted, token_start, char_bits, char_unknown, missing)


def lines(scores: Scores) -> list[dict]:
    """One row per line of the text, its newline included (a line that ends
    too early is surprising at the newline). Fields: line_number (from 1),
    bits_per_char (over the line's scored characters), perplexity (2 ** mean
    bits per token), tokens (that start in the line), chars, bits, unknown
    (characters), max_bits and max_token (its most surprising token), text."""
    texts = split_lines(scores.text)
    ends = np.cumsum([len(t) for t in texts])
    token_line = line_index(scores.text, scores.token_start)
    rows = []
    for i, line in enumerate(texts):
        span = slice(ends[i] - len(line), ends[i])
        rows.append(_summary(scores, span, np.flatnonzero(token_line == i),
                             line_number=i + 1, text=line.rstrip("\r\n")))
    return rows


def split_lines(text: str) -> list[str]:
    """The lines of `text`, each with its newline. Only '\\n' ends a line
    (str.splitlines also splits at \\r, form feeds and other separators,
    which would number lines differently from an editor or grep -n)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def file_summary(scores: Scores) -> dict:
    """The `lines` fields, but for the whole text (no line_number or text)."""
    return _summary(scores, slice(None), np.arange(len(scores.token_ids)))


def _summary(scores: Scores, span: slice, tokens: np.ndarray, **extra) -> dict:
    bits_C = scores.char_bits[span]
    scored_C = ~np.isnan(bits_C)
    token_bits = scores.token_bits[tokens]
    scored_tokens = tokens[~np.isnan(token_bits)]
    row = dict(extra)
    row["bits_per_char"] = (float(bits_C[scored_C].mean()) if scored_C.any()
                            else float("nan"))
    mean_bits = scores.token_bits[scored_tokens].mean() if len(scored_tokens) else float("nan")
    row.update(perplexity=float(2 ** mean_bits), tokens=len(tokens), chars=len(bits_C),
               bits=float(bits_C[scored_C].sum()), unknown=int(scores.char_unknown[span].sum()))
    if len(scored_tokens):
        i = scored_tokens[np.argmax(scores.token_bits[scored_tokens])]
        row.update(max_bits=float(scores.token_bits[i]), max_token=token_text(scores, i))
    else:
        row.update(max_bits=float("nan"), max_token="")
    return row


def token_text(scores: Scores, i: int) -> str:
    """The characters token i starts (empty for the 2nd..last byte of a
    multi-byte character under a byte tokenizer)."""
    start = scores.token_start[i]
    end = scores.token_start[i + 1] if i + 1 < len(scores.token_start) else len(scores.text)
    # Unknown characters skipped between two tokens belong to neither.
    return "".join(c for c, u in zip(scores.text[start:end], scores.char_unknown[start:end])
                   if not u)
