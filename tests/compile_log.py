"""Which programs JAX compiles, with what shapes, on which thread.

JAX logs every program it lowers for compiling ("Compiling <name> with
global shapes and types ..."), at DEBUG unless `jax_log_compiles` is on;
`CompileLog` reads those records, so a test can say that nothing compiles
twice or that a phase compiles nothing. A persistent-cache hit is logged
too: it is a program the process had to get, if not from XLA.
"""

from __future__ import annotations

import collections
import logging
import re
import threading

_LOGGER = "jax._src.interpreters.pxla"
_MESSAGE = re.compile(r"Compiling (\S+) with global shapes and types (.*)\. Argument mapping")


class CompileLog(logging.Handler):
    """`with CompileLog() as log:` ... `log.compiles`: (name, shapes, thread, phase)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.compiles: list[tuple[str, str, str, str]] = []
        self.phase = ""  # Set by the test (e.g. "before step 1"); recorded with each compile.
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        found = _MESSAGE.match(record.getMessage())
        if found:
            with self._lock:
                self.compiles.append((found[1], found[2], record.threadName, self.phase))

    def __enter__(self) -> "CompileLog":
        logger = logging.getLogger(_LOGGER)
        self._saved = logger.level, logger.propagate
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # Not into pytest's captured log.
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger(_LOGGER)
        logger.removeHandler(self)
        logger.level, logger.propagate = self._saved

    def names(self, **where) -> list[str]:
        """Program names compiled (where thread=... / phase=... match)."""
        keys = {"thread": 2, "phase": 3}
        return [c[0] for c in self.compiles
                if all(c[keys[k]] == v for k, v in where.items())]

    def twice(self) -> list[tuple[str, str]]:
        """(name, shapes) compiled more than once: the same program again."""
        seen = collections.Counter((name, shapes) for name, shapes, _, _ in self.compiles)
        return [key for key, n in seen.items() if n > 1]
