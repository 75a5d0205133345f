"""Which files a corpus path names: a file, a folder of .txt files, or a glob.

A path that exists is that path, whatever characters its name holds (a
folder called `data[1]` is not a pattern matching `data1`): only a path that
does not exist is a glob. Each real file counts once: a file reached by two
names keeps the first in order, and a folder linked from inside itself is
walked once (a walk that followed every link would read it dozens of times,
or never end). Only regular files count: a FIFO or device named *.txt would
block or never end when read.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from typing import Callable, Iterable, Iterator

from smallgpt_jax.system.errors import UserError

MAGIC = re.compile(r"[*?[]")  # What makes a path component a pattern (as for glob).


def resolve_paths(path: str) -> list[str]:
    """The sorted files `path` names: a file, a folder's .txt files (below
    it, hidden names left out), or a glob's matches (see the module's doc)."""
    if os.path.isdir(path):
        paths = _unique(_walk(path, lambda parts: parts[-1].endswith(".txt")
                              and not any(p.startswith(".") for p in parts)))
        if not paths:
            raise UserError(f"directory {path} holds no .txt files (regular files).")
        return paths
    if os.path.isfile(path):
        return [path]
    if os.path.exists(path):
        raise UserError(f"{path} is not a regular file (a FIFO, socket or device?); point "
                        "--config.data.path at a .txt file, a directory or a glob.")
    if "**" in path:  # Walked here: glob's own `**` follows every link, loops included.
        parts = path.split(os.sep)
        k = next(i for i, p in enumerate(parts) if MAGIC.search(p))
        top = os.sep.join(parts[:k]) or (os.sep if path.startswith(os.sep) else "")
        paths = _unique(_walk(top, lambda rel: _matches(rel, parts[k:]))
                        if os.path.isdir(top or ".") else ())
    else:
        paths = _unique(p for p in glob.glob(path) if os.path.isfile(p))
    if not paths:
        raise UserError(f"no such file, directory or glob match: {path}")
    return paths


def _walk(top: str, keep: Callable[[list[str]], bool]) -> Iterator[str]:
    """The regular files under folder `top` (following links to folders, each
    real folder once) whose path parts below `top` pass `keep`."""
    seen = set()
    for folder, dirs, files in os.walk(top or ".", followlinks=True, onerror=_unreadable):
        try:
            st = os.stat(folder)
        except OSError as e:  # Gone since it was listed.
            _unreadable(e)
        if (st.st_dev, st.st_ino) in seen:  # Reached again through a link.
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()  # The same folder is reached first by the same name every time.
        for name in files:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, top or ".")
            if keep(rel.split(os.sep)) and os.path.isfile(p):
                yield os.path.join(top, rel) if top else rel


def _unreadable(e: OSError) -> None:
    raise UserError(f"cannot read the folder {e.filename} ({e.strerror or e}).")


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Whether path parts match a glob's parts as glob(recursive=True) does:
    `**` stands for any number of folders, and a hidden name (.x) is matched
    only by a part that starts with a dot."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))
    return bool(parts) and (not parts[0].startswith(".") or pattern[0].startswith(".")) \
        and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _unique(paths: Iterable[str]) -> list[str]:
    """Sorted, each real file (device and inode) once, by its first name."""
    seen, out = set(), []
    for p in sorted(paths):
        try:
            st = os.stat(p)
        except OSError as e:  # Gone since it was listed.
            raise UserError(f"cannot read {p} ({e.strerror or e}).") from e
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(p)
    return out
