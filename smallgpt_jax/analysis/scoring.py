"""Score any text with a trained model: how surprised was it by each token?

A token's surprise is -log2 p(token | the tokens before it), in bits: 0 for
a token the model was sure of, log2(V) for a uniform guess, more for a token
it thought unlikely. Averaged over characters it is the bits per character
of docs page 8; 2 ** (mean bits per token) is the perplexity.

Texts longer than the context are scored with a sliding window (windows.py):
windows of `block_size` tokens, `stride` = block_size // 2 apart, each
scoring only the tokens its predecessor did not reach, so every token after
the first window sees at least block_size - stride (at least half a window)
tokens of context. All windows have the same shape, so the model is compiled
once per batch shape. A text can arrive in pieces (`score_pieces`): a file
of any size is scored in the memory of a few pieces.

The text is scored as if it followed a newline (the sampler's empty prompt
does the same): the model then has a context for the very first token.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from functools import partial
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from smallgpt_jax.analysis.windows import run_windows, stream_windows, window_plan  # noqa: F401
from smallgpt_jax.model import GPT
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.words import PIECE

LN2 = math.log(2.0)


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
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    utf8_bytes = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    char_of_byte = np.repeat(np.arange(len(text)), utf8_bytes)
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


def unknown_characters(tokenizer, text: str | Iterable[str]) -> list[str]:
    """The distinct characters of `text` (or of a set of characters) the
    vocabulary cannot encode (only a character tokenizer has any)."""
    if tokenizer.kind != "char":
        return []
    return sorted(set(text) - set(tokenizer.chars))


def check_known(tokenizer, text: str | Iterable[str]) -> None:
    """Raises UserError naming the characters of `text` the vocabulary lacks."""
    missing = unknown_characters(tokenizer, text)
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20])
        raise UserError(f"{len(missing)} character(s) not in the model's vocabulary: {shown}; "
                        "pass --unknown=skip to score the rest and report these as unknown.")


@dataclasses.dataclass
class Scores:
    """Per-token and per-character surprise of one text (or one piece of it:
    see `score_pieces`; offsets are then within the piece).

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
    if len(missing) == len(set(text)):
        raise UserError("every character of the text is unknown to the model's vocabulary.")
    [scores] = score_pieces(params, model_config, tokenizer, [text], missing, stride, batch_size)
    return scores


def score_pieces(params, model_config, tokenizer, pieces: Iterable[str],
                 skip: Iterable[str] = (), stride: int | None = None,
                 batch_size: int = 16) -> Iterator[Scores]:
    """Scores a text that arrives in pieces: one Scores per piece, in order,
    each as soon as its tokens are scored; memory holds a few pieces and a
    batch of windows, never the whole text.

    The characters in `skip` are left out of what the model reads. Pieces
    must be cut where the tokenizer splits anyway (corpus.cut does): the
    tokens, windows and numbers are then those of the text scored whole.
    """
    skip = set(skip)
    prefix = newline_prefix(tokenizer)
    waiting: collections.deque[_Piece] = collections.deque()  # Not all scored yet.

    def ids():
        yield prefix
        at = len(prefix)  # Sequence position of the next piece's first token.
        for text in pieces:
            waiting.append(_Piece(tokenizer, text, skip, at))
            at += len(waiting[-1].ids)
            yield waiting[-1].ids

    done = 1  # Positions before this are final (position 0 has no past: never scored).
    for start, first, end, (bits_T, pred_T) in stream_windows(
            _surprise, params, model_config, ids(), stride, batch_size):
        for piece in waiting:  # A window's owned positions fall in one piece or a few.
            lo, hi = max(first, piece.at), min(end, piece.at + len(piece.ids))
            if lo >= hi:
                continue
            piece.bits[lo - piece.at:hi - piece.at] = bits_T[lo - start - 1:hi - start - 1]
            piece.predicted[lo - piece.at:hi - piece.at] = pred_T[lo - start - 1:hi - start - 1]
        done = end
        while waiting and waiting[0].at + len(waiting[0].ids) <= done:
            yield waiting.popleft().scores(tokenizer)
    while waiting:  # The end: every position is final.
        yield waiting.popleft().scores(tokenizer)


class _Piece:
    """A piece of text, the tokens it was read as and, as windows are run, their bits."""

    def __init__(self, tokenizer, text: str, skip: set[str], at: int):
        self.text, self.at = text, at
        missing = skip & set(text)
        self.unknown = sorted(missing)
        self.char_unknown = np.array([c in missing for c in text], bool) if missing else \
            np.zeros(len(text), bool)
        self.known_at = np.flatnonzero(~self.char_unknown)  # Index of each character read.
        self.read = "".join(text[i] for i in self.known_at) if missing else text
        self.ids = np.asarray(tokenizer.encode(self.read), np.int32)
        self.bits = np.full(len(self.ids), np.nan)
        self.predicted = np.full(len(self.ids), -1, np.int32)

    def scores(self, tokenizer) -> Scores:
        # Spread each token's bits evenly over its bytes, then sum bytes per character.
        bits, read = self.bits, self.read
        nbytes, char_of_byte = _bytes(tokenizer, self.ids, read)
        byte_bits = np.repeat(np.nan_to_num(bits) / nbytes, nbytes)
        read_bits = np.bincount(char_of_byte, byte_bits, minlength=len(read))
        if len(bits) and np.isnan(bits[0]):  # An unscored first token: its characters too.
            read_bits[char_of_byte[:nbytes[0]]] = np.nan
        char_bits = np.full(len(self.text), np.nan)
        char_bits[self.known_at] = read_bits
        token_start = self.known_at[_starts(nbytes, char_of_byte)] if len(bits) else \
            np.zeros(0, np.int64)
        return Scores(self.text, self.ids, bits, self.predicted, token_start, char_bits,
                      self.char_unknown, self.unknown)


