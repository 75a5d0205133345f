"""The token store: a corpus tokenized once, then memory-mapped by every run.

A store is a folder in the cache (`data.cache_dir`, by default
`~/.cache/smallgpt_jax/stores`, or under $XDG_CACHE_HOME), one per corpus
(`data.path`, or the named dataset) and tokenizer settings:

    manifest.json    what was prepared from what: each source file's size,
                     modification time and sha256, the settings, the split
                     rule, token and character counts, the format version,
                     checksums of the other files (store/manifest.py)
    tokenizer.json   the tokenizer fitted on the corpus
    train.bin        the training split's token ids, flat, little-endian, of
    val.bin          the manifest's dtype (uint8, uint16 or uint32)

The first run prepares it (store/passes.py) into a temporary folder, renamed into
place only when complete: a preparation killed at any moment, or stopped by a
full disk, leaves nothing that is ever used. One process prepares at a time
(a file lock); the others wait, then reuse its result. The next run checks
the sources against the manifest: a changed file (size or time), another
format version, or a damaged store is prepared again, with a line saying why
(store_manifest.why_stale; `prepare --verify` checks every byte).
Training memory-maps the two files and reads each batch's windows from them
(data.read_windows): memory does not grow with the corpus.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from smallgpt_jax import data
from smallgpt_jax.store import corpus, corpus_paths, prepare_child, manifest as store_manifest
from smallgpt_jax.store.manifest import NEW, digest, why_stale
from smallgpt_jax.system import console, lock, runtime
from smallgpt_jax.system.errors import Interrupted, UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

CACHE = "a store is a cache, made again from the corpus"


def root(data_config) -> str:
    """The folder holding the stores."""
    return data_config.cache_dir or os.path.join(runtime.cache_dir(), "stores")


def corpus_files(data_config) -> tuple[str, list[str]]:
    """(the name of the corpus, its files): `data.path` or the named dataset."""
    if data_config.path:
        return os.path.abspath(data_config.path), corpus_paths.resolve_paths(data_config.path)
    path = data.find_dataset(data_config.dataset)
    return os.path.abspath(path), [path]


def settings(data_config, name: str, tokenizer: tokenizer_lib.Tokenizer | None) -> dict:
    """Everything the tokens depend on besides the files' contents."""
    kind = tokenizer.kind if tokenizer else data_config.tokenizer
    s: dict[str, Any] = {"corpus": name, "tokenizer": kind,
                         "end_of_text": bool(data_config.end_of_text),
                         "train_fraction": float(data_config.train_fraction)}
    if tokenizer is not None:  # A resumed run's own vocabulary.
        s["tokenizer_sha256"] = digest(tokenizer.to_dict())
    elif kind in tokenizer_lib.LEARNED:
        s["vocab_size"], s["fit_max_chars"] = data_config.vocab_size, data_config.fit_max_chars
    return s


