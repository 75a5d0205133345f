"""Hyperparameter sweeps: many ordinary training runs, compared side by side.

An experiment file (`experiments/*.py`) names a base config and its trials:

    from smallgpt_jax import sweep

    CONFIG = "configs/char_cpu.py"           # the base config of every trial
    FIXED = {"train.num_steps": 500}         # optional: set in every trial
    def get_sweep():                         # one dict of overrides per trial
        return sweep.product(sweep.values("train.learning_rate", [3e-4, 1e-3]),
                             sweep.values("model.dropout", [0.0, 0.1]))

`values`, `product` and `zipit` build such lists; a plain list of dicts works too.

    python -m smallgpt_jax.sweep experiments/lr_sweep.py [--parallel=N] [--dry-run]
        [--runs_dir=runs] [--config.KEY=VALUE ...]   (or ./launch.sh experiments/...)

runs every trial as an ordinary `python -m smallgpt_jax.main` in its own
workdir `runs/<sweep>/<trial>` (the trial name is built from its overrides,
e.g. `lr=1e-3`; its console output goes to `train.log` there). While they
run, a line per running trial shows its step, loss and ETA, under the whole
sweep's ETA (sweep/live.py). `--dry-run` prints the trials' commands; a quick
try of experiments/lr_sweep.py (4 trials of 500 steps) is
`--runs_dir=runs/quick --config.train.num_steps=100`. Everything is checked before
the first trial starts (sweep/load.py). A trial is finished when its folder's
`config.json` holds the trial's settings and its `summary.json` records at
least the trial's `num_steps`; launching the same sweep again skips finished
trials and re-runs the others in the same workdir, which resumes them from
their checkpoints (a trial another process is still running, e.g. left by a
runner that was killed, is not started twice). A trial folder that ran other
settings (the sweep file, FIXED or --config.* changed since; another sweep of
the same name) is refused before anything runs, with the fields that differ:
its results are not this sweep's. Use another --runs_dir, or move the folder
away to run the trial again. A summary.json that cannot be read is set aside
(summary.json.damaged) and its trial run again, which writes it anew from the
final checkpoint. One runner per sweep folder at a time (sweep.lock). A
failing trial does not stop the others; the exit status is 1 if any failed.
Ctrl-C gives each running trial one SIGTERM: it saves a checkpoint and stops
(a second Ctrl-C stops the trials at once, without saving). sweep/run.py
runs the trials.

At the end a table (best val loss first) is printed and written to
`runs/<sweep>/summary.csv` and `summary.md`; `tensorboard --logdir runs/<sweep>`
shows the trials' curves together, and their overrides and final metrics in
the HPARAMS tab (sweep/report.py).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from typing import Callable, Sequence

from smallgpt_jax.cli import app as cli
from smallgpt_jax.system import runtime

if __name__ == "__main__":  # Before the slower imports below.
    cli.quiet_ctrl_c()

from absl import flags  # noqa: E402

from smallgpt_jax.sweep import report as sweep_report, run as sweep_run  # noqa: E402
from smallgpt_jax.sweep.load import Experiment, load_experiment  # noqa: E402
from smallgpt_jax.system import lock  # noqa: E402
from smallgpt_jax.system.errors import UserError, check_writable_dir  # noqa: E402


# --- Command line -----------------------------------------------------------

def _define_flags() -> None:
    """Defined only when run as a command: experiment files import this module."""
    flags.DEFINE_integer("parallel", 1, "Trials run at once.")
    flags.DEFINE_boolean("dry_run", False, "Print the trials' commands; run nothing.")
    flags.DEFINE_string("runs_dir", "runs", "Trials go to RUNS_DIR/<sweep>/<trial>.")


# Spellings the docs use besides absl's own: `--dry-run`, `--runs-dir`.
_SPELLINGS = {"--dry-run": "--dry_run", "--runs-dir": "--runs_dir"}


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the arguments for absl, "KEY=VALUE" of each --config.KEY=VALUE). The
    overrides are set in every trial: the sweep file names the config, so
    they are read with it by config_files.load_config, not by absl."""
    rest, overrides = [], []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name.startswith("--config."):
            if not eq:
                raise UserError(f"unexpected argument {arg!r}; extra settings look like "
                                "--config.train.num_steps=100. Try --help.")
            overrides.append(arg[len("--config."):])
        else:
            rest.append(_SPELLINGS.get(name, name) + eq + value)
    return rest, overrides


