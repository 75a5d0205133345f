"""Scoring a file of any size, for the `score` command: never the whole text in memory.

A first pass (`survey`) reads the file once, fast, to refuse a binary or
non-UTF-8 file and to find the characters the vocabulary lacks before the
model runs. The scoring pass reads it again in pieces (`pieces`: cut where
the tokenizer splits anyway, corpus.cut) and scores them one by one
(scoring.score_pieces); `Rows` turns each scored piece into the rows it
finishes (a line can cross pieces), which go to the CSV file, the `Top`
rows or the HTML `Page` at once. Memory holds a few pieces, a batch of
windows, the --top rows and the line being read (a line is one row, its
text included), whatever the file's size.
"""

from __future__ import annotations

import codecs
import dataclasses
import heapq
import html
import math
import os
import re
import tempfile
from typing import Iterator

import numpy as np

from smallgpt_jax.analysis.scoring import Scores, Tally, line_index, line_tallies, token_text
from smallgpt_jax.store import corpus
from smallgpt_jax.system.errors import UserError, atomic_file

READ_BYTES = 1 << 20  # Bytes per read.
PIECE_CHARS = 1 << 16  # Characters per scored piece (up to twice as many).


@dataclasses.dataclass
class Survey:
    """The file as the first pass found it."""

    size: int  # Bytes: the scoring pass reads these, even if the file grows meanwhile.
    mtime_ns: int
    chars: int
    distinct: set[str]  # Its distinct characters.

    def changed(self, path: str) -> bool:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns)


def survey(path: str) -> Survey:
    """Reads the file once; a missing, empty, binary or non-UTF-8 file is a UserError."""
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not a file"
        raise UserError(f"--input={path} is {what}; pass a text file.")
    st = os.stat(path)
    if not st.st_size:
        raise UserError(f"--input={path} is empty; there is nothing to score.")
    chars, distinct = 0, set()
    for text in read(path, st.st_size):
        if "\0" in text:
            raise UserError(f"--input={path} looks binary (it holds NUL bytes); pass a text file.")
        chars += len(text)
        distinct.update(text)
    return Survey(st.st_size, st.st_mtime_ns, chars, distinct)


def read(path: str, size: int) -> Iterator[str]:
    """The text of the file's first `size` bytes, READ_BYTES at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pos = 0  # Bytes read.
    try:
        with open(path, "rb") as f:
            while pos < size:
                raw = f.read(min(READ_BYTES, size - pos))
                if not raw:
                    raise UserError(f"--input={path} became shorter while it was read; score "
                                    "it again once nothing writes it.")
                held = len(decoder.getstate()[0])  # The start of a character cut by a read.
                try:
                    text = decoder.decode(raw, final=pos + len(raw) == size)
                except UnicodeDecodeError as e:
                    data = e.object
                    raise UserError(f"--input={path} is not UTF-8 text (byte "
                                    f"{pos - held + e.start} is {data[e.start]:#04x}); pass a "
                                    "text file, or convert it first (iconv -t UTF-8).")
                pos += len(raw)
                if text:
                    yield text
    except OSError as e:
        raise UserError(f"cannot read --input={path} ({e.strerror or e}).")


def pieces(path: str, size: int) -> Iterator[str]:
    """The text in pieces of PIECE_CHARS to twice that, cut where the tokenizers split."""
    return corpus.cut(read(path, size), PIECE_CHARS)


def token_rows(scores: Scores, tokenizer, at: tuple[int, int, int] = (0, 0, 0)) -> list[dict]:
    """One row per token, and one per character skipped as unknown, in text
    order. `at`: the tokens, characters and lines of the text before `scores`."""
    tokens, chars, lines = at
    line_of = (line_index(scores.text, range(len(scores.text))) + lines + 1).tolist()  # From 1.
    rows = [dict(position=tokens + i, line_number=line_of[s], char_offset=chars + int(s),
                 token=token_text(scores, i), bits=float(scores.token_bits[i]),
                 predicted=tokenizer.decode([p]) if p >= 0 else "", unknown=0)
            for i, (s, p) in enumerate(zip(scores.token_start, scores.token_predicted))]
    rows += [dict(position="", line_number=line_of[c], char_offset=chars + int(c),
                  token=scores.text[c], bits=float("nan"), predicted="", unknown=1)
             for c in scores.char_unknown.nonzero()[0]]
    return sorted(rows, key=lambda r: r["char_offset"])


class Rows:
    """The rows (per token, line or file) of a text scored in pieces, each
    handed out by `add` as soon as it is complete; `total` is the whole
    text's Tally so far."""

    def __init__(self, per: str, tokenizer):
        self.per, self.tokenizer = per, tokenizer
        self.total = Tally()
        self.at = (0, 0, 0)  # Tokens, characters and lines before the next piece.
        self.line, self.line_text = Tally(), []  # The line not finished yet...
        self.line_number = 1  # ...and its number.

    def add(self, scores: Scores) -> list[dict]:
        self.total.add(Tally.of(scores, slice(None), np.arange(len(scores.token_ids))))
        rows = []
        if self.per == "token":
            rows = token_rows(scores, self.tokenizer, self.at)
        elif self.per == "line":
            for text, tally in line_tallies(scores):
                self.line.add(tally)
                self.line_text.append(text)
                if text.endswith("\n"):
                    rows.append(self._line_row())
        tokens, chars, lines = self.at
        self.at = (tokens + len(scores.token_ids), chars + len(scores.text),
                   lines + scores.text.count("\n"))
        return rows

    def finish(self, **file_fields) -> list[dict]:
        """The last rows: a last line without a newline, or the file's row."""
        if self.per == "line":
            return [self._line_row()] if self.line_text else []
        return [self.total.row(**file_fields)] if self.per == "file" else []

    def _line_row(self) -> dict:
        row = self.line.row(line_number=self.line_number,
                            text="".join(self.line_text).rstrip("\r\n"))
        self.line, self.line_text, self.line_number = Tally(), [], self.line_number + 1
        return row


