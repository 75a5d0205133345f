"""The one printer for a line to the user: `say(text)`.

Process 0 speaks for a multi-host job, so the others stay silent. A line
goes to stderr (stdout is for what a command produces, such as a sample)
and is flushed at once. A progress bar that is drawn in a terminal
registers its stream with `drawing`; `say` clears that line first, so a
message never lands in the middle of the bar. Errors are not said here:
`cli/app.fail` prints them on every process and sets the exit status.
"""

from __future__ import annotations

import sys
from typing import TextIO

_bar_stream: TextIO | None = None  # Where a progress bar's line is drawn, until cleared.


def is_process_0() -> bool:
    """True on process 0, and in a process that has not imported JAX (the
    `prepare` command needs no JAX, and such a process is alone)."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def drawing(stream: TextIO) -> None:
    """A progress bar has drawn its line on `stream` (a terminal) and left
    the cursor at its end; the next `say` clears it."""
    global _bar_stream
    _bar_stream = stream


def clear_bar() -> None:
    """Clears a progress bar's line drawn in a terminal, if any, so the next
    line (said, or an error) starts on a line of its own."""
    global _bar_stream
    if _bar_stream is not None:
        _bar_stream.write("\r\x1b[K")
        _bar_stream = None


def say(text: str, stream: TextIO | None = None) -> None:
    """`text` as one line on `stream` (stderr by default), from process 0 only."""
    if not is_process_0():
        return
    clear_bar()
    print(text, file=stream or sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """Seconds as MM:SS or H:MM:SS ('--:--' when not known yet)."""
    if seconds != seconds:  # NaN: not known yet.
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
