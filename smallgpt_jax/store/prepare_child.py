"""Preparing a token store in a child process, when this one's allocator is tuned.

A training run tunes glibc's allocator first thing (runtime.setup_process:
one malloc arena, for XLA's step buffers). If the run then has to prepare
its token store, the `tokenizers` threads (BPE training and encoding) all
allocate from that one arena and wait for each other: preparing there is
2-3 times slower than `python -m smallgpt_jax.prepare`, which does not tune.
glibc fixes its arena limit when the first thread arenas are made, so the
setting cannot be lifted for the preparation and applied after it. So the
passes run in a fresh interpreter ("spawn": nothing of this process's
allocator settings is inherited; it imports no JAX), and its Result comes
back here; everything else (the lock, the temporary folder, the manifest,
publishing) stays with store/store.py in this process.

The child prints its progress to the same stderr. It ignores Ctrl-C (the
terminal sends it to the whole process group): this process decides, and
ends the child on a stop. SMALLGPT_PREPARE_IN_PROCESS=1 keeps the passes in
this process (the tests do: they patch the passes; so can a debugger).
As "spawn" does, the child imports this process's `__main__` module first:
smallgpt_jax/cli/main.py only defines flags there; a script of one's own that
tunes the allocator needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from multiprocessing import resource_tracker
from typing import Callable

from smallgpt_jax.store import passes
from smallgpt_jax.system import runtime
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

POLL_SECONDS = 0.1  # How often the parent looks at its stop check while it waits.


def in_child() -> bool:
    """Whether preparations of this process run in a child process."""
    return (runtime.allocator_tuned()
            and os.environ.get("SMALLGPT_PREPARE_IN_PROCESS", "0") != "1")


class ChildTraceback(Exception):
    """The child's traceback, as the cause of the error re-raised here."""

    def __str__(self) -> str:
        return self.args[0]


def run(paths: list[str], data_config, tokenizer: tokenizer_lib.Tokenizer | None,
        out: str, verbose: bool, check: Callable[[], None] | None = None) -> passes.Result:
    """passes.run, in a child process when `in_child()`; same arguments."""
    if not in_child():
        return passes.run(paths, data_config, tokenizer, out, verbose, check)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_prepare, name="smallgpt_jax-prepare",
                            args=(sender, paths, data_config, tokenizer, out, verbose, os.getpid()))
    outcome = None
    try:
        # SIGINT blocked while starting it: the child inherits the mask, so a
        # Ctrl-C during its start-up (before _prepare ignores it) prints nothing.
        # The resource tracker first: starting it unblocks SIGINT again.
        resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            child.start()
        except OSError:  # It died while reading its arguments.
            _died(child, check)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        sender.close()  # Ours: a child that dies leaves the pipe at its end.
        outcome = _wait(receiver, child, check)
    finally:  # Also on a stop or an error here: the child ends before tmp is removed.
        sender.close()
        receiver.close()
        if child.pid is not None:
            _end(child, finished=outcome is not None)
    status, *payload = outcome
    if status == "done":
        return payload[0]
    error, text = payload
    if error is None:  # It could not be sent as it was.
        raise RuntimeError(f"preparing the token store failed in its child process:\n{text}")
    raise error from ChildTraceback(text)


def _wait(receiver, child, check: Callable[[], None] | None) -> tuple:
    """The child's message, polling `check` meanwhile."""
    while not receiver.poll(POLL_SECONDS):  # True on a message or on the pipe's end.
        if check:
            check()
    try:
        return receiver.recv()
    except (EOFError, OSError):  # It ended without a whole message.
        _died(child, check)


def _died(child, check: Callable[[], None] | None) -> None:
    """Raises why the child ended without a result: a stop that reached it
    too (SIGTERM to the process group, as SLURM and systemd send) is a stop."""
    if check:
        check()
    child.join()
    code = child.exitcode
    how = (f"killed by signal {-code}{', e.g. out of memory' if -code == signal.SIGKILL else ''}"
           if code is not None and code < 0
           else f"exit code {code}; its messages, if any, are above")
    raise UserError(f"the process preparing the token store died ({how}); nothing of "
                    "the unfinished store is kept: run the same command again to start "
                    "over.") from None


def _end(child, finished: bool) -> None:
    """Waits for a child that sent its message to exit; ends any other."""
    child.join(5 if finished else 0)
    if child.is_alive():
        child.terminate()
        child.join(5)
    if child.is_alive():  # SIGTERM did not end it.
        child.kill()
        child.join()


def _prepare(sender, paths, data_config, tokenizer, out, verbose, parent: int) -> None:
    """The child: runs the passes, sends ("done", result) or
    ("failed", the exception or None, its traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def orphaned() -> None:  # The parent was killed: nobody waits for the result.
        if os.getppid() != parent:
            sys.exit(1)
    try:
        result = passes.run(paths, data_config, tokenizer, out, verbose, orphaned)
        sender.send(("done", result))
    except Exception as e:
        try:  # Not every exception survives pickling (one whose arguments cannot be rebuilt).
            pickle.loads(pickle.dumps(e))
            error = e
        except Exception:
            error = None
        sender.send(("failed", error, traceback.format_exc()))
