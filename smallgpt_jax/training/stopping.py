"""Why training stops early: a signal, or a loss that is no longer finite.

- SIGTERM, SIGHUP (a closed terminal) or Ctrl-C saves a checkpoint, then
  stops: `StopSignals` catches the signal, and the loop asks `agreed_stop`
  after every step whether to save and stop (the same answer in every
  process). Before the first step there is nothing to save: a signal then
  stops the run at once (`StopNow`), whatever phase of the setup it is in.
- A NaN or infinite loss or gradient norm stops at once, saving nothing
  (`FiniteCheck`).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from smallgpt_jax import parallel
from smallgpt_jax.system.errors import UserError


class StopNow(BaseException):
    """A stop signal before training started: nothing to save, so the run
    ends at once. Not an Exception: no `except Exception` on the way (one that
    turns an Orbax error into a message, say) takes it for another error.
    Raised in a gc callback, where Python drops it, the command line's
    unraisable hook ends the process with its line and `exit_status`."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} before training started; "
                         "nothing new to save: run the same command again to go on.")
        self.signum, self.exit_status = signum, 128 + signum


class StopSignals:
    """Turns the first SIGTERM, SIGHUP or SIGINT into a request to save and stop.

    The training loop looks at `signum` after every step: when set, it saves a
    checkpoint and stops cleanly. With `at_once`, until `save_first()` (the
    setup: reading the data, compiling), the signal raises StopNow where the
    program is instead: a loop there that never asks (a slow preparation of
    something large) cannot make the signal wait. A second signal acts as it
    normally would (Ctrl-C twice quits at once, without saving). Handlers can
    only be installed from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self, at_once: bool = False):
        self.signum: int | None = None
        self.at_once = at_once
        self._previous: dict[int, Any] = {}

    def save_first(self) -> None:
        """From now on a signal waits for the step to end and is saved first;
        one that came before (and was not acted on yet) stops now."""
        self.at_once = False
        if self.signum is not None:
            raise StopNow(self.signum)

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
            if self.at_once:
                raise StopNow(signum)
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
    flags = multihost_utils.process_allgather(np.int32(stop.signum or 0))
    return int(np.max(flags)) or None


class FiniteCheck:
    """Stops training at the first step whose loss or gradient norm is NaN/inf.

    Reading a number back from the device waits for the step that computes
    it, and while the host waits it prepares nothing: on a GPU the device
    then idles through each step's host work (batch, dispatch). So the loop
    never waits between log points: `after_step` keeps the launched steps'
    metrics (small device arrays), and `flush()` reads them all at once and
    checks them in order. It runs before every log, evaluation and checkpoint,
    so a broken state is never evaluated or saved.
    """

    def __init__(self, newest_checkpoint):
        self.pending = []  # (step, metrics) launched but not checked yet.
        self.last_finite = None  # (step, loss) of the newest good step.
        self.newest_checkpoint = newest_checkpoint

    def after_step(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def flush(self) -> dict[str, float] | None:
        """Checks every step launched since the last flush; returns the newest
        one's metrics as floats (None if there was none)."""
        pending, self.pending = self.pending, []
        values = parallel.host_values([m for _, m in pending])  # One read for all.
        for (step, _), m in zip(pending, values):
            self._check(step, float(m["loss"].item()), float(m["grad_norm"].item()))
        return {k: float(v.item()) for k, v in values[-1].items()} if values else None

    def _check(self, step: int, loss: float, grad_norm: float) -> None:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.last_finite = (step, loss)
            return
        before = (f"last finite loss {self.last_finite[1]:.4f} at step {self.last_finite[0]}"
                  if self.last_finite else "no finite loss seen in this run")
        newest = self.newest_checkpoint()
        kept = (f"nothing was saved from it: the newest checkpoint is step {newest}"
                if newest is not None else "nothing was saved from it")
        raise UserError(
            f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm} "
            f"({before}); {kept}. Lower --config.train.learning_rate (or raise "
            "warmup_steps) and run again to resume.")
