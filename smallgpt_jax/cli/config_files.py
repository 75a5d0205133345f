"""Loading a config file and its `--config.KEY=VALUE` overrides: one way for
every command, the sweeps, the tools and the tests.

Configs are parsed the way Flax projects parse them, by ml_collections'
`config_flags`. A command defines its flag with `define_config_flag()`;
a program calls

    config = load_config("configs/char_cpu.py", ["model.num_layers=2"])

which reads the same flags in a flag set of its own. So an override means the
same thing, and fails with the same one-line error, wherever it is written.
Python files that are not in a package (configs, sweep files, scripts) are
opened with `load_module`.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import re
import types
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from smallgpt_jax.config import did_you_mean, flatten
from smallgpt_jax.system.errors import UserError

FLAG = "config"  # --config=FILE, --config.KEY=VALUE.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_module(path: str, name: str | None = None) -> types.ModuleType:
    """The Python file at `path` (not part of a package), run as a module."""
    name = name or "_smallgpt_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def define_config_flag(help_string: str = "A config file, e.g. configs/char_cpu.py.",
                       default: str | None = None,
                       flag_values: flags.FlagValues = flags.FLAGS,
                       argv: Sequence[str] | None = None) -> flags.FlagHolder:
    """Defines --config (a config file) and its --config.KEY=VALUE overrides.

    The config is locked: an override can change a field, not add one.
    `argv`: where config_flags looks for the overrides (default sys.argv).
    """
    return config_flags.DEFINE_config_file(FLAG, default, help_string, flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """get_config() of the file at `path` ('FILE:ARG' passes ARG to it), with
    each "KEY=VALUE" of `overrides` applied as `--config.KEY=VALUE` would be.

    Raises UserError with the command line's own message on any problem.
    """
    argv = ["load_config", f"--{FLAG}={path}", *(f"--{FLAG}.{o}" for o in overrides)]
    flag_values = flags.FlagValues()
    config = define_config_flag(flag_values=flag_values, argv=argv)
    parse_flags(flag_values, argv)
    return config.value


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """flag_values(argv): absl parses the flags, config_flags loads the config
    file and applies its overrides. Returns the arguments that are not flags;
    every problem is one UserError (absl and config_flags raise tracebacks
    that name neither the file nor the field)."""
    argv = list(argv)
    _check_path(argv)
    try:
        return flag_values(argv)
    except flags.Error as e:  # (Two missing required flags are two lines: joined.)
        missing = re.findall(r"Flag --(\w+) must have a value other than None", str(e))
        if missing:
            raise UserError(_missing(missing)) from None
        said = "; ".join(line.rstrip(".") for line in str(e).splitlines() if line.strip())
        raise UserError(_explain(argv, e) or f"{said}. Try --help.") from None
    except Exception as e:  # A config file that fails to load, an unknown field.
        raise UserError(_explain(argv, e) or _load_error(e, _path(argv))) from None


def _path(argv: Sequence[str], keep_argument: bool = False) -> str | None:
    """The file that --config names, without a ':arg' suffix (config_flags
    allows file.py:arg) unless `keep_argument`."""
    for i, arg in enumerate(argv):
        value = (arg.split("=", 1)[1] if arg.startswith(f"--{FLAG}=") else
                 argv[i + 1] if arg == f"--{FLAG}" and i + 1 < len(argv) else None)
        if value is not None:
            return value if keep_argument else value.split(":", 1)[0]
    return None


def _check_path(argv: Sequence[str]) -> None:
    """Fails early, in one line, when --config names a file that is not there
    (ml-collections would otherwise fail later, with a traceback)."""
    path, whole = _path(argv), _path(argv, keep_argument=True)
    if path is None or os.path.isfile(path):
        return
    if whole and os.path.isfile(whole):
        raise UserError(f"config file {whole}: its path contains ':', which ml-collections "
                        "reads as 'FILE:ARGUMENT'; rename it, or link to it from a path "
                        "without ':'.")
    # By file name: the shared "configs/" would make any two paths look close.
    names = {os.path.basename(p): p for p in known_configs()}
    close = difflib.get_close_matches(os.path.basename(path), names, n=1, cutoff=0.7)
    hint = f" (did you mean {names[close[0]]}?)" if close else ""
    raise UserError(f"config file {path} does not exist{hint}; pass --{FLAG}=configs/NAME.py"
                    f"{_configs_hint()}.")


def known_configs() -> list[str]:
    """The config files in configs/ (of the current directory, else of the
    repository), as a user would type their paths."""
    for folder in ("configs", os.path.join(REPO_ROOT, "configs")):
        found = sorted(glob.glob(os.path.join(folder, "*.py")))
        if found:
            return found
    return []


def _configs_hint() -> str:
    """'; configs/ holds char_cpu.py, ...' (nothing where there is no configs/)."""
    found = known_configs()
    names = ", ".join(os.path.basename(p) for p in found)
    return f"; {os.path.dirname(found[0])}/ holds {names}" if found else ""


def _missing(names: list[str]) -> str:
    """The line for required flags left out (absl's says 'must have a value
    other than None')."""
    if FLAG in names:
        return (f"missing --{FLAG}: the config file to use, e.g. "
                f"--{FLAG}=configs/char_cpu.py{_configs_hint()}.")
    return f"missing {' and '.join('--' + n for n in names)}. Try --help."


def _explain(argv: Sequence[str], error: Exception) -> str | None:
    """The message for the first --config.KEY override that names no field of
    the config (ml-collections' own error is a bare KeyError) or has a value
    the field's type cannot take; None if the problem is elsewhere."""
    path = _path(argv)
    if path is None:
        return None
    try:
        config = load_module(path, "_smallgpt_config").get_config()
    except Exception:  # Not loadable: the caller reports the original error.
        return None
    if not hasattr(config, "to_dict"):  # e.g. a plain dict.
        return (f"config file {path}: get_config() returned a {type(config).__name__}, not "
                "an ml_collections ConfigDict; start from smallgpt_jax.config.base_config().")
    fields = flatten(config.to_dict())
    for arg in argv:
        if not arg.startswith(f"--{FLAG}."):
            continue
        key, _, text = arg[len(FLAG) + 3:].partition("=")
        if key not in fields:
            return (f"--{FLAG}.{key}: the config has no field {key}"
                    f"{did_you_mean(config, key)}; smallgpt_jax/config.py lists them all.")
        if isinstance(error, flags.IllegalFlagValueError) and str(error).startswith(
                f"flag {arg}:"):
            return f"--{FLAG}.{key}={text!r} is not a valid {type(fields[key]).__name__}."
    return None


def _is_sweep_file(path: str) -> bool:
    """Does the file define get_sweep() (as launch.sh tells sweeps from configs)?"""
    try:
        with open(path, encoding="utf-8") as f:
            return any(line.startswith("def get_sweep") for line in f)
    except (OSError, UnicodeDecodeError):
        return False


def _load_error(e: Exception, path: str | None) -> str:
    """The message for a config file that failed to load, naming the file
    (config_flags names its own internal module, 'config_config')."""
    if isinstance(e, AttributeError) and "get_config" in str(e) and path:
        if _is_sweep_file(path):
            return (f"{path} is a sweep file (it defines get_sweep()), not a config: run it "
                    f"with ./launch.sh {path} or python -m smallgpt_jax.sweep {path}.")
        return (f"config file {path} has no get_config() function; define one that returns "
                "a config (see configs/char_cpu.py).")
    return str(e)
