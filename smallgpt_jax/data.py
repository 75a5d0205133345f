"""Text corpora and batches.

Where the text comes from (`config.data`; store/store.py tokenizes it once into a
memory-mapped token store):
- `path`: a UTF-8 .txt file, a directory of .txt files, or a glob
  (store/corpus_paths.py);
- otherwise the named `dataset`, found in `$SMALLGPT_DATA_DIR/<name>/`, then
  in the user cache (`~/.cache/smallgpt_jax`), then downloaded (with a
  progress bar, a checksum check and an atomic write).

How batches are drawn: random windows of `block_size + 1` tokens (inputs and
the next-token targets), chosen by a pure function of (seed, step). A resumed
run therefore sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass

import numpy as np

from smallgpt_jax.system.errors import UserError
from smallgpt_jax.system.runtime import cache_dir

# name -> (url, file name, size in bytes, sha256)
DATASETS = {
    "tinyshakespeare": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
        "tinyshakespeare/input.txt",
        "input.txt",
        1_115_394,
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str, sha256: str | None = None,
             expected_size: int | None = None) -> str:
    """Downloads `url` to `dest` atomically, showing progress on stderr.

    The bytes go to a temporary file next to `dest`, are checked against
    `sha256`, and only then renamed into place, so an interrupted or corrupt
    download never leaves a file that looks complete.
    """
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as r:
            total = int(r.headers.get("Content-Length") or expected_size or 0)
            done = 0
            while chunk := r.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if total:
                    bar = "#" * int(30 * done / total)
                    sys.stderr.write(f"\rdownloading {os.path.basename(dest)} "
                                     f"[{bar:<30}] {done / 1e6:.1f}/{total / 1e6:.1f} MB")
            sys.stderr.write("\n")
        if sha256 is not None and file_sha256(tmp) != sha256:
            raise UserError(f"the download from {url} is corrupt (sha256 mismatch); "
                            "try again, or place the file by hand.")
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def find_dataset(name: str) -> str:
    """Returns the local path of a named dataset, downloading it if needed."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}. "
                        "Or point --config.data.path at your own .txt file.")
    url, filename, size, sha256 = DATASETS[name]
    candidates = []
    if os.environ.get("SMALLGPT_DATA_DIR"):
        candidates.append(os.path.join(os.environ["SMALLGPT_DATA_DIR"], name, filename))
    cached = os.path.join(cache_dir(), name, filename)
    candidates.append(cached)
    for path in candidates:
        if os.path.isfile(path):
            return path
    try:
        return download(url, cached, sha256, size)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise UserError(
            f"could not download {name} ({e}). Offline? Download {url} "
            f"yourself and put it at {cached}, or set SMALLGPT_DATA_DIR to a "
            f"directory holding {name}/{filename}, or use --config.data.path=FILE.")


def read_text(path: str) -> str:
    """Reads a UTF-8 file; a bad byte gives an error naming the file and offset."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8: byte 0x{raw[e.start]:02x} at "
                        f"offset {e.start}. Convert it to UTF-8 first.")
    if not text:
        raise UserError(f"{path} is empty.")
    return text


def split_text(text: str, train_fraction: float) -> tuple[str, str]:
    """Splits contiguously: the first part trains, the rest validates.
    (The token store cuts its stream by the same rule: corpus.split_at.)"""
    n = int(len(text) * train_fraction)
    return text[:n], text[n:]


@dataclass
class Splits:
    """Token ids of the training and validation splits (memory-mapped when
    they come from the token store, store/store.py)."""

    train: np.ndarray
    val: np.ndarray
    fingerprint: str = ""  # What the text and split were (store manifest); "" unknown.


def check_long_enough(splits: Splits, block_size: int) -> None:
    for name, tokens in (("training", splits.train), ("validation", splits.val)):
        if len(tokens) < block_size + 1:
            raise UserError(
                f"the {name} split has {len(tokens)} tokens, fewer than "
                f"block_size+1={block_size + 1}. Use more text, a smaller "
                "--config.model.block_size, or change --config.data.train_fraction.")


def sample_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int,
                 block_size: int, stream: int = 0) -> np.ndarray:
    """Random windows of `block_size + 1` tokens, shape [batch_size, block_size + 1].

    A pure function of (seed, step, stream): the same arguments always give
    the same batch. `stream` separates independent uses (0 train, 1 and 2 the
    evaluation batches of each split), so they never share random numbers.
    """
    rng = np.random.default_rng([seed, stream, step])
    starts = rng.integers(0, len(tokens) - block_size, size=batch_size)
    # int32 whatever the store's type (uint8/16/32): the batches do not depend on it.
    return read_windows(tokens, starts, block_size + 1).astype(np.int32, copy=False)


def map_tokens(path: str, dtype: np.dtype, count: int, vocab_size: int = 0) -> np.ndarray:
    """The token file at `path`, memory-mapped read-only, with a descriptor
    of the same file kept open for `read_windows` (a store prepared again
    later replaces the file by name: the run keeps reading its own, on a
    local disk; on NFS another host's delete can still make reads fail).
    `vocab_size`: `read_windows` refuses ids from there up (a damaged file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            tokens = np.memmap(f, dtype, "r", shape=(count,))
    except BaseException:
        os.close(fd)
        raise
    tokens.path, tokens.vocab_size = path, vocab_size
    if hasattr(os, "pread"):  # (Not on Windows: there it is read through the mapping.)
        tokens.fd = fd
        weakref.finalize(tokens, os.close, fd)
    else:
        os.close(fd)
    return tokens


def read_windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """tokens[s : s + length] for each start s: shape [len(starts), length].

    A store's file (from `map_tokens`) is read with one `pread` per window,
    not through its mapping: on Linux a read through a mapping maps the
    file's cached pages around it into the process too (64 KB to 2 MB per
    window, by kernel and file system; ~120 MB for a batch of 64 on ext4),
    and a long run comes to hold as much of the store as it has read. Read
    this way, the process holds the batch alone, whatever the corpus size
    (64 windows of 257 tokens: about 0.3 ms).
    """
    fd = getattr(tokens, "fd", None)  # (A slice of the mapped array has none.)
    if fd is None:
        out = tokens[starts[:, None] + np.arange(length)]
    else:
        size = tokens.dtype.itemsize
        rows = b"".join(os.pread(fd, length * size, int(s) * size) for s in starts)
        if len(rows) != len(starts) * length * size:
            _damaged(tokens, "is shorter than when it was opened")
        out = np.frombuffer(rows, tokens.dtype).reshape(len(starts), length)
    vocab_size = getattr(tokens, "vocab_size", 0)
    if vocab_size and out.size and (top := int(out.max())) >= vocab_size:
        _damaged(tokens, f"holds id {top}, past its vocabulary of {vocab_size}")
    return out


def _damaged(tokens: np.ndarray, what: str) -> None:
    """Refuses a store's file (from `map_tokens`): its data must not be used."""
    raise UserError(f"the token store {os.path.dirname(tokens.path)} is damaged: "
                    f"{os.path.basename(tokens.path)} {what}; a store is a cache: delete that "
                    "folder and run the same command again.")
