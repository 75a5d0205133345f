"""Compiling what the first evaluation needs while the first steps train.

A run compiles its init and its train step before step 1 can run; the
evaluation program, the sampler's programs (prefill, decode step, window
step) and the attention picture's are needed only at the first evaluation.
Compiled there, the run stops for them (on CPU, for the 4-layer model, about
as long as the train step's compile). `Warmup` compiles them on a background
thread once step 1 is launched, while the device trains: XLA's compiler
releases the GIL, and JAX's caches are shared between threads, so the calls
at the evaluation find the programs ready.

Nothing here changes a number: the sampler and the picture run once on the
initial parameters and their output is dropped; the evaluation program is
only compiled (ahead of time, from shapes), never run, since in a multi-host
job it holds a collective every process must enter together. A failure here
is ignored: the call at the evaluation raises it again, where it is handled.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("smallgpt_jax")


class Warmup:
    """Runs tasks one after another on a daemon thread (`start(tasks)`)."""

    def __init__(self):
        self.tasks: list[Callable[[], object]] = []
        self.thread = threading.Thread(target=self._run, name="smallgpt-warmup", daemon=True)

    def _run(self) -> None:
        for task in self.tasks:
            try:
                task()
            except Exception as e:  # Raised again where the program is really used.
                log.debug("warm-up task failed: %r", e)
        self.tasks = []  # Done: what they hold (the initial parameters) is freed.

    def start(self, tasks: list[Callable[[], object]]) -> None:
        if self.thread.ident is None:  # Once.
            self.tasks = tasks
            self.thread.start()

    def wait(self) -> None:
        """Blocks until the tasks are done (at once if they were never started),
        so no program is compiled twice at the same time."""
        if self.thread.ident is not None:
            self.thread.join()

    close = wait  # On the way out, too: no compile left running at exit.
