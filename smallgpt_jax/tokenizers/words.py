"""A word-level tokenizer: whole words, with every space and punctuation mark kept.

Text is cut into pieces: runs of word characters (letters, digits, `_`; a
"word"), and every other character on its own (a space, a newline, a comma).
The vocabulary is one unknown-word token, then the spaces and punctuation
marks of the training text, then its most frequent words, up to
`vocab_size`. A word outside the vocabulary becomes the unknown token (it
decodes as UNKNOWN); everything else decodes back to exactly the text.
The classic word-level language models (e.g. on Penn Treebank) work so;
subword BPE avoids the unknown token at the cost of longer sequences.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Iterable

import numpy as np

from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.base import Tokenizer

PIECE = re.compile(r"\w+|\W")  # A word, or any other single character.
WORD = re.compile(r"\w")
UNKNOWN = "<unk>"  # Id 0: a word the vocabulary does not have.


class WordTokenizer(Tokenizer):
    """Words and single non-word characters; id 0 is the unknown word."""

    kind = "word"

    def __init__(self, pieces: list[str]):
        self.pieces = list(pieces)  # Id -> piece; pieces[0] is UNKNOWN.
        self._id = {p: i for i, p in enumerate(self.pieces) if i}

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int) -> "WordTokenizer":
        """Counts the pieces of `texts` (a string or a stream of pieces cut
        between words) and keeps the unknown token, the non-word characters,
        then the most frequent words, `vocab_size` in all. Ties go to the
        alphabetically first, so the vocabulary is the same every time."""
        if vocab_size < 2:
            raise UserError(f"config.data.vocab_size={vocab_size} is too small for the word "
                            "tokenizer: it needs the unknown token and at least one word.")
        counts: collections.Counter[str] = collections.Counter()
        for text in [texts] if isinstance(texts, str) else texts:
            counts.update(PIECE.findall(text))
        if len(counts) < vocab_size - 1:  # As BPE: a size the text cannot fill is refused.
            raise UserError(
                f"config.data.vocab_size={vocab_size} is larger than this training text "
                f"supports: it has {len(counts)} distinct words and other characters. Use "
                f"--config.data.vocab_size={len(counts) + 1} or less, or train on more text.")
        # Spaces and punctuation first (so text round-trips), then by frequency.
        ranked = sorted(counts, key=lambda p: (WORD.match(p) is not None, -counts[p], p))
        return cls([UNKNOWN] + ranked[:vocab_size - 1])

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> np.ndarray:
        get = self._id.get
        return np.fromiter((get(p, 0) for p in PIECE.findall(text)), np.int32)

    def decode(self, ids) -> str:
        return "".join(self.pieces[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pieces": self.pieces}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WordTokenizer":
        pieces = d.get("pieces")
        if not isinstance(pieces, list) or not pieces or pieces[0] != UNKNOWN:
            raise UserError("the saved word tokenizer cannot be read (no piece list); "
                            "was it written by smallgpt_jax?")
        return cls(pieces)