def folder_for(data_config, name: str, s: dict) -> str:
    """<root>/<corpus file name>-<tokenizer>-<hash of the settings>."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(name))[0])[:40]
    return os.path.join(root(data_config), f"{slug or 'corpus'}-{s['tokenizer']}-{digest(s)[:16]}")


class Store:
    """A prepared store: its manifest, its tokenizer, its splits mapped.

    Made while the store's lock is held: what it maps is what the manifest
    describes, even if another process prepares the store again later."""

    def __init__(self, directory: str):
        self.directory = directory
        with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.tokenizer = tokenizer_lib.load(os.path.join(directory, "tokenizer.json"))
        dtype, m = np.dtype(self.manifest["dtype"]), self.manifest

        def mapped(name: str, count: int) -> np.ndarray:
            if not count:  # numpy cannot map an empty file.
                return np.zeros(0, dtype)
            return data.map_tokens(os.path.join(directory, name), dtype, count,
                                   self.tokenizer.vocab_size)
        self._splits = data.Splits(mapped("train.bin", m["train_tokens"]),
                                   mapped("val.bin", m["val_tokens"]), m["fingerprint"])

    def splits(self) -> data.Splits:
        """Train and validation ids, memory-mapped read-only."""
        return self._splits

    @property
    def tokens_per_char(self) -> float:
        """Validation tokens per character of validation text (for bits per character)."""
        return self.manifest["val_tokens"] / max(self.manifest["val_chars_for_bpc"], 1)


def _check_stop(stop) -> None:
    if stop is not None and stop.signum:
        raise Interrupted("stopped while preparing the corpus; nothing of the unfinished "
                          "store is kept: run the same command again to start over.", stop.signum)


def open_store(data_config, tokenizer: tokenizer_lib.Tokenizer | None = None,
               verbose: bool = True, stop=None, verify: bool = False) -> Store:
    """The prepared store for `data_config` (prepared now if needed).

    With `tokenizer` (a resumed run's), the store is encoded with it: the one
    built for the settings when that holds the same vocabulary, else its own.
    `stop` (a stopping.StopSignals) ends a preparation at the next piece.
    `verify`: every block is checked against its checksum, not a sample.
    """
    say = console.say if verbose else (lambda _: None)
    name, paths = corpus_files(data_config)
    try:
        sources = [corpus.Source.of(p) for p in paths]
    except OSError as e:  # Gone since it was listed.
        raise UserError(f"cannot read {e.filename} ({e.strerror or e}).") from e
    try:
        os.makedirs(root(data_config), exist_ok=True)
        if tokenizer is not None:  # Usually the store built from the settings has it.
            usual = folder_for(data_config, name, settings(data_config, name, None))
            with _locked(usual, say, stop):
                if why_stale(usual, sources, verify) is None:
                    st = Store(usual)
                    if st.tokenizer.to_dict() == tokenizer.to_dict():
                        return st
        s = settings(data_config, name, tokenizer)
        directory = folder_for(data_config, name, s)
        with _locked(directory, say, stop) as exclusive:
            return _open_or_prepare(directory, paths, sources, s, data_config, tokenizer,
                                    verbose, say, lambda: _check_stop(stop), verify, exclusive)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "free disk space, or set --config.data.cache_dir to a folder with room"
        else:
            advice = f"set --config.data.cache_dir to a folder you can write ({CACHE})"
        raise UserError(f"cannot write the token store in {root(data_config)} "
                        f"({e.strerror or e}); {advice}.") from e


def _locked(directory: str, say: Callable[[str], None], stop=None):
    """Holds `<directory>.lock` (see system/lock.py), saying whom it waits for."""
    return lock.hold_file(directory + ".lock",
                          lambda who: say(f"waiting for another process ({who}) preparing "
                                          f"{directory}"),
                          lambda: _check_stop(stop))


def _check_unchanged(paths: list[str], sources: list[corpus.Source],
                     cause: Exception | None = None) -> None:
    """UserError if a corpus file differs from `sources` now (it changed while
    it was read: what the preparation made, or how it failed, is not the
    corpus's)."""
    for path, before in zip(paths, sources):
        try:
            change = before.change(corpus.Source.of(path))
        except OSError as e:
            change = f"{before.path} cannot be read any more ({e.strerror or e})"
        if change:
            raise UserError(f"{change} while it was being prepared: the corpus changed while "
                            "it was read; run again when it is complete.") from cause


def _open_or_prepare(directory, paths, sources, s, data_config, tokenizer, verbose, say,
                     check_stop, verify, exclusive) -> Store:
    """`exclusive`: whether this process holds the store's lock alone (else
    it may only read: others may be preparing, see lock.hold_file)."""
    left = sorted(e for e in os.listdir(os.path.dirname(directory))
                  if e.startswith(os.path.basename(directory) + ".tmp-"))
    if left and exclusive:  # We hold the lock: nobody is still writing these.
        say(f"a preparation of this store was cut off earlier (kill, crash or full disk); "
            f"starting it over: {directory}")
        for e in left:
            shutil.rmtree(os.path.join(os.path.dirname(directory), e), ignore_errors=True)
    why = why_stale(directory, sources, verify)
    if why is None:
        return Store(directory)
    # A store shared read-only is used as it is, or not at all.
    refused = None if exclusive else f"this process cannot write {directory}.lock"
    if not refused:
        try:
            tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-",
                                   dir=os.path.dirname(directory))
        except OSError as e:
            refused = e.strerror or str(e)
    if refused:
        raise UserError(f"the token store {directory} cannot be used ({why}) nor prepared "
                        f"there ({refused}); set --config.data.cache_dir to a folder you can "
                        f"write ({CACHE}).")
    say(f"preparing the token store {directory}" + (
        "" if why == NEW else f" again: {why}" + (f"; {CACHE}" if "damaged" in why else "")))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # As a plain mkdir would (mkdtemp makes it private).
        try:  # In a child process when a run tuned the allocator (see store/prepare_child.py).
            result = prepare_child.run(paths, data_config, tokenizer, tmp, verbose, check_stop)
        except UserError as e:  # e.g. a character pass 1 never saw: a change explains it.
            _check_unchanged(paths, sources, e)
            raise
        _check_unchanged(paths, sources)
        tokenizer_lib.save(result.tokenizer, os.path.join(tmp, "tokenizer.json"))
        store_manifest.write(tmp, store_manifest.build(tmp, s, sources, result, data_config))
        _publish(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Store(directory)


def _publish(tmp: str, directory: str) -> None:
    """Moves the finished folder into place (readers hold the lock meanwhile)."""
    old = None
    if os.path.exists(directory):
        old = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-old-",
                               dir=os.path.dirname(directory))
        os.replace(directory, os.path.join(old, "store"))
    os.replace(tmp, directory)
    fd = os.open(os.path.dirname(directory), os.O_RDONLY)
    try:  # The rename itself reaches the disk.
        os.fsync(fd)
    finally:
        os.close(fd)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def load_splits(data_config, block_size: int, workdir: str, stop=None,
                tokenizer: tokenizer_lib.Tokenizer | None = None
                ) -> tuple[tokenizer_lib.Tokenizer, data.Splits, str, float]:
    """What a training run needs from its data (`data_config`: config.data):
    (the tokenizer, the splits memory-mapped from the store, where the text
    came from, validation tokens per character); each split holds at least
    `block_size` + 1 tokens (one window). `tokenizer`: a resumed run's,
    from its checkpoint (it keeps its vocabulary). Writes the workdir's
    tokenizer.json, the copy that sampling and scoring read."""
    import jax  # Here, not at the top: `python -m smallgpt_jax.prepare` needs no JAX.
    d = data_config
    if tokenizer is not None and (tokenizer.kind != d.tokenizer or (
            tokenizer.kind in tokenizer_lib.LEARNED and tokenizer.vocab_size != d.vocab_size)):
        sized = d.tokenizer in tokenizer_lib.LEARNED
        raise UserError(
            f"the checkpoint holds a {tokenizer.kind} vocabulary of {tokenizer.vocab_size}, "
            f"but the config asks for data.tokenizer={d.tokenizer!r}"
            f"{f' of {d.vocab_size}' if sized else ''}; use a fresh --workdir.")
    store = open_store(d, tokenizer, verbose=jax.process_index() == 0, stop=stop)
    tok = store.tokenizer if tokenizer is None else tokenizer
    if jax.process_index() == 0:
        tokenizer_lib.save(tok, os.path.join(workdir, "tokenizer.json"))
    splits = store.splits()
    data.check_long_enough(splits, block_size)
    source = ", ".join(s["path"] for s in store.manifest["sources"])
    return tok, splits, source, store.tokens_per_char
