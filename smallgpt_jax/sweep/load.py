"""Reading a sweep file (experiments/*.py) into checked trials.

Everything is checked before the first trial starts: the file, its config,
every overridden field name, type and value. A problem is one UserError.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import math
import os
import re
import sys
from typing import Any, Sequence

import ml_collections

from smallgpt_jax.cli.config_files import load_config, load_module
from smallgpt_jax.config import did_you_mean, flatten, validate
from smallgpt_jax.sweep import Overrides
from smallgpt_jax.system.errors import UserError

MAX_NAME = 120  # Longest trial folder name; longer ones are cut and given a hash.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Trial:
    name: str  # Built from the overrides, e.g. "learning_rate=0.001,dropout=0.1".
    overrides: Overrides  # What this trial changes (its row in the table).
    workdir: str
    num_steps: int  # Its train.num_steps: the step summary.json must reach.
    command: list[str]
    # Its whole config, flattened ({"train.learning_rate": 3e-4, ...}): a folder
    # that ran other settings holds another trial's results (sweep_run.examine).
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Experiment:
    name: str
    path: str
    config_path: str
    sweep_dir: str  # runs/<name>
    keys: list[str]  # Every field some trial overrides, in first-seen order.
    trials: list[Trial]


def _load_sweep_file(path: str):
    try:
        return load_module(path)
    except UserError as e:
        raise UserError(f"sweep file {path}: {e}")
    except Exception as e:  # A user file: show its error in one line.
        raise UserError(f"could not load sweep file {path}: {type(e).__name__}: {e}")


def _find_config(config_path: str, sweep_path: str) -> str:
    """CONFIG is looked up from the current directory, then the repository root."""
    for candidate in (config_path, os.path.join(REPO_ROOT, config_path)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"{sweep_path}: CONFIG = {config_path!r} does not exist.")


def _parent(config: ml_collections.ConfigDict, key: Any, where: str):
    """The ConfigDict holding dotted `key` and the key's last part; a
    UserError (with the closest real field name) if there is no such field."""
    if not isinstance(key, str):
        raise UserError(f"{where}: override keys are dotted field names like "
                        f"'train.learning_rate', not {key!r}.")
    node, parts = config, key.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    leaf = parts[-1]
    if (not isinstance(node, ml_collections.ConfigDict) or leaf not in node
            or isinstance(node[leaf], ml_collections.ConfigDict)):
        raise UserError(f"{where}: the config has no field {key}{did_you_mean(config, key)}.")
    return node, leaf


def _get_field(config: ml_collections.ConfigDict, key: str, where: str) -> Any:
    node, leaf = _parent(config, key, where)
    return node[leaf]


def _set_field(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    """config[key] = value for a dotted key that must already exist, with the
    field's type (ConfigDict refuses e.g. a float for an int field)."""
    node, leaf = _parent(config, key, where)
    try:
        node[leaf] = value
    except TypeError:
        raise UserError(f"{where}: {key}={value!r} has type {type(value).__name__}, "
                        f"but the field's type is {type(node[leaf]).__name__}.")


# Short labels in trial names: TensorBoard's HPARAMS table cuts its trial
# column after about 15 characters.
SHORT = {"learning_rate": "lr", "min_learning_rate": "min_lr", "weight_decay": "wd"}


def short_value(value: Any) -> str:
    """A value as a trial name shows it: floats in the shorter of their
    decimal and scientific forms (3e-4, 0.1, 1e-2), exactly (no rounding)."""
    if not isinstance(value, float) or value != value or value in (math.inf, -math.inf):
        return str(value)
    mantissa, _, exponent = f"{decimal.Decimal(repr(value)).normalize():E}".partition("E")
    scientific = f"{mantissa}e{int(exponent)}"
    plain = repr(value)
    if len(scientific) < len(plain) or (len(scientific) == len(plain) and abs(value) < 0.1):
        return scientific
    return plain


def trial_name(overrides: Overrides, all_keys: Sequence[str]) -> str:
    """'lr=1e-3,dropout=0.1': each field's last name, shortened (SHORT; the
    full dotted name where two swept fields share one) = its value (short_value)."""
    label_of = {k: SHORT.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) for k in all_keys}
    labels = list(label_of.values())
    parts = []
    for key, value in overrides.items():
        label = label_of.get(key, key)
        parts.append(f"{label if labels.count(label) == 1 else key}={short_value(value)}")
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
    every trial, read as `python -m smallgpt_jax.main` reads them
    (config_files.load_config). Raises UserError, before anything runs, on
    any problem.
    """
    if not os.path.isfile(path):
        raise UserError(f"sweep file {path} does not exist; pass a file like "
                        "experiments/lr_sweep.py.")
    module = _load_sweep_file(path)
    if not callable(getattr(module, "get_sweep", None)):
        raise UserError(f"{path} has no get_sweep() function; define one that returns "
                        "a list of override dicts (see experiments/lr_sweep.py).")
    if not isinstance(getattr(module, "CONFIG", None), str):
        raise UserError(f"{path} does not name its base config; set "
                        "CONFIG = 'configs/NAME.py'.")
    config_path = _find_config(module.CONFIG, path)
    base = load_config(config_path, cli_overrides)
    fixed = dict(getattr(module, "FIXED", {}) or {})
    for key in fixed:
        _get_field(base, key, f"{path}, FIXED")
    for item in cli_overrides:  # Command-line values replace FIXED ones.
        key = item.partition("=")[0]
        fixed[key] = _get_field(base, key, "command line")

    trials_overrides = _call_get_sweep(module, path)
    keys = list(dict.fromkeys(k for o in trials_overrides for k in o))
    name = str(getattr(module, "NAME", "") or os.path.splitext(os.path.basename(path))[0])
    if re.search(r"[/\\\x00]", name) or name in (".", ".."):  # Would leave runs_dir.
        raise UserError(f"{path}: NAME = {name!r} must be a plain folder name (the sweep "
                        "goes to RUNS_DIR/NAME); use --runs_dir to choose where.")
    sweep_dir = os.path.join(runs_dir, name)

    trials, seen = [], {}
    for i, overrides in enumerate(trials_overrides):
        tname = trial_name(overrides, keys)
        where = f"{path}, trial {i + 1} ({tname})"
        if tname in seen:
            raise UserError(f"{path}: trials {seen[tname] + 1} and {i + 1} would share the "
                            f"folder {tname} (the same overrides, or values that differ only "
                            "in characters a folder name cannot hold); each trial must differ.")
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
        if config.train.resume_step != -1:  # Every relaunch would send it back there.
            raise UserError(f"{where}: train.resume_step={config.train.resume_step} is for one "
                            "run; a sweep's trials resume from their newest checkpoints. To "
                            "restart one trial from step N, run its command (--dry-run "
                            "prints it) with --config.train.resume_step=N.")
        workdir = os.path.join(sweep_dir, tname)
        command = [sys.executable, "-m", "smallgpt_jax.main", f"--config={config_path}",
                   f"--workdir={workdir}"]
        command += [f"--config.{k}={v!s}" for k, v in settings.items()]
        trials.append(Trial(tname, overrides, workdir, config.train.num_steps, command,
                            flatten(config.to_dict())))
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
