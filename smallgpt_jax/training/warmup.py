"""Compiling what the first evaluation needs while the first steps train.

A run compiles its init and its train step before step 1 can run; the
evaluation program, the checksum program of a save, the sampler's programs
(prefill, decode step, window step) and the attention picture's are needed
only at the first evaluation and save.
Compiled there, the run stops for them (on CPU, for the 4-layer model, about
as long as the train step's compile). `Warmup` compiles them on a background
thread once step 1 is launched, while the device trains: XLA's compiler
releases the GIL, and JAX's caches are shared between threads, so the calls
at the evaluation find the programs ready.

Nothing here changes a number: the sampler and the picture run once on the
initial parameters, placed as the run's own copy will be
(`parallel.on_first_device`, so the programs compiled here are the ones the
run calls), and their output is dropped; the evaluation and checksum
programs are only compiled (ahead of time, from shapes), never run, since in a multi-host
job it holds a collective every process must enter together. A failure here
is ignored: the call at the evaluation raises it again, where it is handled.

The first evaluation waits only for the programs it uses (`wait(name)`):
its losses for the evaluation program, a save for the checksum program, a
sample and a picture for all of them.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("smallgpt_jax")


class Warmup:
    """Runs named tasks one after another on a daemon thread (`start(tasks)`);
    `wait(name)` waits for one of them and those before it."""

    def __init__(self):
        self.tasks: dict[str, Callable[[], object]] = {}
        self.done: dict[str, threading.Event] = {}
        self.thread = threading.Thread(target=self._run, name="smallgpt-warmup", daemon=True)

    def _run(self) -> None:
        for name, task in self.tasks.items():
            try:
                task()
            except Exception as e:  # Raised again where the program is really used.
                log.debug("warm-up task %s failed: %r", name, e)
            finally:
                self.done[name].set()

    def start(self, tasks: dict[str, Callable[[], object]]) -> None:
        if self.thread.ident is None:  # Once.
            self.tasks = tasks
            self.done = {name: threading.Event() for name in tasks}
            self.thread.start()

    def wait(self, name: str | None = None) -> None:
        """Blocks until task `name` is done (all of them without a name; at
        once if they were never started, or there is no such task), so no
        program is compiled twice at the same time: the first evaluation's
        losses need the evaluation program, not the sampler's."""
        if self.thread.ident is None:
            return
        if name is None:
            self.thread.join()
        elif name in self.done:
            self.done[name].wait()

    def close(self) -> None:  # On the way out, too: no compile left running at exit.
        self.wait()
