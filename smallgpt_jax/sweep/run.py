"""Running a sweep's trials: each an ordinary `python -m smallgpt_jax.main`
in its own process and workdir, `parallel` at a time.

A trial is finished when its folder's `config.json` holds the trial's own
settings and its `summary.json` (written by the training loop once the final
checkpoint is on disk) records at least the trial's `num_steps`. A folder
that ran other settings is never counted as the trial's, nor trained on
(`examine`). A failing trial does not stop the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from smallgpt_jax.checkpoint.workdir import CHECKPOINT_DIR, STEP, read_json
from smallgpt_jax.config import flatten
from smallgpt_jax.sweep import live
from smallgpt_jax.sweep.load import REPO_ROOT, Trial
from smallgpt_jax.system.console import clock
from smallgpt_jax.system import console, lock

RUNNING_ELSEWHERE = -1000  # A status for a trial another process was running.
CONFLICT = -1001  # A status for a trial whose folder turned out to hold another run.
DAMAGED = ".damaged"  # A summary.json that cannot be read is set aside with this suffix.
SHOWN = ("eval/best_val_loss", "eval/val_bpc", "wall_time_s")  # Read from summary.json.


def read_summary(workdir: str) -> tuple[dict | None, str | None]:
    """(the final metrics a finished run wrote in summary.json, None); (None,
    None) if there is none; (None, why) if it cannot be read or is not one."""
    content, why = read_json(os.path.join(workdir, "summary.json"))
    if why == "is missing":
        return None, None
    if why is None and not _is_summary(content):
        why = "is damaged"
    return (None, why) if why else (content, None)


def _is_summary(content: Any) -> bool:
    """Has it what the sweep reads, with the types the training loop writes?"""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return (isinstance(content, dict) and type(content.get("steps")) is int
            and all(number(content[k]) for k in SHOWN if k in content)
            and math.isfinite(content.get("wall_time_s", 0)))  # A time, shown as MM:SS.


def config_changes(saved: dict, trial: Trial) -> list[str]:
    """'field: old -> new' for each field where a folder's config.json differs
    from the trial's config. Fields only one side knows (added to the code
    since) are left out, as on resume, and so is resume_step (where a run
    started, not what it is); model.dtype='auto' is resolved by the run, so
    any saved dtype matches it."""
    flat = flatten(saved)
    changes = []
    for field, new in trial.config.items():
        if (field not in flat or field == "train.resume_step"
                or (field == "model.dtype" and new == "auto")):
            continue
        # Compared as JSON writes them (a tuple is saved as a list; NaN == NaN).
        if json.dumps(flat[field], sort_keys=True) != json.dumps(new, sort_keys=True):
            changes.append(f"{field}: {flat[field]!r} -> {new!r}")
    return changes


@dataclasses.dataclass
class Found:
    """What a trial's folder holds, for the sweep."""

    summary: dict | None = None  # The final metrics: set only when finished, with its settings.
    conflict: str = ""  # Why the folder is not this trial's ('ran with other settings (...)').
    clash: str = ""  # The same in a few words, the table's status.
    damaged: str = ""  # Its summary.json cannot be read: set aside, the trial runs again.

    @property
    def finished(self) -> bool:
        return self.summary is not None


def examine(trial: Trial) -> Found:
    """Is the trial's folder new, unfinished, finished, or another run's?"""
    if os.path.lexists(trial.workdir) and not os.path.isdir(trial.workdir):
        return Found(conflict="is a file, not a folder", clash="its folder is a file")
    saved, why = read_json(os.path.join(trial.workdir, "config.json"))
    if why == "is missing":
        if _has_results(trial.workdir):  # Not a run that failed before it started.
            return Found(conflict="has results but no config.json: the settings it ran "
                         "with are unknown", clash="its settings unknown")
        return Found()
    if why or not _is_config(saved):
        return Found(conflict=f"has a config.json that {why or 'is damaged'}: the settings "
                     "it ran with are unknown", clash="its settings unknown")
    changes = config_changes(saved, trial)
    if changes:
        more = f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
        return Found(conflict=f"ran with other settings ({'; '.join(changes[:4])}{more})",
                     clash="other settings in its folder")
    summary, why = read_summary(trial.workdir)
    if why:
        return Found(damaged=f"{os.path.join(trial.workdir, 'summary.json')} {why}")
    if summary is not None and summary["steps"] >= trial.num_steps:
        return Found(summary=summary)
    return Found()


def _is_config(content: Any) -> bool:
    """Is it a config.json as a run writes it? ('{}' would match any trial.)"""
    return isinstance(content, dict) and all(
        isinstance(content.get(part), dict) for part in ("model", "train", "data"))


def _has_results(workdir: str) -> bool:
    """A summary.json or a complete checkpoint: what a run leaves once it trained."""
    if os.path.lexists(os.path.join(workdir, "summary.json")):
        return True
    try:
        return any(STEP.match(e) for e in os.listdir(os.path.join(workdir, CHECKPOINT_DIR)))
    except OSError:
        return False


def is_finished(trial: Trial) -> bool:
    return examine(trial).finished


def set_aside(trial: Trial) -> str:
    """Renames a damaged summary.json out of the way (the rerun of a finished
    trial writes it again from the final checkpoint, but only where there is
    none); returns the new path."""
    path = os.path.join(trial.workdir, "summary.json")
    os.replace(path, path + DAMAGED)
    return path + DAMAGED


