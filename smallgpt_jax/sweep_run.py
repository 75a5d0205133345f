"""Running a sweep's trials: each an ordinary `python -m smallgpt_jax.main`
in its own process and workdir, `parallel` at a time.

A trial is finished when its `summary.json` (written by the training loop
once the final checkpoint is on disk) records at least the trial's
`num_steps`. A failing trial does not stop the others.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Sequence

from smallgpt_jax import lock
from smallgpt_jax.corpus import clock
from smallgpt_jax.sweep_load import REPO_ROOT, Trial

RUNNING_ELSEWHERE = -1000  # A status for a trial another process was running.


def read_summary(workdir: str) -> dict | None:
    """The final metrics a finished run wrote (summary.json), or None."""
    try:
        with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def reached_end(summary: dict | None, trial: Trial) -> bool:
    """Does this (already read) summary.json record all of the trial's steps?
    (A run trained further than the sweep now asks counts: it cannot go back.)"""
    return summary is not None and summary.get("steps", -1) >= trial.num_steps


def is_finished(trial: Trial) -> bool:
    return reached_end(read_summary(trial.workdir), trial)


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

    Ctrl-C (or SIGTERM) gives each running trial one SIGTERM, so it saves a
    checkpoint and stops (it resumes on the next launch), then raises
    KeyboardInterrupt; a second Ctrl-C stops them at once, without saving.
    Trials run in their own session: the terminal's Ctrl-C reaches this
    runner alone, never a trial, which would take a forwarded signal as the
    second one and quit without its save.
    """
    pending, running, results = list(trials), {}, {}
    total, started = len(trials), 0

    def say(text):
        print(text, file=out, flush=True)

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
                log_path = os.path.join(trial.workdir, "train.log")
                try:
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
                say(f"[{index}/{total}] {_outcome(trial, status, time.time() - t0)}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(running.values(), say)
        raise
    return results


def _outcome(trial: Trial, status: int, seconds: float) -> str:
    """'done    NAME in 00:12: best val loss 1.2345', or why it failed."""
    took = clock(seconds)
    if status == 0:
        best = (read_summary(trial.workdir) or {}).get("eval/best_val_loss")
        result = f"best val loss {best:.4f}" if best is not None else "no summary.json written"
        return f"done    {trial.name} in {took}: {result}"
    if status < 0:  # Killed by a signal: its log's last line is not why.
        reason = f"killed by signal {-status} ({signal.strsignal(-status)})"
    else:
        reason = _last_error(os.path.join(trial.workdir, "train.log"))
    return f"FAILED  {trial.name} (exit {status}) after {took}: {reason}"


def _stop(running, say) -> None:
    """One SIGTERM to each running trial, then waits for their saves; a second
    Ctrl-C while waiting kills them."""
    running = list(running)
    if running:
        say(f"stopping {len(running)} running trial(s): each saves a checkpoint first "
            "(Ctrl-C again to stop them at once, without saving)...")
    for _, proc, _, _, _ in running:
        proc.terminate()
    try:
        for _, proc, _, _, _ in running:
            proc.wait()
    except KeyboardInterrupt:
        for _, proc, _, _, _ in running:
            proc.kill()
            proc.wait()
    for _, _, log, _, _ in running:
        log.close()
