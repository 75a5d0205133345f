"""A run's workdir: what it holds, and the checks before a run writes into one.

    <workdir>/config.json      the run's config (a copy, rewritten at every start)
    <workdir>/tokenizer.json   its tokenizer (a copy: the checkpoints hold the original)
    <workdir>/checkpoints/     one folder per saved step (checkpoint/writer.py)
    <workdir>/events.out.*     TensorBoard logs; summary.json, train.log, run.lock

`prepare_workdir` runs before training starts: a directory that holds some
other program's files is refused rather than written into, and one the user
cannot write to fails here, not at the first checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from smallgpt_jax.system.errors import UserError, check_writable_dir
from smallgpt_jax.tokenizers import tokenizer

CHECKPOINT_DIR = "checkpoints"
TRASH = "deleted"  # checkpoints/deleted/<step>: renamed there, then removed.
STEP = re.compile(r"^\d+$")  # A complete checkpoint's folder.
INCOMPLETE = re.compile(r"^\d+\.orbax-checkpoint-tmp")  # A save not finished (yet).
_OWN_JSON = ("config.json", "tokenizer.json")
# Names a run writes at the top of its workdir: finding one means the
# directory belongs to a smallgpt_jax run and may be resumed (train.log is
# what the sweep runner writes there before the run starts).
_OUR_FILES = (CHECKPOINT_DIR, *_OWN_JSON, "summary.json", "train.log", "run.lock")


def read_json(path: str) -> tuple[Any, str | None]:
    """(content, None), or (None, why the file cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, "is missing"
    except PermissionError:  # Not damage: the files are fine, the access is not.
        return None, "cannot be read (permission denied)"
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    except ValueError:
        return None, "is damaged"


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir`, or checks that an existing one is ours and writable.

    Raises UserError before any training starts.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory.")
    if os.path.isdir(workdir):
        _check_entries(workdir, sorted(os.listdir(workdir)))
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{directory} is a file, not a folder of checkpoints; "
                        "choose another --workdir.")
    check_writable_dir(directory, f"--workdir={workdir}", "choose a directory you can write to")
    strange = [e for e in sorted(os.listdir(directory))
               if not (STEP.match(e) or INCOMPLETE.match(e) or e == TRASH)]
    if strange:
        raise UserError(
            f"{directory} holds {', '.join(strange[:5])}, which are not smallgpt_jax "
            "checkpoints; move them away or choose another --workdir.")


def _check_entries(workdir: str, entries: list[str]) -> None:
    """Refuses a directory with files that are not a smallgpt_jax run's."""
    foreign = []
    for name in _OWN_JSON:
        if name not in entries:
            continue
        path = os.path.join(workdir, name)
        content, why = read_json(path)
        if CHECKPOINT_DIR in entries:
            _check_own_copy(path, content, why)
        if not _is_ours(name, content):
            foreign.append(name)
    if foreign:  # Common names: another program's would be overwritten.
        raise UserError(
            f"--workdir={workdir} holds a {' and a '.join(foreign)} that smallgpt_jax did "
            "not write; choose a new or empty directory.")
    if entries and not any(e in _OUR_FILES or e.startswith("events.out.tfevents.")
                           for e in entries):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UserError(
            f"--workdir={workdir} already holds files that are not from a smallgpt_jax "
            f"run ({shown}); choose a new or empty directory.")


def _check_own_copy(path: str, content: Any, why: str | None) -> None:
    """A config.json or tokenizer.json that cannot be read, in a workdir with
    checkpoints, is the run's own copy gone bad, not another program's file:
    say so, and how to get it back (both are rewritten when the run resumes)."""
    if why == "is damaged" or (why is None and not isinstance(content, dict)):
        raise UserError(
            f"{path} is damaged (not the JSON this run wrote); it is only a copy: delete it "
            "and run the same command again (resuming writes it again from the checkpoint).")
    if why:
        raise UserError(f"{path} {why}; fix its permissions, then run the same command again.")


def _is_ours(name: str, content: Any) -> bool:
    """Is this content of config.json or tokenizer.json one that a run of ours wrote?"""
    if not isinstance(content, dict):
        return False
    if name == "config.json":
        return {"model", "train", "data"} <= content.keys()
    return content.get("kind") in tokenizer.KINDS
