"""What a run shows: a console progress bar and TensorBoard event files.

Only process 0 of a multi-host job writes; the others get silent stand-ins.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax

from smallgpt_jax.config import flatten


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
                f"{tokens_per_sec:,.0f} tok/s ETA {_fmt(eta)}")
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


def _fmt(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet.
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Writer:
    """Writes TensorBoard scalars, text and hparams under the workdir."""

    def __init__(self, logdir: str, purge_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # Only process 0 needs it.
            # purge_step: a resumed run tells TensorBoard to drop what an earlier
            # (killed) process logged from that step on, so curves do not double.
            self._tb = SummaryWriter(logdir, flush_secs=10, purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self._tb:
            # Markdown: indent by 4 spaces so TensorBoard keeps line breaks.
            self._tb.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def image(self, step: int, tag: str, image_HWC) -> None:
        if self._tb:
            self._tb.add_image(tag, image_HWC, step, dataformats="HWC")

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
        if self._tb:
            from tensorboardX.summary import hparams as hparams_summary
            _, session_start, session_end = hparams_summary(hparams, metrics)
            for summary in (session_start, session_end):
                self._tb.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        if self._tb:
            self._tb.close()


def flat_hparams(config) -> dict:
    """The config flattened to {'model.num_layers': 4, ...} for TensorBoard."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(config.to_dict()).items()}


def write_json(path: str, obj) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)
