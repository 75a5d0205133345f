"""Tokenizers: turn text into integer ids and back.

Every tokenizer has the same small interface (`encode`, `decode`,
`vocab_size`, `to_dict`: tokenizers/base.py) and saves itself as JSON, so a run's workdir (and
its checkpoints) carry exactly the vocabulary the model was trained with.

- `CharTokenizer`: one id per distinct character of the training text,
  sorted by code point. The vocabulary is tiny (65 for Tiny Shakespeare).
- `ByteTokenizer`: the 256 possible UTF-8 bytes; any text encodes.
- `BPETokenizer` (in tokenizers/bpe.py): byte-level BPE learned from the training text.
- `WordTokenizer` (in tokenizers/words.py): the most frequent words of the training
  text, every space and punctuation character, and one unknown-word token.

The token store (store/store.py) fits them on a corpus streamed in pieces (`fit`):
the char alphabet comes from the whole corpus, the BPE and word vocabularies
from the training split.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from smallgpt_jax.config import TOKENIZERS
from smallgpt_jax.system.errors import UserError, write_atomic
from smallgpt_jax.tokenizers import bpe, words
from smallgpt_jax.tokenizers.base import Tokenizer


class CharTokenizer(Tokenizer):
    """One token per character; the vocabulary comes from the corpus."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self._id = {ch: i for i, ch in enumerate(chars)}
        # A lookup table from code point to id makes encoding a numpy gather.
        self._table = np.full(max(map(ord, chars)) + 1 if chars else 1, -1, np.int32)
        for ch, i in self._id.items():
            self._table[ord(ch)] = i

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        ids = np.where(codes < len(self._table),
                       self._table[np.minimum(codes, len(self._table) - 1)], -1)
        if (ids < 0).any():
            unknown = sorted({text[i] for i in np.flatnonzero(ids < 0)})
            shown = ", ".join(repr(c) for c in unknown[:20])
            sample = "".join(c for c in self.chars[:40] if c.isprintable())
            raise UserError(
                f"{len(unknown)} character(s) not in the vocabulary: {shown}. "
                f"The vocabulary has {self.vocab_size} characters, e.g. {sample!r}.")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}


class ByteTokenizer(Tokenizer):
    """The 256 UTF-8 byte values; invalid byte sequences decode as U+FFFD."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in np.asarray(ids).reshape(-1))
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


def from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuilds a tokenizer saved with `to_dict`."""
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return bpe.BPETokenizer.from_dict(d)
    if kind == "word":
        return words.WordTokenizer.from_dict(d)
    raise UserError(f"unknown tokenizer kind {kind!r} in a saved tokenizer.")


def build(kind: str, train_text: str, vocab_size: int = 0,
          special_tokens: tuple[str, ...] = ()) -> Tokenizer:
    """Builds the tokenizer named by `config.data.tokenizer` from training text.
    `special_tokens` (BPE only) get ids of their own, e.g. an end-of-text mark."""
    return fit(kind, [train_text], vocab_size, special_tokens)


# Every kind `from_dict` loads (the config's choices), and those whose
# vocabulary is learned from the text (sized by data.vocab_size).
KINDS = TOKENIZERS
LEARNED = ("bpe", "word")


def fit(kind: str, texts: Iterable[str], vocab_size: int = 0,
        special_tokens: tuple[str, ...] = ()) -> Tokenizer:
    """`build` from a stream of text pieces (read once, never held whole)."""
    if kind == "char":
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return CharTokenizer("".join(sorted(chars)))
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return bpe.BPETokenizer.train(texts, vocab_size, special_tokens)
    if kind == "word":
        return words.WordTokenizer.train(texts, vocab_size)
    raise UserError(f"config.data.tokenizer={kind!r} is not one of char, byte, bpe, word.")


def save(tokenizer: Tokenizer, path: str) -> None:
    """Writes the tokenizer as JSON (atomically, so a crash leaves no half
    file); a failed write (a full disk) is a UserError."""
    write_atomic(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False))


def load(path: str) -> Tokenizer:
    """Reads a tokenizer written by `save`."""
    try:
        with open(path, encoding="utf-8") as f:
            return from_dict(json.load(f))
    except FileNotFoundError:
        raise UserError(f"no tokenizer at {path}; is this a smallgpt_jax workdir?")
