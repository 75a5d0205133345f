"""Shared command-line plumbing: quiet logs, and one clear line per user error."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, NoReturn


def fail(message: str, status: int = 2) -> NoReturn:
    """Prints `error: message` on stderr and exits non-zero."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


@contextlib.contextmanager
def user_errors():
    """Turns UserError (and a config file that cannot load) into one line."""
    from smallgpt_jax.errors import Interrupted, UserError
    try:
        yield
    except UserError as e:
        fail(str(e))
    except Interrupted as e:  # Stopped by a signal, after saving: not an error.
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        fail("interrupted", 130)


class _ShortOrbaxErrors(logging.Filter):
    """Orbax logs a long traceback from each thread of a save that failed (a
    full disk, say); our own error line says what failed and what to do, so
    keep one short line of each."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            record.msg = (record.getMessage().splitlines() or [""])[0][:200]
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


_SHORT_ORBAX_ERRORS = _ShortOrbaxErrors()  # One instance: adding it again is a no-op.


def setup_logging() -> None:
    """Keeps library log noise (absl, orbax, jax) out of the console."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax", "absl", "orbax", "tensorboardX", "etils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_SHORT_ORBAX_ERRORS)
    logging.getLogger("smallgpt_jax").setLevel(logging.INFO)


def check_config_file(argv: list[str], flag: str = "config") -> None:
    """Fails early, in one line, when --config names a file that is not there.

    (ml-collections would otherwise print a traceback and fail later.)
    """
    for i, arg in enumerate(argv):
        path = None
        if arg.startswith(f"--{flag}="):
            path = arg.split("=", 1)[1]
        elif arg == f"--{flag}" and i + 1 < len(argv):
            path = argv[i + 1]
        if path is not None:
            path = path.split(":", 1)[0]  # config_flags allows file.py:arg.
            if not os.path.isfile(path):
                fail(f"config file {path} does not exist; pass --{flag}=configs/NAME.py.")


def run_app(main: Callable[[list[str]], None]) -> None:
    """absl's app.run, with flag-parsing errors reduced to one line."""
    from absl import app, flags
    check_config_file(sys.argv)
    try:
        argv = flags.FLAGS(sys.argv)
    except flags.Error as e:
        fail(f"{e}. Try --help.")
    except Exception as e:  # e.g. a config file that does not exist or fails to load.
        fail(f"{e}")
    app.run(lambda _: main(argv), argv=[sys.argv[0]])
