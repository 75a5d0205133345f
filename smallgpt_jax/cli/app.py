"""Shared command-line plumbing: one clear line per user error. (The quiet
logs are set with the other process settings: runtime.setup_process.)"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

from smallgpt_jax.system import console
from smallgpt_jax.system.errors import Interrupted, UserError, writing


def fail(message: str, status: int = 2) -> NoReturn:
    """Prints `error: message` on stderr and exits non-zero."""
    console.clear_bar()  # Not on the line of a progress bar drawn in a terminal.
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _interrupted_while_starting(signum, frame) -> None:
    fail("interrupted", 130)


def quiet_ctrl_c() -> None:
    """Ctrl-C while an entry point is still importing its libraries: one line,
    not the 40-line traceback of an import cut off. (run_app puts Python's
    usual KeyboardInterrupt back once the imports are done.)"""
    signal.signal(signal.SIGINT, _interrupted_while_starting)


def _stopped_outside_training(signum, frame) -> NoReturn:
    print(f"stopped by {signal.Signals(signum).name}; run the same command again to go on "
          "(from the newest checkpoint, if any).", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def quiet_stop_signals() -> None:
    """SIGTERM or SIGHUP while a training command loads its libraries, reads
    its flags, or prints its results: one line and 128 + N, not a silent end.
    (While the run itself runs, stopping.StopSignals replaces this; a second
    signal, which stops at once, reaches it again.)"""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stopped_outside_training)


def _quiet_broken_pipe() -> NoReturn:
    """The reader of our output went away (`... | head`): stop quietly, as Unix
    tools do, with the status of a process killed by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again.
    sys.exit(128 + signal.SIGPIPE)


@contextlib.contextmanager
def user_errors():
    """Turns UserError (and a config file that cannot load) into one line."""
    try:
        yield
    except UserError as e:
        fail(str(e))
    except Interrupted as e:  # Stopped by a signal, after saving: not an error.
        console.say(str(e))  # On a line of its own, not the progress bar's.
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        _quiet_broken_pipe()


def parse_step(value: str) -> str | int:
    """'latest', 'best' or a non-negative integer."""
    if value in ("latest", "best"):
        return value
    try:
        step = int(value)
    except ValueError:
        step = -1
    if step < 0:
        raise UserError(f"--step={value!r} must be 'latest', 'best' or a step number.")
    return step


def check_output(path: str, flag: str = "output") -> None:
    """Fails now, not after the work, if --output (or the file flag `flag`)
    cannot be written (an existing file is left as it is until the results
    are ready)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--{flag}={path}: folder {folder} does not exist.")
    if os.path.isdir(path):
        raise UserError(f"--{flag}={path} is a folder; name a file.")
    existed = os.path.exists(path)
    with writing(path):
        open(path, "a", encoding="utf-8").close()
    if not existed:
        os.remove(path)

def run_app(main: Callable[[list[str]], None], positional: Sequence[str] = (),
            argv: list[str] | None = None) -> None:
    """absl's app.run on `argv` (default sys.argv), with flag-parsing errors
    reduced to one line.

    `positional` names the arguments the command takes besides flags (e.g.
    ("SWEEP_FILE",)); main gets them after the program name in argv. Any
    other argument is refused here, once for every command."""
    # Here, not at the top: the command lines import cli first, to call
    # quiet_ctrl_c before the slower imports.
    from absl import app, flags
    from smallgpt_jax.cli.config_files import parse_flags
    argv = sys.argv if argv is None else argv
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Undoes quiet_ctrl_c().
    with user_errors():  # e.g. Ctrl-C while main() imports JAX, before its own handling.
        if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
            import __main__  # The command's docstring says how to use it; then its flags.
            print((__main__.__doc__ or "").strip() + "\n\nflags:")
            if "config" in flags.FLAGS:  # Defined in config_files: absl lists it under that module.
                print(f"  --config: {flags.FLAGS['config'].help}\n"
                      "  --config.SECTION.FIELD=VALUE: set one field of the config; "
                      "smallgpt_jax/config.py\n    lists every field, with a comment.")
            print(flags.FLAGS.main_module_help())
            sys.exit(0)
        argv = parse_flags(flags.FLAGS, argv)
        extra = argv[1 + len(positional):]
        if extra:  # A forgotten '--', or a value after a space: would be ignored.
            fail(f"unexpected arguments {' '.join(extra)!r}; flags look like --name=value.")
        if len(argv) < 1 + len(positional):
            fail(f"missing {positional[len(argv) - 1]}; see --help.")
        app.run(lambda _: main(argv), argv=[sys.argv[0]])
