"""A corpus read as a stream: never the whole text in memory.

The text a run trains on is its files joined by a separator (a blank line,
or the end-of-text mark), split by characters: the first
int(characters * train_fraction) train, the rest validate (the rule of
`data.split_text` on the joined text). Here that text is produced in
pieces: files are read READ_BYTES at a time, decoded as UTF-8 (a bad byte is
an error naming the file and its offset, found as soon as it is read), and
cut at the split point. `store/store.py` runs the passes over it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import sys
import time
from typing import Callable, Iterable, Iterator

from smallgpt_jax.system import console
from smallgpt_jax.system.console import clock
from smallgpt_jax.system.errors import UserError

READ_BYTES = 1 << 24  # 16 MB per read: fast to decode, small next to memory.
# Where the BPE (GPT-2 regex) and word tokenizers split text anyway: before a
# space that starts a word or a punctuation run. Cutting the stream only there
# gives the same tokens as encoding the text whole.
BOUNDARY = re.compile(r" (?=\S)")


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus file as it was when prepared (a change shows in size or time)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> "Source":
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_mtime_ns)

    def change(self, now: "Source") -> str | None:
        """Why `now` differs from this record, or None if it does not."""
        if now.size != self.size:
            return f"{self.path} changed size ({self.size:,} -> {now.size:,} bytes)"
        if now.mtime_ns != self.mtime_ns:
            return f"{self.path} was modified (its modification time changed)"
        return None


def iter_text(paths: list[str], separator: str, progress: "Progress | None" = None,
              hashes: list[str] | None = None) -> Iterator[str]:
    """The joined corpus text, in pieces of up to READ_BYTES characters.

    Fills `hashes` (if given) with each file's sha256 as it finishes.
    """
    for k, path in enumerate(paths):
        if k:
            yield separator
        try:
            yield from _file_text(path, progress, hashes)
        except OSError as e:  # Not the store's fault: say which file.
            raise UserError(f"cannot read {path} ({e.strerror or e}).") from e


def _file_text(path: str, progress: "Progress | None", hashes: list[str] | None
               ) -> Iterator[str]:
    """One file's text (see iter_text)."""
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty.")
    digest = hashlib.sha256()
    pos, carry = 0, b""  # File offset of carry[0]; an incomplete character.
    with open(path, "rb") as f:
        while True:
            raw = f.read(READ_BYTES)
            digest.update(raw)
            if progress:
                progress.add(nbytes=len(raw))
            chunk = carry + raw
            try:
                text, carry = chunk.decode("utf-8"), b""
            except UnicodeDecodeError as e:
                # A character cut by the read boundary: finish it next read.
                if raw and e.reason == "unexpected end of data" and e.end == len(chunk):
                    text, carry = chunk[:e.start].decode("utf-8"), chunk[e.start:]
                else:
                    raise UserError(
                        f"{path} is not valid UTF-8: byte 0x{chunk[e.start]:02x} at offset "
                        f"{pos + e.start}. Convert it to UTF-8 first.")
            pos += len(chunk) - len(carry)
            if text:
                yield text
            if not raw:
                break
    if hashes is not None:
        hashes.append(digest.hexdigest())


def split_at(texts: Iterable[str], n: int) -> Iterator[tuple[int, str]]:
    """(0, text) for the first `n` characters of the stream, (1, text) after."""
    seen = 0
    for text in texts:
        if seen >= n:
            yield 1, text
        elif seen + len(text) <= n:
            yield 0, text
        else:
            yield 0, text[:n - seen]
            yield 1, text[n - seen:]
        seen += len(text)


def splits(texts: Iterable[str], n: int) -> Iterator[tuple[int, Iterator[str]]]:
    """(split, its text pieces) for the training split, then the validation split."""
    for split, group in itertools.groupby(split_at(texts, n), key=lambda p: p[0]):
        yield split, (text for _, text in group)


def cut(texts: Iterable[str], size: int) -> Iterator[str]:
    """Re-cuts a stream into pieces of `size` to 2*`size` characters, at BOUNDARY.

    Where no boundary occurs in `size` characters (text without spaces), the
    piece is cut where it is: tokens next to that cut may differ from
    encoding the text whole.
    """
    buf = ""
    for text in texts:
        buf, start = buf + text, 0
        while len(buf) - start >= 2 * size:
            m = BOUNDARY.search(buf, start + size, start + 2 * size)
            end = m.start() if m else start + size
            yield buf[start:end]
            start = end
        buf = buf[start:]
    if buf:
        yield buf


def even_sample(pieces: Iterable[str], total: int, limit: int) -> Iterator[str]:
    """About `limit` characters of `pieces` (`total` in all), spread evenly.

    Deterministic: piece i is kept when it carries the running kept share
    past the next whole piece; all of it when `limit` is 0 or >= `total`.
    """
    if not limit or limit >= total:
        yield from pieces
        return
    seen = kept = 0
    for text in pieces:
        seen += len(text)
        if kept < limit * seen / total:
            kept += len(text)
            yield text


class Progress:
    """Bytes read, tokens written, rate and ETA on one line (redrawn in a
    terminal; a new line about every 10% in a log file)."""

    def __init__(self, label: str, total_bytes: int, enabled: bool = True,
                 check: Callable[[], None] | None = None, stream=None):
        self.label, self.total, self.enabled = label, max(total_bytes, 1), enabled
        self.stream = stream or sys.stderr  # Looked up now: tests replace sys.stderr.
        self.check = check  # Called at every update: may raise to stop (a signal).
        self.tty = enabled and self.stream.isatty()
        self.bytes = self.tokens = 0
        self.t0 = self.last = time.time()
        self.last_tenth = -1
        self.drawn = None  # (bytes, tokens) last shown.

    def add(self, nbytes: int = 0, ntokens: int = 0) -> None:
        self.bytes += nbytes
        self.tokens += ntokens
        if self.check:
            self.check()
        if not self.enabled:
            return
        now, tenth = time.time(), int(10 * self.bytes / self.total)
        if (self.tty and now - self.last > 0.5) or (not self.tty and tenth > self.last_tenth):
            self.last, self.last_tenth = now, tenth
            self._draw(now)

    def done(self) -> None:
        # Drawn again if the pass went on after its last line (a vocabulary
        # trainer merges after the last read): the final rate covers it all.
        now = time.time()
        if self.enabled and (self.drawn != (self.bytes, self.tokens) or now - self.last > 1):
            self._draw(now)
        if self.tty:
            self.stream.write("\n")

    def _draw(self, now: float) -> None:
        self.drawn = (self.bytes, self.tokens)
        elapsed = max(now - self.t0, 1e-9)
        rate = self.bytes / elapsed
        eta = (self.total - self.bytes) / rate if rate > 0 else float("nan")
        done = min(self.bytes / self.total, 1.0)
        line = (f"{self.label} [{'#' * int(20 * done):<20}] {self.bytes / 1e6:,.1f}/"
                f"{self.total / 1e6:,.1f} MB read, {self.tokens:,} tokens, "
                f"{rate / 1e6:.1f} MB/s ({self.tokens / elapsed:,.0f} tokens/s), "
                f"ETA {clock(eta)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            console.drawing(self.stream)  # A line said meanwhile clears the bar first.
        else:
            print(line, file=self.stream, flush=True)
