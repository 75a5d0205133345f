"""Hyperparameter sweeps: many ordinary training runs, compared side by side.

An experiment file (`experiments/*.py`) names a base config and its trials:

    from smallgpt_jax import sweep

    CONFIG = "configs/char_cpu.py"           # the base config of every trial
    FIXED = {"train.num_steps": 500}         # optional: set in every trial
    def get_sweep():                         # one dict of overrides per trial
        return sweep.product(sweep.values("train.learning_rate", [3e-4, 1e-3]),
                             sweep.values("model.dropout", [0.0, 0.1]))

`values`, `product` and `zip` build such lists; a plain list of dicts works too.

    python -m smallgpt_jax.sweep experiments/lr_sweep.py [--parallel=N] [--dry-run]
        [--runs_dir=runs] [--config.KEY=VALUE ...]   (or ./launch.sh experiments/...)

runs every trial as an ordinary `python -m smallgpt_jax.main` in its own
workdir `runs/<sweep>/<trial>` (the trial name is built from its overrides;
its console output goes to `train.log` there). Everything is checked before
the first trial starts: the file, its config, every overridden field name,
type and value. A trial is finished when its `summary.json` (written by the
training loop once the final checkpoint is on disk) records at least the
trial's `num_steps`; launching the same sweep again skips finished trials and
re-runs the others in the same workdir, which resumes them from their
checkpoints (a trial another process is still running, e.g. left by a runner
that was killed, is not started twice). A failing trial does not stop the
others; the exit status is 1 if any failed. Ctrl-C gives each running trial
one SIGTERM: it saves a checkpoint and stops (a second Ctrl-C stops the trials
at once, without saving).

At the end a table (best val loss first) is printed and written to
`runs/<sweep>/summary.csv` and `summary.md`; `tensorboard --logdir runs/<sweep>`
shows the trials' curves together, and their overrides and final metrics in
the HPARAMS tab.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import csv
import dataclasses
import glob
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

from smallgpt_jax.errors import UserError, check_writable_dir

Overrides = dict[str, Any]  # {"train.learning_rate": 3e-4, ...}: one trial.

# Final metrics shown for each trial in TensorBoard's HPARAMS tab (scalar tags
# the training loop writes).
METRICS = ("eval/best_val_loss", "eval/val_loss", "eval/val_bpc", "eval/train_loss")
MAX_NAME = 120  # Longest trial folder name; longer ones are cut and given a hash.


# --- Building sweeps --------------------------------------------------------

def values(key: str, vals: Iterable[Any]) -> list[Overrides]:
    """One trial per value of one config field: [{key: v} for v in vals]."""
    return [{key: v} for v in vals]


def product(*sweeps: Sequence[Overrides]) -> list[Overrides]:
    """Every combination (the grid): product(values(a, [1, 2]), values(b, [3, 4]))
    gives 4 trials. The sweeps must set different fields."""
    out = []
    for combo in itertools.product(*sweeps):
        merged: Overrides = {}
        for overrides in combo:
            shared = set(merged) & set(overrides)
            if shared:
                raise UserError(f"sweep.product: {', '.join(sorted(shared))} is set by "
                                "two of its sweeps; each field may vary in one only.")
            merged.update(overrides)
        out.append(merged)
    return out


def zip(*sweeps: Sequence[Overrides]) -> list[Overrides]:  # noqa: A001 (like builtins.zip)
    """Trials side by side: zip(values(a, [1, 2]), values(b, [3, 4])) gives
    {a: 1, b: 3} and {a: 2, b: 4}. The sweeps must have the same length."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise UserError(f"sweep.zip needs sweeps of one length, got {sorted(lengths)}.")
    return [dict(kv for overrides in combo for kv in overrides.items())
            for combo in builtins.zip(*sweeps)]


# --- Loading and checking an experiment file --------------------------------

@dataclasses.dataclass
class Trial:
    name: str  # Built from the overrides, e.g. "learning_rate=0.001,dropout=0.1".
    overrides: Overrides  # What this trial changes (its row in the table).
    workdir: str
    num_steps: int  # Its train.num_steps: the step summary.json must reach.
    command: list[str]


@dataclasses.dataclass
class Experiment:
    name: str
    path: str
    config_path: str
    sweep_dir: str  # runs/<name>
    keys: list[str]  # Every field some trial overrides, in first-seen order.
    trials: list[Trial]


