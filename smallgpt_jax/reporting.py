"""What a run shows: a console progress bar and TensorBoard event files.

Only process 0 of a multi-host job writes; the others get silent stand-ins.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import jax

from smallgpt_jax.config import flatten
from smallgpt_jax.corpus import clock
from smallgpt_jax.errors import UserError, writing


class ProgressBar:
    """step, loss, tokens/s and ETA on one line (redrawn in a terminal; in a
    log file, printed as a new line about every 10% of the run)."""

    def __init__(self, total_steps: int, stream=sys.stderr):
        self.total = total_steps
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = self.step0 = None  # Timing starts after the first (compiling) step.
        self.last_print = -1

    def update(self, step: int, loss: float, tokens_per_sec: float) -> None:
        if jax.process_index() != 0:
            return
        now = time.time()
        if self.t0 is None:
            self.t0, self.step0 = now, step
        done = step - self.step0
        eta = (now - self.t0) / done * (self.total - step) if done > 0 else float("nan")
        frac = step / max(self.total, 1)
        bar = "#" * int(20 * frac)
        line = (f"step {step:>6}/{self.total} [{bar:<20}] loss {loss:.4f} "
                f"{tokens_per_sec:,.0f} tok/s ETA {clock(eta)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        elif int(10 * frac) != self.last_print or step == self.total:
            self.last_print = int(10 * frac)
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Prints a full line without garbling the bar."""
        if jax.process_index() != 0:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        print(text, file=self.stream, flush=True)


class Writer:
    """Writes TensorBoard scalars, text, images and hparams under the workdir.

    Events go to the file from the calling thread (tensorboardX's
    `SummaryWriter` hands them to a background thread instead: when a write
    fails there, e.g. on a full disk, that thread dies and the training loop
    then blocks forever on its full queue). Here a failed write raises a
    UserError at once. The writes are small and buffered, so this costs
    nothing measurable. Use as a context manager, or call `close()`.
    """

    FLUSH_SECS = 10  # A live TensorBoard sees new points at least this often.

    def __init__(self, logdir: str, purge_step: int | None = None):
        self.enabled = jax.process_index() == 0  # Only process 0 writes.
        self.logdir = logdir
        self._events = None
        self._failed = False
        self._last_flush = time.time()
        if not self.enabled:
            return
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        self._event = Event  # Only process 0 imports tensorboardX.
        with self._guard():
            self._events = EventsWriter(os.path.join(logdir, "events"))
            if purge_step is not None:
                # A resumed run tells TensorBoard to drop what an earlier (killed)
                # process logged from that step on, so curves do not double.
                self._events.write_event(Event(step=purge_step, file_version="brain.Event:2"))
                self._events.write_event(Event(
                    step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # Already failing: close quietly, keep the first error.
            self._failed = True
        self.close()

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except OSError as e:
            self._failed = True
            raise UserError(
                f"cannot write TensorBoard logs in {self.logdir} ({e.strerror or e}); free "
                "disk space (or fix the directory), then run the same command again to "
                "resume from the newest checkpoint.") from e

    def _add(self, summary, step: int) -> None:
        if self._events is None or self._failed:
            return
        with self._guard():
            self._events.write_event(
                self._event(summary=summary, step=step, wall_time=time.time()))
            if time.time() - self._last_flush > self.FLUSH_SECS:
                self.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboardX.summary import scalar
        for name, value in values.items():
            self._add(scalar(name, float(value)), step)

    def text(self, step: int, tag: str, text: str) -> None:
        from tensorboardX.summary import text as text_summary
        # Markdown: indent by 4 spaces so TensorBoard keeps line breaks.
        self._add(text_summary(tag, "    " + text.replace("\n", "\n    ")), step)

    def image(self, step: int, tag: str, image_HWC) -> None:
        if self.enabled:  # Encoding a PNG is work; the other processes skip it.
            from tensorboardX.summary import image
            self._add(image(tag, image_HWC, dataformats="HWC"), step)

    def hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        """Records the run's hyperparameters for TensorBoard's HPARAMS tab.

        The hparams plugin reads each metric's value from this run's scalars
        with the same tag, so these are written into the run's own directory
        (tensorboardX's add_hparams would start a separate sub-run). Only the
        run's own record (session start and end) is written, not an
        "experiment" summary: with several runs under one logdir TensorBoard
        would use one arbitrary run's; without it, TensorBoard builds the
        table from all runs and lists the hparams that differ first (a sweep
        writes its own experiment summary naming its swept fields).
        """
        from tensorboardX.summary import hparams as hparams_summary
        _, session_start, session_end = hparams_summary(hparams, metrics)
        for summary in (session_start, session_end):
            self._add(summary, step)

    def flush(self) -> None:
        if self._events is not None and not self._failed:
            with self._guard():
                self._events.flush()
            self._last_flush = time.time()

    def close(self) -> None:
        if self._events is None:
            return
        events, self._events = self._events, None
        if self._failed:  # The error is already on its way; do not raise another.
            try:
                events.close()
            except OSError:
                pass
            return
        with self._guard():
            events.close()


def flat_hparams(config) -> dict:
    """The config flattened to {'model.num_layers': 4, ...} for TensorBoard."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(config.to_dict()).items()}


def write_json(path: str, obj) -> None:
    """Atomic JSON write (temporary file, then rename); a failed write (a full
    disk) is a UserError."""
    tmp = path + ".tmp"
    with writing(path):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
        os.replace(tmp, path)
