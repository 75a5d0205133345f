"""Stopping on a signal: SIGTERM or Ctrl-C saves a checkpoint, then stops.

`StopSignals` catches the signal; the training loop asks `agreed_stop` after
every step whether to save and stop (the same answer in every process).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np


class StopSignals:
    """Turns the first SIGTERM or SIGINT into a request to save and stop.

    The training loop looks at `signum` after every step: when set, it saves a
    checkpoint and stops cleanly. A second signal acts as it normally would
    (Ctrl-C twice quits at once, without saving). Handlers can only be
    installed from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum  # No printing here: the loop says what happens.
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self._restore()
        if callable(previous):  # e.g. Python's SIGINT handler: KeyboardInterrupt.
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)


def agreed_stop(stop: StopSignals, step: int, every: int) -> int | None:
    """The signal to stop on after `step`, the same in every process (or None).

    One process acts on its own signal at once. In a multi-host job a signal
    reaches the processes at slightly different moments (a cluster's
    scheduler, a preemption); one process saving (a collective) while the
    others run the next step (another collective) would wait for each other
    forever. So every `every` steps, all processes share their flags and stop
    together if any was signalled.
    """
    if jax.process_count() == 1:
        return stop.signum  # Read once: a signal may land at any moment.
    if step % every:
        return None
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(stop.signum or 0))
    return int(np.max(flags)) or None