class Top:
    """The `n` rows with the highest `key` (rows where it is NaN left out),
    the first in text order among equals: what sorting them all would give."""

    def __init__(self, n: int, key: str):
        self.n, self.key = n, key
        self.heap: list = []  # (value, -arrival, row): the smallest kept row first.
        self.count = 0  # Rows with a value.

    def add(self, row: dict) -> None:
        value = row[self.key]
        if math.isnan(value):
            return
        self.count += 1
        item = (value, -self.count, row)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, item)
        elif item[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, item)

    def rows(self) -> list[dict]:
        return [row for _, _, row in sorted(self.heap, key=lambda item: (-item[0], -item[1]))]


class Page:
    """The text as an HTML page, written as it is scored: each character's
    background is red in proportion to its bits (full red at the text's 99th
    percentile or more); a hover shows the token's bits. Unknown characters
    are grey and struck.

    The scale is known only at the end: each character's colour waits in a
    temporary file as a marker holding its bits (NUL-delimited: the text has
    no NUL), replaced by the colour when the page is written out; the bits
    also go to a file of their own, whose percentile is found keeping only
    the largest 1% in memory."""

    def __init__(self, folder: str):
        self.body = tempfile.TemporaryFile("w+", encoding="utf-8", dir=folder)
        self.bits = tempfile.TemporaryFile("w+b", dir=folder)
        self.scored = 0  # Characters with bits.

    def add(self, scores: Scores) -> None:
        tip = dict(zip(scores.token_start.tolist(), scores.token_bits.tolist()))  # Last wins.
        parts = []
        for c, ch in enumerate(scores.text):
            if scores.char_unknown[c]:
                parts.append('<span class="u" title="unknown to the vocabulary">'
                             f'{html.escape(ch)}</span>')
                continue
            bits = float(scores.char_bits[c])
            alpha = "0.00" if math.isnan(bits) else f"\0{bits!r}\0"
            shown = "\u21b5\n" if ch == "\n" else html.escape(ch)  # A visible, shadable newline.
            parts.append(f'<span style="background:rgba(220,30,30,{alpha})" '
                         f'title="{html.escape(repr(ch))}: {tip.get(c, bits):.2f} bits">'
                         f'{shown}</span>')
        self.body.write("".join(parts))
        known = scores.char_bits[~np.isnan(scores.char_bits)]
        self.bits.write(known.tobytes())
        self.scored += len(known)

    def write(self, path: str, title: str) -> None:
        top = max(1.0, self._percentile_99()) if self.scored else 1.0
        color = lambda m: f"{min(1.0, float(m.group(1)) / top):.2f}"
        with atomic_file(path) as f:
            f.write(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
                    "<style>body{font:14px/1.5 monospace;margin:1em}pre{white-space:pre-wrap}"
                    ".u{background:#bbb;text-decoration:line-through}</style>"
                    f"<h3>{html.escape(title)}</h3><p>Red = surprise: -log2 p(character | what "
                    f"came before); full red at {top:.1f} bits or more. Hover for the bits. "
                    "Grey, struck: not in the vocabulary.</p><pre>")
            self.body.seek(0)
            carry = ""
            while block := self.body.read(READ_BYTES):
                text = carry + block
                cut = text.rfind("\0") if text.count("\0") % 2 else len(text)  # A whole marker.
                f.write(MARKER.sub(color, text[:cut]))
                carry = text[cut:]
            f.write(carry + "</pre>")

    def _percentile_99(self) -> float:
        """np.percentile(bits, 99) of every scored character (its 'linear' method)."""
        k = self.scored
        at = (k - 1) * 0.99  # Where the 99th percentile falls among the sorted values.
        low = math.floor(at)
        keep = np.zeros(0)  # The k - low largest values seen so far.
        self.bits.seek(0)
        while block := self.bits.read(8 * READ_BYTES):
            keep = np.concatenate([keep, np.frombuffer(block, np.float64)])
            if len(keep) > k - low:
                keep = np.partition(keep, len(keep) - (k - low))[len(keep) - (k - low):]
        keep.sort()
        a, b, t = keep[0], keep[min(1, len(keep) - 1)], at - low
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)  # NumPy's lerp.

    def close(self) -> None:
        self.body.close()
        self.bits.close()


MARKER = re.compile("\0([^\0]*)\0")