def _trial_env(parallel: int = 1) -> dict[str, str]:
    """The trials' environment: ours, with this package importable.

    Trials running side by side share the machine's accelerators: JAX would
    otherwise give the first one 75% of every GPU's memory up front and the
    next would run out, so with parallel > 1 each allocates what it uses.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def _last_error(log_path: str) -> str:
    """The line that best explains a failure: the last `error: ...` line, or
    else the last line of the log."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def run_trials(trials: Sequence[Trial], parallel: int, out=sys.stdout) -> dict[str, int]:
    """Runs the trials, `parallel` at a time; returns {trial name: exit status}.

    Each trial's output goes to <workdir>/train.log (appended, so a resumed
    trial keeps its history). A trial whose workdir another process holds
    (an earlier launch's trial still running) is not started again.

    Ctrl-C (or SIGTERM, or any error that ends the runner) gives each running
    trial one SIGTERM, so it saves a checkpoint and stops (it resumes on the
    next launch), then raises again; a second Ctrl-C stops them at once,
    without saving. Output that cannot be written (a closed terminal) is
    skipped: the runner goes on.
    Trials run in their own session: the terminal's Ctrl-C reaches this
    runner alone, never a trial, which would take a forwarded signal as the
    second one and quit without its save.
    """
    pending, running, results = list(trials), {}, {}
    total, started = len(trials), 0
    board = live.Board(out, total, parallel)

    def say(text):
        # A closed terminal or a `| head` that stopped reading: the trials and
        # the tables matter more than the console, so the runner goes on.
        with contextlib.suppress(OSError):
            board.clear()
            console.say(text, out)

    shown = 0.0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                started += 1
                holder = lock.holder(trial.workdir)
                if holder:  # Two runs on one workdir would delete each other's saves.
                    say(f"[{started}/{total}] skipped {trial.name}: another process is "
                        f"running it ({holder}); launch again once it has finished.")
                    results[trial.name] = RUNNING_ELSEWHERE
                    continue
                found = examine(trial)  # Again: the folder may have changed meanwhile.
                if found.conflict or found.finished:
                    say(f"[{started}/{total}] skipped {trial.name}: " + (
                        f"{trial.workdir} {found.conflict}." if found.conflict
                        else "another process finished it."))
                    results[trial.name] = CONFLICT if found.conflict else 0
                    continue
                log_path = os.path.join(trial.workdir, "train.log")
                try:
                    if found.damaged:
                        say(f"[{started}/{total}] {found.damaged}: set aside as "
                            f"{set_aside(trial)}; the trial runs again to write it anew.")
                    os.makedirs(trial.workdir, exist_ok=True)
                    log = open(log_path, "a", encoding="utf-8")
                    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                              f"{shlex.join(trial.command)}\n")
                    log.flush()
                except OSError as e:  # A failed trial like any other: the rest still run.
                    say(f"[{started}/{total}] FAILED  {trial.name}: cannot write "
                        f"{trial.workdir} ({e.strerror or e})")
                    results[trial.name] = 1
                    continue
                proc = subprocess.Popen(trial.command, stdout=log, stderr=subprocess.STDOUT,
                                        env=_trial_env(parallel), start_new_session=True)
                running[trial.name] = (trial, proc, log, time.time(), started)
                say(f"[{started}/{total}] started {trial.name}  (log: {log_path})")
            for name, (trial, proc, log, t0, index) in list(running.items()):
                status = proc.poll()
                if status is None:
                    continue
                log.close()
                del running[name]
                results[name] = status
                board.finished(time.time() - t0)
                say(f"[{index}/{total}] {_outcome(trial, status, time.time() - t0)}")
            if time.time() - shown >= 1.0:  # The live lines, once a second at most.
                shown = time.time()
                with contextlib.suppress(OSError):
                    board.show([live.Running(t.name, t.workdir, t0)
                                for t, _, _, t0, _ in running.values()], len(pending))
            time.sleep(0.2)
    except BaseException:  # Ctrl-C, SIGTERM, SIGHUP, or anything else: none left behind.
        _stop(running.values(), say)
        raise
    finally:
        with contextlib.suppress(OSError):
            board.clear()
    return results


def _outcome(trial: Trial, status: int, seconds: float) -> str:
    """'done    NAME in 00:12: best val loss 1.2345', or why it failed."""
    took = clock(seconds)
    if status == 0:
        best = (read_summary(trial.workdir)[0] or {}).get("eval/best_val_loss")
        result = f"best val loss {best:.4f}" if best is not None else "no summary.json written"
        return f"done    {trial.name} in {took}: {result}"
    if status < 0:  # Killed by a signal: its log's last line is not why.
        reason = f"killed by signal {-status} ({signal.strsignal(-status)})"
    else:
        reason = (_last_error(os.path.join(trial.workdir, "train.log"))
                  or f"its train.log is gone (was {trial.workdir} removed?)")
    return f"FAILED  {trial.name} (exit {status}) after {took}: {reason}"


def _stop(running, say) -> None:
    """One SIGTERM to each running trial, then waits for their saves; a second
    Ctrl-C kills them, wherever it comes (even before every trial got its
    SIGTERM: none is left running on its own)."""
    running = list(running)
    try:
        for _, proc, _, _, _ in running:
            proc.terminate()
        if running:
            say(f"stopping {len(running)} running trial(s): each saves a checkpoint first "
                "(Ctrl-C again to stop them at once, without saving)...")
        for _, proc, _, _, _ in running:
            proc.wait()
    except KeyboardInterrupt:
        for _, proc, _, _, _ in running:
            proc.kill()  # (Nothing happens to one that has ended.)
        for _, proc, _, _, _ in running:
            proc.wait()
    finally:
        for _, _, log, _, _ in running:
            log.close()
