"""What a run shows as it goes: a console progress bar and TensorBoard event
files (and the JSON files a run writes). What it says at its end is
training/run_summary.py.

Only process 0 of a multi-host job writes; the others get silent stand-ins.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.summary import image, scalar
from tensorboardX.summary import hparams as hparams_summary
from tensorboardX.summary import text as text_summary

from smallgpt_jax.config import flatten
from smallgpt_jax.system import console
from smallgpt_jax.system.console import clock
from smallgpt_jax.system.errors import UserError, write_atomic
from smallgpt_jax.tokenizers.tokenizer import LEARNED


class ProgressBar:
    """step, loss, tokens/s and ETA on one line (redrawn in a terminal; in a
    log file, printed as a new line about every 10% of the run).

    Evaluation pauses training; `paused(seconds)` reports each pause, so the
    step rate (and tokens/s) counts training only, and the ETA adds the
    evaluations still to come at their measured mean cost."""

    def __init__(self, total_steps: int, eval_every: int = 0, stream=sys.stderr,
                 progress_file: str | None = None):
        self.total = total_steps
        # The newest step, loss and ETA as JSON, for a watcher (a sweep's live lines).
        self.progress_file = progress_file
        self.eval_every = eval_every
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = self.step0 = None  # Timing starts after the first (compiling) step.
        self.last_print = -1
        self.paused_s, self.pauses = 0.0, 0  # Time spent evaluating since t0.

    def paused(self, seconds: float) -> None:
        if self.t0 is not None:
            self.paused_s += seconds
            self.pauses += 1

    def evals_left(self, step: int) -> int:
        """Evaluations after `step`: every eval_every steps, and one at the end."""
        if not self.eval_every:
            return 0
        left = self.total // self.eval_every - step // self.eval_every
        return left + (1 if self.total % self.eval_every and step < self.total else 0)

    def eta_s(self, step: int, now: float) -> tuple[float, bool]:
        """(seconds left or NaN if not known yet, whether the evaluations to
        come are left out: none was measured yet)."""
        done = step - (self.step0 or 0)
        if self.t0 is None or done <= 0:
            return math.nan, False
        train_s = (now - self.t0 - self.paused_s) / done * (self.total - step)
        if self.pauses:
            return train_s + self.paused_s / self.pauses * self.evals_left(step), False
        return train_s, bool(self.evals_left(step))

    def eta(self, step: int, now: float) -> str:
        seconds, without_evals = self.eta_s(step, now)
        return clock(seconds) + ("+eval" if without_evals else "")

    def update(self, step: int, loss: float, tokens_per_sec: float) -> None:
        if jax.process_index() != 0:
            return
        now = time.time()
        if self.t0 is None:
            self.t0, self.step0 = now, step
        frac = step / max(self.total, 1)
        bar = "#" * int(20 * frac)
        line = (f"step {step:>6}/{self.total} [{bar:<20}] loss {loss:.4f} "
                f"{tokens_per_sec:,.0f} tok/s ETA {self.eta(step, now)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            console.drawing(self.stream)
        elif int(10 * frac) != self.last_print or step == self.total:
            self.last_print = int(10 * frac)
            print(line, file=self.stream, flush=True)
        if self.progress_file:
            eta_s, without_evals = self.eta_s(step, now)
            write_progress(self.progress_file, {
                "step": step, "total": self.total, "loss": loss,
                "eta_s": None if math.isnan(eta_s) else eta_s,
                "eta_without_evals": without_evals, "time": now})

    def message(self, text: str) -> None:
        """A full line on the bar's stream; `console.say` clears the bar first."""
        console.say(text, self.stream)


# TensorBoard's first card: each evaluation's train and val loss on one chart,
# two lines told apart by colour and name ("char_cpu/train", "char_cpu/val"):
# TensorBoard draws one line per run for a tag, so each goes to a sub-run.
LOSS_RUNS = {"train": "eval/train_loss", "val": "eval/val_loss"}


def loss_tag(logdir: str) -> str:
    """'Loss/<run name>': capitalized, it sorts before every other tag, so its
    card opens TensorBoard's page; named for the run, a sweep gets one card
    per trial instead of all trials' lines on one. (A tag holds only letters,
    digits and "_-./": "lr=3e-3" becomes "lr_3e-3".)"""
    name = os.path.basename(os.path.normpath(os.path.abspath(logdir)))
    return "Loss/" + re.sub(r"[^-\w./]", "_", name)