LOCK = "sweep.lock"  # One runner per sweep folder: two would run the same trials twice.


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sweep(path: str, overrides: Sequence[str] = (), runs_dir: str = "runs",
              parallel: int = 1, dry_run: bool = False) -> int:
    """Checks the sweep file, runs its unfinished trials and writes the
    tables; returns the exit status (UserError on bad input)."""
    experiment = load_experiment(path, runs_dir, overrides)
    if dry_run:
        return _dry_run(experiment, _examine(experiment))
    check_writable_dir(experiment.sweep_dir, experiment.sweep_dir,
                       "choose a --runs_dir you can write to")
    with lock.hold_file(os.path.join(experiment.sweep_dir, LOCK), _refuse(experiment)):
        return _run(experiment, _examine(experiment), parallel)



def _refuse(experiment: Experiment) -> Callable[[str], None]:
    def refuse(who: str) -> None:
        raise UserError(f"another sweep runs in {experiment.sweep_dir} ({who}); wait for it "
                        "to finish or stop it, or use another --runs_dir.")
    return refuse


def _examine(experiment: Experiment) -> dict[str, sweep_run.Found]:
    """What each trial's folder holds; UserError if one holds a run with other
    settings: its results are another sweep's (or another launch's)."""
    found = {t.name: sweep_run.examine(t) for t in experiment.trials}
    clashes = [t for t in experiment.trials if found[t.name].conflict]
    if clashes:
        first = clashes[0]
        others = f" ({len(clashes)} of {len(found)} trials clash)" if len(clashes) > 1 else ""
        raise UserError(
            f"sweep {experiment.name}: trial {first.name} in {first.workdir} "
            f"{found[first.name].conflict}{others}, so it is not this sweep's trial: use "
            "another --runs_dir, or move it away to run the trial again.")
    return found


def _header(experiment: Experiment, done: int) -> None:
    print(f"sweep {experiment.name}: {len(experiment.trials)} trials on "
          f"{experiment.config_path} in {experiment.sweep_dir}/ ({done} already finished)",
          flush=True)


def _dry_run(experiment: Experiment, found: dict[str, sweep_run.Found]) -> int:
    _header(experiment, sum(f.finished for f in found.values()))
    for trial in experiment.trials:
        if found[trial.name].damaged:
            print(f"# {found[trial.name].damaged}: it will be set aside and the trial run again")
        prefix = "# finished: " if found[trial.name].finished else ""
        print(prefix + shlex.join(trial.command))
    return 0


def _run(experiment: Experiment, found: dict[str, sweep_run.Found], parallel: int) -> int:
    """Runs the unfinished trials, then writes the tables (the sweep folder is held)."""
    todo = [t for t in experiment.trials if not found[t.name].finished]
    _header(experiment, len(experiment.trials) - len(todo))
    sweep_report.write_tensorboard_experiment(experiment)
    # A job scheduler stops us with SIGTERM, a closed terminal with SIGHUP: treat
    # them like Ctrl-C, so the running trials save and stop instead of being left behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_keyboard_interrupt)
    statuses = {}
    try:
        statuses = sweep_run.run_trials(todo, parallel)
    except KeyboardInterrupt:
        print("\ninterrupted; launch the same command again to resume the unfinished trials.",
              file=sys.stderr)
        return 130
    finally:
        rows = sweep_report.results_table(experiment, statuses)
        table = sweep_report.write_tables(experiment, rows)
    print(f"\n{table}\n\nwritten to {experiment.sweep_dir}/summary.csv and summary.md; "
          f"compare the runs with: tensorboard --logdir {experiment.sweep_dir}")
    failed = [name for name, status in statuses.items()
              if status not in (0, sweep_run.RUNNING_ELSEWHERE)]
    if failed:
        print(f"error: {len(failed)} of {len(todo)} trial(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str], overrides: Sequence[str] = ()) -> None:
    # Logs only: the trials are processes of their own, and the allocator
    # setting of setup_process is for XLA, which the sweep itself never runs.
    runtime.quiet_library_logs()
    FLAGS = flags.FLAGS
    if FLAGS.parallel < 1:
        raise UserError(f"--parallel={FLAGS.parallel} must be at least 1. Try --help.")
    sys.exit(run_sweep(argv[1], overrides, FLAGS.runs_dir, FLAGS.parallel, FLAGS.dry_run))


def run() -> None:
    _define_flags()
    with cli.user_errors():
        argv, overrides = split_overrides(sys.argv)
    cli.run_app(lambda argv: main(argv, overrides), positional=("SWEEP_FILE",), argv=argv)


if __name__ == "__main__":
    run()
