"""The passes that turn a corpus into token files, streaming (see store/corpus.py).

- char: one pass counts the characters and collects the alphabet (of the
  whole corpus, so a character only the validation text has still has an
  id), one pass encodes.
- byte: one pass encodes everything into one file, counting characters; the
  split point is then found from a small index and the tail moved to val.bin.
- bpe, word: one pass counts characters (the split point), one learns the
  vocabulary from the training split (or an even, deterministic sample of it
  when it is longer than `data.fit_max_chars`), one encodes. BPE encodes
  batches of pieces with the `tokenizers` library's parallel encoder.

A given tokenizer (a resumed run's) is used as it is: no vocabulary pass.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from typing import Callable

import numpy as np

from smallgpt_jax.store import corpus
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib
from smallgpt_jax.tokenizers.bpe import END_OF_TEXT

FIT_PIECE = 1 << 20  # Characters per piece fed to a vocabulary trainer.
ENCODE_PIECE = 1 << 16  # Characters per piece in a BPE/word encoding batch...
ENCODE_BATCH = 64  # ...and pieces per batch: 4M characters, a few hundred MB at most.
FILES = ("train.bin", "val.bin")


@dataclasses.dataclass
class Result:
    """What the passes found, for the manifest."""

    tokenizer: tokenizer_lib.Tokenizer
    dtype: str  # Of the token files: the smallest unsigned type for the vocabulary.
    tokens: tuple[int, int]  # Train, validation.
    chars: tuple[int, int]  # Characters of the train and validation text.
    val_chars_for_bpc: int  # Validation characters, the end-of-text mark counted as one.
    sha256: list[str]  # Of each source file.


def token_dtype(vocab_size: int) -> np.dtype:
    """uint8, uint16 or uint32: the smallest that holds every id."""
    return np.min_scalar_type(max(vocab_size - 1, 0))


def run(paths: list[str], data_config, tokenizer: tokenizer_lib.Tokenizer | None,
        out: str, verbose: bool, check: Callable[[], None] | None = None) -> Result:
    """Writes train.bin and val.bin into `out`; returns what the manifest needs.
    `check` is called often (it may raise to stop the preparation)."""
    def progress_bar(label: str, total_bytes: int) -> corpus.Progress:
        return corpus.Progress(label, total_bytes, verbose, check)

    separator = END_OF_TEXT if data_config.end_of_text else "\n\n"
    total = sum(os.path.getsize(p) for p in paths)
    kind = tokenizer.kind if tokenizer else data_config.tokenizer
    if kind == "byte":
        return _byte_pass(paths, separator, data_config.train_fraction, out,
                          progress_bar("preparing (1/1: encoding)", total))

    passes = 3 if tokenizer is None and kind != "char" else 2  # With a vocabulary pass or not.
    sha256: list[str] = []
    progress = progress_bar(f"preparing (1/{passes}: characters)", total)
    chars, alphabet = 0, set()
    for text in corpus.iter_text(paths, separator, progress, sha256):
        chars += len(text)
        if kind == "char" and tokenizer is None:
            alphabet.update(text)
    progress.done()
    n = int(chars * data_config.train_fraction)  # As data.split_text cuts.

    if tokenizer is None and kind == "char":
        tokenizer = tokenizer_lib.CharTokenizer("".join(sorted(alphabet)))
    elif tokenizer is None:
        progress = progress_bar("preparing (2/3: vocabulary)", total)  # Reads up to the split
        split, train_texts = next(corpus.splits(corpus.iter_text(paths, separator, progress), n))
        if split:  # No training text at all (a corpus of a character or two).
            train_texts = iter(())
        pieces = corpus.even_sample(corpus.cut(train_texts, FIT_PIECE), n,
                                    data_config.fit_max_chars)
        specials = (END_OF_TEXT,) if data_config.end_of_text else ()
        tokenizer = tokenizer_lib.fit(kind, pieces, data_config.vocab_size, specials)
        progress.done()

    dtype = token_dtype(tokenizer.vocab_size)
    progress = progress_bar(f"preparing ({passes}/{passes}: encoding)", total)
    counts, val_chars = [0, 0], 0
    for name in FILES:  # Both exist even if a split is empty.
        open(os.path.join(out, name), "wb").close()
    for split, texts in corpus.splits(corpus.iter_text(paths, separator, progress), n):
        if kind != "char":  # Pieces cut where the tokenizer splits anyway.
            texts = corpus.cut(texts, ENCODE_PIECE)
        with open(os.path.join(out, FILES[split]), "ab") as f:
            for batch in _batches(texts, 1 if kind == "char" else ENCODE_BATCH):
                ids = tokenizer.encode_many(batch)
                f.write(ids.astype(dtype).tobytes())
                counts[split] += len(ids)
                progress.add(ntokens=len(ids))
                if split == 1 and data_config.end_of_text:
                    val_chars -= (len(END_OF_TEXT) - 1) * sum(t.count(END_OF_TEXT) for t in batch)
            _sync(f)
    progress.done()
    return Result(tokenizer, dtype.name, (counts[0], counts[1]), (n, chars - n),
                  val_chars + chars - n, sha256)


def _batches(texts, size: int):
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _byte_pass(paths, separator, train_fraction, out, progress: corpus.Progress) -> Result:
    """Bytes are their own ids: encode everything into one file in one pass,
    then cut it where the character split falls."""
    sha256: list[str] = []
    starts = []  # (characters, bytes) before each piece: finds the split point.
    chars = nbytes = 0
    train_path, val_path = (os.path.join(out, name) for name in FILES)
    with open(train_path, "wb") as f:
        for text in corpus.iter_text(paths, separator, progress, sha256):
            starts.append((chars, nbytes))
            raw = text.encode("utf-8")
            f.write(raw)
            chars, nbytes = chars + len(text), nbytes + len(raw)
            progress.add(ntokens=len(raw))
        _sync(f)
    progress.done()
    n = int(chars * train_fraction)
    i = bisect.bisect_right([c for c, _ in starts], n) - 1
    piece_chars, piece_bytes = starts[i]
    piece_end = starts[i + 1][1] if i + 1 < len(starts) else nbytes
    with open(train_path, "r+b") as f:
        f.seek(piece_bytes)
        piece = f.read(piece_end - piece_bytes).decode("utf-8")
        cut = piece_bytes + len(piece[:n - piece_chars].encode("utf-8"))
        f.seek(cut)
        # Bits per character count the end-of-text mark as one character.
        mark = END_OF_TEXT.encode("utf-8") if separator == END_OF_TEXT else None
        marks, tail = 0, b""
        with open(val_path, "wb") as v:
            while block := f.read(corpus.READ_BYTES):
                v.write(block)
                if mark:  # `tail` (shorter than a mark) catches one split between blocks.
                    window = tail + block
                    marks += window.count(mark)
                    tail = window[-(len(mark) - 1):]
            _sync(v)
        f.truncate(cut)
        _sync(f)
    return Result(tokenizer_lib.ByteTokenizer(), "uint8", (cut, nbytes - cut),
                  (n, chars - n), chars - n - (len(END_OF_TEXT) - 1) * marks, sha256)