def _load_module(path: str, what: str):
    spec = importlib.util.spec_from_file_location(
        "_smallgpt_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0]), path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except UserError as e:
        raise UserError(f"{what} {path}: {e}")
    except Exception as e:  # A user file: show its error in one line.
        raise UserError(f"could not load {what} {path}: {type(e).__name__}: {e}")
    return module


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find_config(config_path: str, sweep_path: str) -> str:
    """CONFIG is looked up from the current directory, then the repository root."""
    for candidate in (config_path, os.path.join(_repo_root(), config_path)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"{sweep_path}: CONFIG = {config_path!r} does not exist.")


def _parent(config, key: Any, where: str):
    """The ConfigDict holding dotted `key` and the key's last part; a
    UserError (with the closest real field name) if there is no such field."""
    import ml_collections
    if not isinstance(key, str):
        raise UserError(f"{where}: override keys are dotted field names like "
                        f"'train.learning_rate', not {key!r}.")
    node, parts = config, key.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    leaf = parts[-1]
    if (not isinstance(node, ml_collections.ConfigDict) or leaf not in node
            or isinstance(node[leaf], ml_collections.ConfigDict)):
        from smallgpt_jax.config import did_you_mean
        raise UserError(f"{where}: the config has no field {key}{did_you_mean(config, key)}.")
    return node, leaf


def _get_field(config, key: str, where: str) -> Any:
    node, leaf = _parent(config, key, where)
    return node[leaf]


def _set_field(config, key: str, value: Any, where: str) -> None:
    """config[key] = value for a dotted key that must already exist, with the
    field's type (ConfigDict refuses e.g. a float for an int field)."""
    node, leaf = _parent(config, key, where)
    try:
        node[leaf] = value
    except TypeError:
        raise UserError(f"{where}: {key}={value!r} has type {type(value).__name__}, "
                        f"but the field's type is {type(node[leaf]).__name__}.")


def _parse_like(text: str, current: Any, key: str) -> Any:
    """A command-line value, read as the type of the field it replaces."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, (int, float)):
            return type(current)(text)
        if isinstance(current, str):
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"--config.{key}={text!r} is not a valid "
                        f"{type(current).__name__}.")


def trial_name(overrides: Overrides, all_keys: Sequence[str]) -> str:
    """'learning_rate=0.001,dropout=0.1': each field's last name (the full
    dotted name where two swept fields share a last name) = its value."""
    last = [k.rsplit(".", 1)[-1] for k in all_keys]
    parts = []
    for key, value in overrides.items():
        short = key.rsplit(".", 1)[-1]
        label = short if last.count(short) == 1 else key
        parts.append(f"{label}={value!s}")
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "-", ",".join(parts) or "base")  # Safe as a folder name.
    if len(name) > MAX_NAME:  # File systems refuse names over 255 bytes.
        # A readable start, made unique by a hash of the whole name.
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}~{digest}"
    return name


def load_experiment(path: str, runs_dir: str = "runs",
                    cli_overrides: Sequence[str] = ()) -> Experiment:
    """Reads an experiment file and checks every trial against its config.

    cli_overrides: extra "KEY=VALUE" strings (from --config.KEY=VALUE) set in
    every trial. Raises UserError, before anything runs, on any problem.
    """
    if not os.path.isfile(path):
        raise UserError(f"sweep file {path} does not exist; pass a file like "
                        "experiments/lr_sweep.py.")
    module = _load_module(path, "sweep file")
    if not callable(getattr(module, "get_sweep", None)):
        raise UserError(f"{path} has no get_sweep() function; define one that returns "
                        "a list of override dicts (see experiments/lr_sweep.py).")
    if not isinstance(getattr(module, "CONFIG", None), str):
        raise UserError(f"{path} does not name its base config; set "
                        "CONFIG = 'configs/NAME.py'.")
    config_path = _find_config(module.CONFIG, path)
    config_module = _load_module(config_path, "config file")
    if not callable(getattr(config_module, "get_config", None)):
        raise UserError(f"config file {config_path} has no get_config() function.")
    base = config_module.get_config()

    fixed = dict(getattr(module, "FIXED", {}) or {})
    for key in fixed:
        _get_field(base, key, f"{path}, FIXED")
    for item in cli_overrides:  # Command-line values replace FIXED ones.
        key, _, text = item.partition("=")
        fixed[key] = _parse_like(text, _get_field(base, key, "command line"), key)

    trials_overrides = _call_get_sweep(module, path)
    keys = list(dict.fromkeys(k for o in trials_overrides for k in o))
    name = str(getattr(module, "NAME", "") or os.path.splitext(os.path.basename(path))[0])
    sweep_dir = os.path.join(runs_dir, name)

    from smallgpt_jax.config import validate
    trials, seen = [], {}
    for i, overrides in enumerate(trials_overrides):
        tname = trial_name(overrides, keys)
        where = f"{path}, trial {i + 1} ({tname})"
        if tname in seen:
            raise UserError(f"{path}: trials {seen[tname] + 1} and {i + 1} have the same "
                            f"overrides ({tname}); each trial must differ.")
        seen[tname] = i
        clash = sorted(set(overrides) & set(fixed))
        if clash:
            raise UserError(f"{where}: {', '.join(clash)} is both swept and fixed "
                            "(FIXED or --config.*); set it in one place.")
        config = base.copy_and_resolve_references()
        settings = {**fixed, **overrides}
        for key, value in settings.items():
            _set_field(config, key, value, where)
        try:
            validate(config)
        except UserError as e:
            raise UserError(f"{where}: {e}")
        workdir = os.path.join(sweep_dir, tname)
        command = [sys.executable, "-m", "smallgpt_jax.main", f"--config={config_path}",
                   f"--workdir={workdir}"]
        command += [f"--config.{k}={v!s}" for k, v in settings.items()]
        trials.append(Trial(tname, overrides, workdir, config.train.num_steps, command))
    return Experiment(name, path, config_path, sweep_dir, keys, trials)


def _call_get_sweep(module, path: str) -> list[Overrides]:
    try:
        trials = list(module.get_sweep())
    except UserError as e:
        raise UserError(f"{path}: {e}")
    except Exception as e:
        raise UserError(f"{path}: get_sweep() failed: {type(e).__name__}: {e}")
    if not trials or not all(isinstance(t, dict) for t in trials):
        raise UserError(f"{path}: get_sweep() must return a non-empty list of dicts "
                        "like {'train.learning_rate': 1e-3}.")
    for i, trial in enumerate(trials):
        for key in trial:
            if not isinstance(key, str):
                raise UserError(f"{path}, trial {i + 1}: override keys are dotted field names "
                                f"like 'train.learning_rate', not {key!r}.")
    return [dict(t) for t in trials]


# --- Running trials ---------------------------------------------------------

def read_summary(workdir: str) -> dict | None:
    """The final metrics a finished run wrote (summary.json), or None."""
    try:
        with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _reached_end(summary: dict | None, trial: Trial) -> bool:
    """Does this (already read) summary.json record all of the trial's steps?
    (A run trained further than the sweep now asks counts: it cannot go back.)"""
    return summary is not None and summary.get("steps", -1) >= trial.num_steps


def is_finished(trial: Trial) -> bool:
    return _reached_end(read_summary(trial.workdir), trial)


def _trial_env(parallel: int = 1) -> dict[str, str]:
    """The trials' environment: ours, with this package importable.

    Trials running side by side share the machine's accelerators: JAX would
    otherwise give the first one 75% of every GPU's memory up front and the
    next would run out, so with parallel > 1 each allocates what it uses.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_repo_root(), env.get("PYTHONPATH")) if p)
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


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


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
    from smallgpt_jax import lock
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