def write_progress(path: str, progress: dict) -> None:
    """The progress file a watcher reads; a failed write costs only the watcher's view."""
    with contextlib.suppress(UserError, OSError):
        write_atomic(path, json.dumps(progress))


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
        self.purge_step = purge_step
        self._curves = {}  # LOSS_RUNS' writers, made at the first evaluation.
        if not self.enabled:
            return
        with self._guard():
            self._events = self._open(logdir)

    def _open(self, logdir: str) -> EventsWriter:
        events = EventsWriter(os.path.join(logdir, "events"))
        if self.purge_step is not None:
            # A resumed run tells TensorBoard to drop what an earlier (killed)
            # process logged from that step on, so curves do not double.
            events.write_event(Event(step=self.purge_step, file_version="brain.Event:2"))
            events.write_event(Event(
                step=self.purge_step, session_log=SessionLog(status=SessionLog.START)))
        return events

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

    def _add(self, summary, step: int, run: str | None = None) -> None:
        """Writes `summary` into the run's own events, or into sub-run `run`."""
        if self._events is None or self._failed:
            return
        with self._guard():
            if run is not None and run not in self._curves:
                os.makedirs(os.path.join(self.logdir, run), exist_ok=True)
                self._curves[run] = self._open(os.path.join(self.logdir, run))
            events = self._events if run is None else self._curves[run]
            events.write_event(Event(summary=summary, step=step, wall_time=time.time()))
            if time.time() - self._last_flush > self.FLUSH_SECS:
                self.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._add(scalar(name, float(value)), step)
        if all(tag in values for tag in LOSS_RUNS.values()):  # An evaluation's.
            tag = loss_tag(self.logdir)
            for run, source in LOSS_RUNS.items():
                self._add(scalar(tag, float(values[source])), step, run)

    def text(self, step: int, tag: str, text: str) -> None:
        # Markdown: indent by 4 spaces so TensorBoard keeps line breaks.
        self._add(text_summary(tag, "    " + text.replace("\n", "\n    ")), step)

    def image(self, step: int, tag: str, image_HWC) -> None:
        if self.enabled:  # Encoding a PNG is work; the other processes skip it.
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
        _, session_start, session_end = hparams_summary(hparams, metrics)
        for summary in (session_start, session_end):
            self._add(summary, step)

    def flush(self) -> None:
        if self._events is not None and not self._failed:
            with self._guard():
                for events in (self._events, *self._curves.values()):
                    events.flush()
            self._last_flush = time.time()

    def close(self) -> None:
        if self._events is None:
            return
        files = [self._events, *self._curves.values()]
        self._events, self._curves = None, {}
        if self._failed:  # The error is already on its way; do not raise another.
            for events in files:
                with contextlib.suppress(OSError):
                    events.close()
            return
        with self._guard():
            for events in files:
                events.close()


# How a run is carried out, not what is trained: left out of TensorBoard's HPARAMS.
NOT_HPARAMS = ("name", "compilation_cache", "parallel", "train.eval_every", "train.eval_steps",
               "train.log_every", "train.sample_tokens", "train.sample_every",
               "train.checkpoint_every", "train.keep_checkpoints", "train.resume_step",
               "train.allow_data_change", "data.cache_dir")


def flat_hparams(config_dict: dict) -> dict:
    """The hyperparameters of a config (as `config.to_dict()`, what config.json
    records), flattened to {'model.num_layers': 4, ...} for
    TensorBoard: the model, optimizer, data and tokenizer choices and the seed.
    Settings that do not change what is trained (NOT_HPARAMS), and data
    fields the run does not use (the dataset name when a path is given, BPE
    fields for other tokenizers), are left out."""
    flat = flatten(config_dict)
    unused = {"data.dataset" if flat.get("data.path") else "data.path"}
    if flat.get("data.tokenizer") not in LEARNED:  # Only these use data.vocab_size.
        unused |= {"data.vocab_size", "data.fit_max_chars"}
    if flat.get("data.tokenizer") != "bpe":
        unused.add("data.end_of_text")
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flat.items() if k not in NOT_HPARAMS and k not in unused}


def write_json(path: str, obj) -> None:
    """Atomic JSON write (temporary file, then rename); a failed write (a full
    disk) is a UserError."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))
