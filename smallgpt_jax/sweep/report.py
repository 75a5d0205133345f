"""A sweep's results: one table (best val loss first) printed and written to
runs/<sweep>/summary.csv and summary.md, and the description of the sweep
that TensorBoard's HPARAMS tab needs to compare the trials."""

from __future__ import annotations

import csv
import glob
import io
import math
import os

from smallgpt_jax.system.console import clock
from smallgpt_jax.sweep.load import Experiment
from smallgpt_jax.sweep.run import CONFLICT, RUNNING_ELSEWHERE, examine
from smallgpt_jax.system.errors import write_atomic

# Final metrics shown for each trial in TensorBoard's HPARAMS tab (scalar tags
# the training loop writes).
METRICS = ("eval/best_val_loss", "eval/val_loss", "eval/val_bpc", "eval/train_loss")


EXPERIMENT_SUFFIX = ".sweep"  # The event file of the sweep's description in a trial's folder.


def write_tensorboard_experiment(experiment: Experiment) -> None:
    """Tells TensorBoard's HPARAMS tab which columns this sweep has: the swept
    fields and the final metrics.

    Each trial records its whole config and metrics itself; this summary only
    picks, out of those, the fields that the sweep varies. TensorBoard takes
    it from any run, so it goes into each trial's own folder (an event file
    of its own): at runs/<sweep>/ it would make an empty run named ".".
    """
    from tensorboardX import SummaryWriter  # Only when a sweep really runs.
    from tensorboardX.summary import hparams as hparams_summary
    example = {}
    for key in experiment.keys:  # A value per key (its type names the column's).
        example[key] = next(t.overrides[key] for t in experiment.trials if key in t.overrides)
    exp, _, _ = hparams_summary(example, {m: 0.0 for m in METRICS})
    # Only the newest description counts (one at the sweep's root: older versions).
    for old in glob.glob(os.path.join(experiment.sweep_dir, "events.out.tfevents.*")) + [
            path for t in experiment.trials for path in glob.glob(
                os.path.join(t.workdir, "events.out.tfevents.*" + EXPERIMENT_SUFFIX))]:
        os.remove(old)
    for trial in experiment.trials:
        writer = SummaryWriter(trial.workdir, filename_suffix=EXPERIMENT_SUFFIX)
        writer.file_writer.add_summary(exp)
        writer.close()


def results_table(experiment: Experiment, statuses: dict[str, int]) -> list[dict]:
    """One row per trial (finished ones by best val loss, then the rest)."""
    keyed = []  # (sort key, row)
    for trial in experiment.trials:
        found = examine(trial)
        if found.finished:
            status = "done"
        elif found.conflict:
            status = found.clash
        elif found.damaged:
            status = "summary.json damaged"
        elif statuses.get(trial.name) == RUNNING_ELSEWHERE:
            status = "running in another process"
        elif statuses.get(trial.name, 0) not in (0, CONFLICT):  # (CONFLICT: shown above.)
            status = f"failed (exit {statuses[trial.name]})"
        else:
            status = "not finished"
        final = found.summary or {}  # Metrics are shown for finished trials only.
        best, bpc, wall = (final.get(k) for k in ("eval/best_val_loss", "eval/val_bpc",
                                                  "wall_time_s"))
        row = {"trial": trial.name}
        row.update({key: trial.overrides.get(key, "") for key in experiment.keys})
        row["best_val_loss"] = "" if best is None else f"{best:.4f}"
        row["val_bpc"] = "" if bpc is None else f"{bpc:.4f}"
        row["steps"] = final.get("steps", "")
        row["wall_time"] = "" if wall is None else clock(wall)
        row["status"] = status
        known = best is not None and math.isfinite(best)  # NaN would break the order.
        keyed.append(((not known, best if known else 0), row))
    keyed.sort(key=lambda entry: entry[0])
    return [row for _, row in keyed]


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write_tables(experiment: Experiment, rows: list[dict]) -> str:
    """Writes summary.csv and summary.md under runs/<sweep>/; returns the markdown."""
    os.makedirs(experiment.sweep_dir, exist_ok=True)
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(experiment.sweep_dir, "summary.csv"), out.getvalue())
    table = markdown_table(rows)
    write_atomic(os.path.join(experiment.sweep_dir, "summary.md"),
                 f"# Sweep {experiment.name}\n\n{experiment.path} on {experiment.config_path}; "
                 f"best val loss first.\n\n{table}\n")
    return table
