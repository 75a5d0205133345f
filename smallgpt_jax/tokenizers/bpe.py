"""Byte-level BPE: a subword vocabulary learned from the training text.

Byte-pair encoding (Sennrich et al. 2016; byte-level as in GPT-2) starts from
the 256 possible UTF-8 bytes, so any text encodes, and repeatedly merges the
most frequent adjacent pair of symbols into a new symbol until the
vocabulary reaches `vocab_size`. Frequent words become single tokens, rare
ones are spelled from pieces, and a token covers several characters on
average: the same context window sees more text.

The training and the encoding are done by the Hugging Face `tokenizers`
library (fast Rust code); this file only configures it and wraps it in the
project's `Tokenizer` interface. The whole learned tokenizer serialises to
one JSON string, which `to_dict` stores, so a workdir (or checkpoint) alone
is enough to encode and decode again.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Sequence

import numpy as np
import tokenizers as tk

from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.base import Tokenizer

# Marks a document boundary when `config.data.end_of_text` is on (GPT-2's name).
END_OF_TEXT = "<|endoftext|>"
NUM_BYTES = 256  # The base alphabet: every byte value is a token from the start.
MIN_PAIR_COUNT = 2  # A pair seen only once is memorisation, not a pattern: never merged.


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with Hugging Face `tokenizers`."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer  # A tokenizers.Tokenizer.

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = ()) -> "BPETokenizer":
        """Learns a vocabulary of exactly `vocab_size` tokens from `text`, a
        string or a stream of pieces (cut where the pre-tokenizer splits
        anyway, the pieces give the vocabulary the whole text gives).

        The vocabulary is the 256 bytes, then the special tokens, then the
        learned merges. Raises UserError if `vocab_size` cannot even hold the
        bytes and specials, or if the text has too few repeated pairs to
        learn that many merges.
        """
        special_tokens = list(special_tokens)
        smallest = NUM_BYTES + len(special_tokens)
        if vocab_size < smallest:
            raise UserError(
                f"config.data.vocab_size={vocab_size} is too small for byte-level BPE: "
                f"the 256 byte values{' and the special tokens' if special_tokens else ''} "
                f"alone need {smallest}; use --config.data.vocab_size={smallest} or more.")
        tok = tk.Tokenizer(tk.models.BPE())
        # Split into words the GPT-2 way (letters, digits, punctuation, spaces
        # kept with the following word) and map each byte to a printable symbol;
        # the decoder maps the symbols back to bytes, so decoding is exact.
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=MIN_PAIR_COUNT, show_progress=False,
            special_tokens=special_tokens,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        seen = [0]  # Characters, for the message below.

        def pieces():
            for piece in [text] if isinstance(text, str) else text:
                seen[0] += len(piece)
                yield piece
        tok.train_from_iterator(pieces(), trainer=trainer)
        learned = tok.get_vocab_size()
        if learned < vocab_size:
            # Merging stops when no pair occurs MIN_PAIR_COUNT times any more:
            # every frequent word is already a single token.
            raise UserError(
                f"config.data.vocab_size={vocab_size} is larger than this training text "
                f"supports: BPE ran out of pairs that occur at least {MIN_PAIR_COUNT} times "
                f"at {learned} tokens ({seen[0]:,} characters of text). Use "
                f"--config.data.vocab_size={learned} or less, or train on more text.")
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def special_tokens(self) -> list[str]:
        """The special tokens (e.g. END_OF_TEXT) this vocabulary was trained with."""
        return [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, np.int32)

    def encode_many(self, texts: list[str]) -> np.ndarray:
        # The library encodes the pieces in parallel (all cores). The _fast
        # variant skips the character offsets, which we never use: on pieces
        # of 64K characters it costs less than half the CPU time (same ids).
        out = [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch_fast(texts)]
        return np.concatenate(out or [np.zeros(0, np.int32)])

    def decode(self, ids) -> str:
        # Special tokens stay visible in the text, so document ends show.
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self._tok.decode(ids, skip_special_tokens=False)

    def byte_lengths(self, ids) -> np.ndarray:
        """How many UTF-8 bytes of the text each token stands for."""
        return self._byte_lengths[np.asarray(ids, np.int64)]

    @functools.cached_property
    def _byte_lengths(self) -> np.ndarray:
        # Byte-level: each symbol of a token's string is one byte; a special
        # token is its text.
        specials = {self._tok.token_to_id(t) for t in self.special_tokens}
        return np.array([len(self.decode([i]).encode("utf-8")) if i in specials
                         else len(self._tok.id_to_token(i)) for i in range(self.vocab_size)],
                        np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "hf_tokenizer_json": self._tok.to_str()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BPETokenizer":
        try:
            return cls(tk.Tokenizer.from_str(d["hf_tokenizer_json"]))
        except Exception as e:  # A missing key or malformed JSON.
            raise UserError(f"the saved BPE tokenizer cannot be read ({e}); "
                            "was it written by smallgpt_jax?")
