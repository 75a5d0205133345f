"""A token store's manifest, and the checks that say whether a store may be used.

manifest.json records what a store was prepared from (each source file's
size, modification time and sha256, the settings), how (the split rule, the
format version) and what it holds: token and character counts, the sha256 of
its tokenizer.json, a CRC-32 of every BLOCK bytes of each token file, and a
digest of all of that (an edited or cut manifest shows).

`why_stale` runs on every open, under the store's lock: the manifest, the
sources, the files' sizes, the tokenizer file, and the token files' blocks:
all of a small file; of a large one the first, the last and SAMPLED others
drawn at random, so an open reads a few MB whatever the store's size and each
open looks at other blocks. `full=True` (`prepare --verify`) checks every
block. Ids past the vocabulary are also refused when a batch is drawn
(data.read_windows), wherever the damage is. A store is a cache: a damaged
one is prepared again from the corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import zlib
from typing import Any

import numpy as np

from smallgpt_jax import data
from smallgpt_jax.store import corpus, passes

# Version of the store layout; another version is prepared again, never misread.
# Format 1 had no checksums: its stores are prepared again rather than trusted.
FORMAT = 2
SPLIT_RULE = ("files joined by the separator, then cut by characters: the first "
              "int(characters * train_fraction) train, the rest validate")
BLOCK = 1 << 20  # Bytes per checksummed block of a token file.
WHOLE = 32  # Files of up to this many blocks are checked whole on every open...
SAMPLED = 16  # ...larger ones: the first, the last and this many others.
NEW = "not prepared yet"


def digest(obj: Any) -> str:
    """sha256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def block_crcs(path: str) -> str:
    """The CRC-32 of each BLOCK of the file, as 8 hex digits each."""
    out = []
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            out.append(f"{zlib.crc32(block):08x}")
    return "".join(out)


def _bad_block(path: str, crcs: str, block: int, full: bool) -> str | None:
    """Why the file's blocks (of `block` bytes) do not match `crcs` (None:
    those looked at do)."""
    n = len(crcs) // 8
    if full or n <= WHOLE:
        picked = range(n)
    else:
        picked = [0, n - 1, *random.sample(range(1, n - 1), SAMPLED)]
    fd = os.open(path, os.O_RDONLY)
    try:
        for k in picked:
            if f"{zlib.crc32(os.pread(fd, block, k * block)):08x}" != crcs[8 * k:8 * k + 8]:
                return (f"its {os.path.basename(path)} is damaged (block {k + 1:,} of {n:,} "
                        "differs from its checksum)")
    finally:
        os.close(fd)
    return None


def build(folder: str, s: dict, sources: list[corpus.Source], r: passes.Result,
          data_config) -> dict:
    """The manifest of the store written into `folder` (its token files and
    tokenizer.json are complete)."""
    separator = "<|endoftext|>" if data_config.end_of_text else "\n\n"
    m = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": s,
        "sources": [{"path": src.path, "size": src.size, "mtime_ns": src.mtime_ns,
                     "sha256": h} for src, h in zip(sources, r.sha256)],
        "separator": separator,
        "split": {"rule": SPLIT_RULE, "train_fraction": float(data_config.train_fraction),
                  "train_chars": r.chars[0], "val_chars": r.chars[1]},
        "tokenizer": {"kind": r.tokenizer.kind, "vocab_size": r.tokenizer.vocab_size},
        "tokenizer_file_sha256": data.file_sha256(os.path.join(folder, "tokenizer.json")),
        "dtype": r.dtype,
        "train_tokens": r.tokens[0],
        "val_tokens": r.tokens[1],
        "val_chars_for_bpc": r.val_chars_for_bpc,
        # What the text was, whatever its path: a resume on other data is refused.
        "fingerprint": digest([r.sha256, separator, float(data_config.train_fraction)]),
        "checksums": {"block_bytes": BLOCK, "crc32": {
            name: block_crcs(os.path.join(folder, name)) for name in passes.FILES}},
    }
    return {**m, "digest": digest(m)}


def write(folder: str, manifest: dict) -> None:
    path = os.path.join(folder, "manifest.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def why_stale(directory: str, sources: list[corpus.Source], full: bool = False) -> str | None:
    """Why the store in `directory` cannot be used (None: it can). `full`:
    every block of the token files is checked, not a sample."""
    try:
        with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        return NEW
    except OSError as e:
        return f"its manifest cannot be read ({e.strerror or e})"
    except ValueError:
        return "its manifest is damaged (not readable JSON)"
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return (f"it was written in store format {m.get('format') if isinstance(m, dict) else '?'}"
                f", this version uses format {FORMAT}")
    if m.get("digest") != digest({k: v for k, v in m.items() if k != "digest"}):
        return "its manifest is damaged (edited or cut: its digest differs)"
    old = [corpus.Source(s["path"], s["size"], s["mtime_ns"]) for s in m["sources"]]
    if [s.path for s in old] != [s.path for s in sources]:
        return (f"the corpus now has {len(sources)} file(s), {len(old)} when prepared "
                "(files were added, removed or renamed)")
    for before, now in zip(old, sources):
        if change := before.change(now):
            return change
    itemsize, block = np.dtype(m["dtype"]).itemsize, m["checksums"]["block_bytes"]
    crcs = m["checksums"]["crc32"]
    for name, count in (("train.bin", m["train_tokens"]), ("val.bin", m["val_tokens"])):
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != count * itemsize:
            return f"its {name} is missing or has the wrong size (damaged)"
        if math.ceil(count * itemsize / block) * 8 != len(crcs[name]):
            return "its manifest is damaged (its checksums do not fit the files)"
    try:
        if data.file_sha256(os.path.join(directory, "tokenizer.json")) != m["tokenizer_file_sha256"]:
            return "its tokenizer.json is damaged (its sha256 differs)"
        for name in passes.FILES:
            if bad := _bad_block(os.path.join(directory, name), crcs[name], block, full):
                return bad
    except OSError as e:  # e.g. missing, or a folder where a file should be.
        name = os.path.basename(e.filename or "") or "files"
        return f"its {name} cannot be read ({e.strerror or e}): damaged"
    return None