RUNNING_ELSEWHERE = -1000  # A status for a trial another process was running.


def _outcome(trial: Trial, status: int, seconds: float) -> str:
    """'done    NAME in 0:12: best val loss 1.2345', or why it failed."""
    took = _clock(seconds)
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


# --- Reporting --------------------------------------------------------------

def write_tensorboard_experiment(experiment: Experiment) -> None:
    """Tells TensorBoard's HPARAMS tab which columns this sweep has: the swept
    fields and the final metrics (written at runs/<sweep>/, the logdir root).

    Each trial records its whole config and metrics itself; this summary only
    picks, out of those, the fields that the sweep varies.
    """
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summary
    for old in glob.glob(os.path.join(experiment.sweep_dir, "events.out.tfevents.*")):
        os.remove(old)  # Only the newest description of the sweep counts.
    example = {}
    for key in experiment.keys:  # A value per key (its type names the column's).
        example[key] = next(t.overrides[key] for t in experiment.trials if key in t.overrides)
    exp, _, _ = hparams_summary(example, {m: 0.0 for m in METRICS})
    writer = SummaryWriter(experiment.sweep_dir)
    writer.file_writer.add_summary(exp)
    writer.close()


def results_table(experiment: Experiment, statuses: dict[str, int]) -> list[dict]:
    """One row per trial (finished ones by best val loss, then the rest)."""
    keyed = []  # (sort key, row)
    for trial in experiment.trials:
        summary = read_summary(trial.workdir)
        done = _reached_end(summary, trial)
        if done:
            status = "done"
        elif statuses.get(trial.name) == RUNNING_ELSEWHERE:
            status = "running in another process"
        elif statuses.get(trial.name, 0) != 0:
            status = f"failed (exit {statuses[trial.name]})"
        else:
            status = "not finished"
        final = summary if done else {}  # Metrics are shown for finished trials only.
        best, bpc, wall = (final.get(k) for k in ("eval/best_val_loss", "eval/val_bpc",
                                                  "wall_time_s"))
        row = {"trial": trial.name}
        row.update({key: trial.overrides.get(key, "") for key in experiment.keys})
        row["best_val_loss"] = "" if best is None else f"{best:.4f}"
        row["val_bpc"] = "" if bpc is None else f"{bpc:.4f}"
        row["steps"] = final.get("steps", "")
        row["wall_time"] = "" if wall is None else _clock(wall)
        row["status"] = status
        keyed.append(((best is None, 0 if best is None else best), row))
    keyed.sort(key=lambda entry: entry[0])
    return [row for _, row in keyed]


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in builtins.zip(values, widths)) + " |"
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def write_tables(experiment: Experiment, rows: list[dict]) -> str:
    """Writes summary.csv and summary.md under runs/<sweep>/; returns the markdown."""
    os.makedirs(experiment.sweep_dir, exist_ok=True)
    with open(os.path.join(experiment.sweep_dir, "summary.csv"), "w", newline="",
              encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    with open(os.path.join(experiment.sweep_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(f"# Sweep {experiment.name}\n\n{experiment.path} on {experiment.config_path}; "
                f"best val loss first.\n\n{table}\n")
    return table


# --- Command line -----------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # One line, like every other entry point.
        from smallgpt_jax.cli import fail
        fail(f"{message}. Try --help.")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = _Parser(prog="python -m smallgpt_jax.sweep",
                     description="Runs every trial of a sweep file (see experiments/).",
                     epilog="--config.KEY=VALUE arguments are set in every trial.")
    parser.add_argument("sweep_file", help="e.g. experiments/lr_sweep.py")
    parser.add_argument("--parallel", type=int, default=1, help="trials run at once (1)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the trials' commands; run nothing")
    parser.add_argument("--runs_dir", "--runs-dir", default="runs",
                        help="trials go to RUNS_DIR/<sweep>/<trial> (runs)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith("--config.") or "=" not in arg:
            parser.error(f"unexpected argument {arg!r}; extra settings look like "
                         "--config.train.num_steps=100")
        overrides.append(arg[len("--config."):])
    if args.parallel < 1:
        parser.error(f"--parallel={args.parallel} must be at least 1")
    return args, overrides


def check_writable(sweep_dir: str) -> None:
    """UserError now, before any trial, if the sweep's folder cannot be written."""
    check_writable_dir(sweep_dir, sweep_dir, "choose a --runs_dir you can write to")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a sweep from the command line; returns the exit status."""
    from smallgpt_jax.cli import user_errors
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors():
        experiment = load_experiment(args.sweep_file, args.runs_dir, overrides)
    todo = [t for t in experiment.trials if not is_finished(t)]
    done = len(experiment.trials) - len(todo)
    print(f"sweep {experiment.name}: {len(experiment.trials)} trials on "
          f"{experiment.config_path} in {experiment.sweep_dir}/ ({done} already finished)",
          flush=True)
    if args.dry_run:
        for trial in experiment.trials:
            prefix = "# finished: " if trial not in todo else ""
            print(prefix + shlex.join(trial.command))
        return 0
    with user_errors():
        check_writable(experiment.sweep_dir)
    write_tensorboard_experiment(experiment)
    # A job scheduler stops us with SIGTERM, a closed terminal with SIGHUP: treat
    # them like Ctrl-C, so the running trials save and stop instead of being left behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_keyboard_interrupt)
    statuses = {}
    try:
        statuses = run_trials(todo, args.parallel)
    except KeyboardInterrupt:
        print("\ninterrupted; launch the same command again to resume the unfinished trials.",
              file=sys.stderr)
        return 130
    finally:
        rows = results_table(experiment, statuses)
        table = write_tables(experiment, rows)
    print(f"\n{table}\n\nwritten to {experiment.sweep_dir}/summary.csv and summary.md; "
          f"compare the runs with: tensorboard --logdir {experiment.sweep_dir}")
    failed = [name for name, status in statuses.items()
              if status not in (0, RUNNING_ELSEWHERE)]
    if failed:
        print(f"error: {len(failed)} of {len(todo)} trial(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from smallgpt_jax.cli import user_errors
    with user_errors():  # e.g. Ctrl-C while loading the experiment: no traceback.
        sys.exit(main())
