"""How a run ends: when it started (its wall time counts from there), the
summary of a run that finished before, and the text a finished run prints
last.
"""

from __future__ import annotations

import os
import shlex
import time

from smallgpt_jax.system.console import clock


_IMPORTED = time.time()  # Where the process's start cannot be read: close to it.


def process_started() -> float:
    """When this process started (on time.time()'s clock): a run's wall time
    counts from it, imports and data preparation included."""
    try:  # Linux: the start in clock ticks after boot, and the boot time.
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # Field 22, starttime.
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return min(boot + ticks / os.sysconf("SC_CLK_TCK"), _IMPORTED)
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


# TensorBoard's page with smoothing off: its default (0.6) on ten or so
# evaluation points draws the curve well above them.
TENSORBOARD_URL = "http://localhost:6006/?smoothing=0"


def runs_folder(workdir: str) -> str:
    """The folder that holds `workdir`: TensorBoard opened there names the run
    by its folder (opened on the workdir itself it names it ".")."""
    return os.path.dirname(os.path.normpath(workdir)) or "."


def end_of_run(final: dict, workdir: str) -> str:
    """What a finished run prints last: its result, where things are, what to run next."""
    q = shlex.quote(workdir)
    evals = (f", evaluation {clock(final['eval_time_s'])} of it" if "eval_time_s" in final
             else " (all runs of this workdir)")
    setup = (f", {clock(final['setup_time_s'])} before step 1" if "setup_time_s" in final
             and "eval_time_s" in final else "")  # (A resumed run's: this process's only.)
    took = clock(final.get("wall_time_s", 0.0))
    lines = [f"--- done: {final['steps']} steps in {took}{setup}{evals} ---"]
    if "eval/val_loss" in final:
        lines.append(f"final loss: train {final['eval/train_loss']:.4f}, "
                     f"val {final['eval/val_loss']:.4f} nats/token "
                     f"({final['eval/val_bpc']:.3f} bits per character)")
    lines += [f"checkpoints: {os.path.join(workdir, 'checkpoints')}",
              f"TensorBoard logs, config.json, summary.json: {workdir}",
              "next:",
              f"  python -m smallgpt_jax.sample --workdir={q} --prompt=\"ROMEO:\"",
              f"  tensorboard --logdir {shlex.quote(runs_folder(workdir))}"
              f"   # then open {TENSORBOARD_URL}"]
    lines += [f"  python -m smallgpt_jax.visualize --workdir={q} --what={what}"
              for what in ("attention", "curves", "embeddings")]
    return "\n".join(lines)


def finished_summary(meta) -> dict:
    """summary.json's content for a run whose final checkpoint's metadata is
    `meta` (a checkpoint/meta.Meta)."""
    return {**meta.eval, "steps": meta.step, "wall_time_s": float(meta.train_time_s or 0.0)}