@dataclasses.dataclass
class Tally:
    """What a row of `lines` or `file_summary` adds up, kept as sums, so
    that the parts of a line (or text) scored in different pieces add up."""

    chars: int = 0
    unknown: int = 0
    scored_chars: int = 0
    bits: float = 0.0         # Over the scored characters.
    tokens: int = 0           # That start here.
    scored_tokens: int = 0
    token_bits: float = 0.0   # Over the scored tokens.
    max_bits: float = math.nan
    max_token: str = ""

    @classmethod
    def of(cls, scores: Scores, span: slice, tokens: np.ndarray) -> "Tally":
        """Of characters `span` and `tokens` (indices) of `scores`."""
        bits_C, bits_K = scores.char_bits[span], scores.token_bits[tokens]
        scored_C, scored_K = bits_C[~np.isnan(bits_C)], tokens[~np.isnan(bits_K)]
        t = cls(len(bits_C), int(scores.char_unknown[span].sum()), len(scored_C),
                scored_C.sum(), len(tokens), len(scored_K), scores.token_bits[scored_K].sum())
        if len(scored_K):
            i = scored_K[np.argmax(scores.token_bits[scored_K])]
            t.max_bits, t.max_token = float(scores.token_bits[i]), token_text(scores, i)
        return t

    def add(self, other: "Tally") -> None:
        """Adds `other`, which follows this part in the text."""
        if other.max_bits > self.max_bits or math.isnan(self.max_bits):  # First max wins.
            self.max_bits, self.max_token = other.max_bits, other.max_token
        self.chars += other.chars
        self.unknown += other.unknown
        self.scored_chars += other.scored_chars
        self.bits += other.bits
        self.tokens += other.tokens
        self.scored_tokens += other.scored_tokens
        self.token_bits += other.token_bits

    def row(self, **extra) -> dict:
        """The fields `lines` describes (extra ones first)."""
        mean_bits = (np.float64(self.token_bits) / self.scored_tokens if self.scored_tokens
                     else np.float64("nan"))
        return dict(extra, bits_per_char=float(np.float64(self.bits) / self.scored_chars)
                    if self.scored_chars else float("nan"),
                    perplexity=float(2 ** mean_bits), tokens=self.tokens, chars=self.chars,
                    bits=float(self.bits), unknown=self.unknown,
                    max_bits=self.max_bits, max_token=self.max_token)


def lines(scores: Scores) -> list[dict]:
    """One row per line of the text, its newline included (a line that ends
    too early is surprising at the newline). Fields: line_number (from 1),
    bits_per_char (over the line's scored characters), perplexity (2 ** mean
    bits per token), tokens (that start in the line), chars, bits, unknown
    (characters), max_bits and max_token (its most surprising token), text."""
    return [tally.row(line_number=i + 1, text=text.rstrip("\r\n"))
            for i, (text, tally) in enumerate(line_tallies(scores))]


def line_tallies(scores: Scores) -> list[tuple[str, Tally]]:
    """(text, Tally) of each line of `scores.text` (the last one may lack its newline)."""
    texts = split_lines(scores.text)
    ends = np.cumsum([len(t) for t in texts])
    token_line = line_index(scores.text, scores.token_start)
    firsts = np.searchsorted(token_line, np.arange(len(texts) + 1))  # Tokens are in text order.
    return [(line, Tally.of(scores, slice(ends[i] - len(line), ends[i]),
                            np.arange(firsts[i], firsts[i + 1])))
            for i, line in enumerate(texts)]


def split_lines(text: str) -> list[str]:
    """The lines of `text`, each with its newline. Only '\\n' ends a line
    (str.splitlines also splits at \\r, form feeds and other separators,
    which would number lines differently from an editor or grep -n)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def file_summary(scores: Scores) -> dict:
    """The `lines` fields, but for the whole text (no line_number or text)."""
    return Tally.of(scores, slice(None), np.arange(len(scores.token_ids))).row()


def token_text(scores: Scores, i: int) -> str:
    """The characters token i starts (empty for the 2nd..last byte of a
    multi-byte character under a byte tokenizer)."""
    start = scores.token_start[i]
    end = scores.token_start[i + 1] if i + 1 < len(scores.token_start) else len(scores.text)
    # Unknown characters skipped between two tokens belong to neither.
    return "".join(c for c, u in zip(scores.text[start:end], scores.char_unknown[start:end])
                   if not u)
