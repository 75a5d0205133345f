"""One run per workdir: an OS-level lock on `<workdir>/run.lock`.

Two runs writing the same checkpoints delete each other's saves in flight.
So a training run holds an exclusive `flock` on the workdir's lock file for
as long as it runs; a second one is refused at once, with the holder's PID
and host. The kernel drops the lock when the holder's process ends, however
it ends (even `kill -9`): a crash never leaves a stale lock behind. The file
itself stays (removing it would let a third process lock a new file while the
second still holds the old one); its content only says who holds it.

Light on imports: the sweep runner asks `holder()` before starting a trial.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from typing import Callable, Iterator

from smallgpt_jax.system.errors import UserError

LOCK_FILE = "run.lock"


def _open(workdir: str) -> int:
    return os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)


def _who(fd: int) -> str:
    """'PID 1234 on host gpu-7', as the holder wrote it (or a plain 'another process')."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        return f"PID {text[0]} on host {text[1]}"
    except (OSError, IndexError):
        return "another process"


def holder(workdir: str) -> str | None:
    """Who holds `workdir` right now ('PID 1234 on host gpu-7'), or None if
    nobody does (or it has no lock file yet). Takes and drops the lock to ask."""
    try:
        fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _who(fd)
    finally:
        os.close(fd)  # Closing drops a lock we got.
    return None


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds `workdir` exclusively; UserError naming the holder if another run does."""
    def refuse(who: str) -> None:
        raise UserError(f"--workdir={workdir} is in use by another run ({who}); wait for it "
                        "to finish or stop it, or choose another --workdir.")
    try:
        fd = _open(workdir)
    except OSError as e:
        raise UserError(f"cannot create {os.path.join(workdir, LOCK_FILE)} ({e.strerror or e}); "
                        "choose a --workdir you can write to.")
    with _held(fd, os.path.join(workdir, LOCK_FILE), refuse):
        yield


@contextlib.contextmanager
def hold_file(path: str, on_wait: Callable[[str], None],
              check: Callable[[], None] = lambda: None) -> Iterator[bool]:
    """Holds the lock file `path` exclusively, waiting for another holder:
    `on_wait(who)` is told once, `check()` is called while waiting (it may
    raise to give up). Gives whether it holds it exclusively: where this
    process cannot write the file (a store shared read-only) it may only
    read, and holds an existing lock file shared (a writer still excludes
    it), or none if there is none."""
    told = []

    def wait(who: str) -> None:
        if not told:
            on_wait(who)
            told.append(who)
        check()
        time.sleep(0.2)
    fd, mode = _open_file(path)
    if fd is None:
        yield False
        return
    with _held(fd, path, wait, mode):
        yield mode == fcntl.LOCK_EX


def _open_file(path: str) -> tuple[int | None, int]:
    """(a descriptor of lock file `path`, how to lock it): exclusively if this
    process can write it, shared if it can only read it, (None, 0) if it
    neither exists nor can be made."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), fcntl.LOCK_EX
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    try:
        return os.open(path, os.O_RDONLY), fcntl.LOCK_SH
    except FileNotFoundError:
        return None, 0


@contextlib.contextmanager
def _held(fd: int, path: str, busy: Callable[[str], None],
          mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    """Locks `fd`, open on `path` (closed at the end), calling `busy(who)` while another
    process holds it (`busy` raises to refuse, or returns to try again), then
    writes who holds it now (an exclusive holder)."""
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # Held by another.
                busy(_who(fd))
            except OSError as e:  # Not "busy": waiting would never end.
                raise UserError(f"cannot lock {path} ({e.strerror or e}); its file system may "
                                "not support locks: use a folder on a local disk.") from e
        if mode == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
