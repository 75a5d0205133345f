"""One error type for user mistakes (the CLI prints its message on one line),
and the file writes that turn a failed write into one."""

import contextlib
import os
import tempfile
from typing import Iterator, TextIO


class UserError(Exception):
    """A problem with the user's input (config, data, workdir, flags).

    Entry points catch it and print `error: <message>` with exit status 2,
    instead of a traceback from deep inside JAX.
    """


class Interrupted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving a checkpoint.

    Entry points print the message (which says how to resume) and exit with
    status 128 + signal number, the shell's convention for a signal.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns a failed write of `path` (a full disk, no permission) into a UserError."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); free disk space or fix "
                        "the directory, then run the same command again.") from e


def check_writable_dir(path: str, name: str, advice: str) -> None:
    """Creates folder `path` if needed and really writes a file in it (os.access()
    misses read-only mounts and some permissions); else UserError
    'cannot write to NAME (why); ADVICE.'"""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {name} ({e.strerror or e}); {advice}.")


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path.tmp`, then renames it over `path`: a crash or a
    failed write (a full disk) never leaves a half-written file, and an
    existing `path` stays as it was. A failed write is a UserError."""
    with atomic_file(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_file(path: str, newline: str | None = None) -> Iterator[TextIO]:
    """`write_atomic` for a file written bit by bit: a text file open on
    `path.tmp` (`newline` as open's), renamed over `path` when the block ends
    without an error (and removed if it fails)."""
    tmp = path + ".tmp"
    with writing(path):
        try:
            with open(tmp, "w", encoding="utf-8", newline=newline) as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
