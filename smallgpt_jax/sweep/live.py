"""A running sweep's live view: one line per running trial (step/total, loss,
ETA) and the whole sweep's ETA.

Each trial's training loop writes `progress.json` in its workdir at every log
step (training/reporting.ProgressBar); the runner reads it. In a terminal
the lines are redrawn in place; in a log file they are printed now and then.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TextIO

from smallgpt_jax.system.console import clock

PROGRESS = "progress.json"
LOG_EVERY_S = 60.0  # How often the lines are printed when the output is not a terminal.


@dataclasses.dataclass
class Running:
    """What the view knows of a running trial."""

    name: str
    workdir: str
    started: float  # time.time() when its process started.


def read_progress(workdir: str, since: float) -> dict | None:
    """The trial's newest progress written after `since` (an older file is an
    earlier launch's), or None: not trained a step yet, or unreadable."""
    try:
        with open(os.path.join(workdir, PROGRESS), encoding="utf-8") as f:
            progress = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(progress, dict) or not progress.get("time", 0) >= since:
        return None
    return progress


def trial_line(trial: Running, progress: dict | None, now: float, width: int) -> str:
    """'  lr=1e-3     step  120/500 loss 2.1345 ETA 01:23 (running 00:40)'."""
    name = trial.name.ljust(width)
    running = clock(now - trial.started)
    if progress is None:  # Importing, preparing data, compiling: no step yet.
        return f"  {name} starting (running {running}; before step 1)"
    total = progress.get("total", 0)
    eta = progress.get("eta_s")
    shown = "--:--" if eta is None else clock(eta) + (
        "+eval" if progress.get("eta_without_evals") else "")
    return (f"  {name} step {progress.get('step', 0):>{len(str(total))}}/{total} "
            f"loss {progress.get('loss', float('nan')):.4f} ETA {shown} (running {running})")


def sweep_eta(running: list[tuple[float, float | None]], durations: list[float],
              waiting: int, parallel: int) -> float | None:
    """Seconds until every trial is done, or None if not known yet.

    running: (seconds since start, seconds left or None) of each running trial;
    durations: how long the trials finished in this launch took. A waiting
    trial, or a running one before its first step, is expected to take as long
    as the mean finished one (or, before any finished, the mean projected length
    of the running ones); the work left is
    shared by `parallel` slots, and the sweep ends no sooner than its longest
    running trial."""
    known = [(elapsed, eta) for elapsed, eta in running if eta is not None]
    projected = durations or [elapsed + eta for elapsed, eta in known]
    if len(known) < len(running) and not durations:
        return None
    if waiting and not projected:
        return None
    each = sum(projected) / len(projected) if projected else 0.0
    # A trial not at its first step yet: as long as a finished one, less its time so far.
    left = [eta if eta is not None else max(each - elapsed, 0.0) for elapsed, eta in running]
    return max([*left, (sum(left) + waiting * each) / max(parallel, 1)])


class Board:
    """The live lines on `out`: redrawn in place in a terminal, printed every
    LOG_EVERY_S seconds otherwise. `clear()` before printing anything else."""

    def __init__(self, out: TextIO, total: int, parallel: int):
        self.out, self.total, self.parallel = out, total, parallel
        try:
            self.tty = out.isatty()
        except (AttributeError, OSError, ValueError):  # A closed or a stand-in stream.
            self.tty = False
        self.drawn = 0  # Lines on the screen now (terminal only).
        self.last = 0.0  # When the lines were last printed (not a terminal).
        self.durations: list[float] = []  # Of the trials finished in this launch.

    def finished(self, seconds: float) -> None:
        self.durations.append(seconds)

    def lines(self, running: list[Running], waiting: int, now: float) -> list[str]:
        progress = [read_progress(t.workdir, t.started) for t in running]
        width = max((len(t.name) for t in running), default=0)
        rows = [trial_line(t, p, now, width) for t, p in zip(running, progress)]
        eta = sweep_eta([(now - t.started, p.get("eta_s") if p else None)
                         for t, p in zip(running, progress)],
                        self.durations, waiting, self.parallel)
        done = self.total - len(running) - waiting
        return [f"sweep: {done}/{self.total} trials ended, {len(running)} running, "
                f"{waiting} waiting; ETA {'--:--' if eta is None else clock(eta)}"] + rows

    def clear(self) -> None:
        if self.drawn:
            self.out.write("\x1b[F\x1b[K" * self.drawn)  # Up a line and clear it, each.
            self.out.flush()
            self.drawn = 0

    def show(self, running: list[Running], waiting: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not running:
            return
        if not self.tty:
            if now - self.last < LOG_EVERY_S:
                return
            self.last = now
        lines = self.lines(running, waiting, now)
        self.clear()
        self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()
        if self.tty:
            self.drawn = len(lines)
