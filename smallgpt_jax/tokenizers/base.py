"""The interface every tokenizer implements: text to integer ids and back.

Its own module so that the tokenizers in other files (tokenizers/bpe.py, tokenizers/words.py) and
tokenizers/tokenizer.py, which builds and loads all of them, import it without
importing each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Tokenizer:
    """Interface shared by all tokenizers."""

    kind: str = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """Returns the token ids of `text` as an int32 array."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Returns the text of a sequence of token ids."""
        raise NotImplementedError

    def encode_many(self, texts: list[str]) -> np.ndarray:
        """The ids of the texts one after another (each encoded on its own)."""
        return np.concatenate([self.encode(t) for t in texts] or [np.zeros(0, np.int32)])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description from which `tokenizer.from_dict` rebuilds it."""
        raise NotImplementedError
