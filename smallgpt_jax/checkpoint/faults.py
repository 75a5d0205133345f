"""Checkpoints that cannot be read: finding the faults, and what to tell the user.

Most faults surface as an exception from Orbax (TensorStore underneath) when
a step is restored; checkpoint/writer.py (training) and checkpoint/reader.py (a reader) catch
it and name the step and what to do, with the messages written here. Three
things are looked at first, because Orbax's own error would name no step or
come with noise:

- The small JSON files Orbax's CheckpointManager reads for every step when it
  opens the directory (`_CHECKPOINT_METADATA`, `metrics/metrics`): one damaged
  file would block every resume, whichever step is asked for.
- The files a restore opens first: when they are missing, the reads Orbax
  still has in flight print tracebacks after its error.
- Debris: a step folder older than the newest intact checkpoint, with files
  missing (a deletion cut off by a crash, or one happening right now in the
  training run), and the temporary folder of a save cut off by a crash. They
  are skipped (with a warning), not an error.

Flipped bits inside an array's data are found after the restore, by the
checksums saved with it (checkpoint/checksum.py), or by zstd when they hit
its own headers and tables (`reason` names the array); a JSON file edited
by hand (valid JSON, but not the types written) is damage too
(checkpoint/meta.py, `_opened_files`).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
from typing import Any

import jax

from smallgpt_jax.checkpoint import checksum
from smallgpt_jax.checkpoint.workdir import INCOMPLETE, STEP, read_json
from smallgpt_jax.system import console
from smallgpt_jax.system.errors import UserError

# What a restore reads first (`*`: one folder per process that wrote).
_REQUIRED = ("meta/metadata", "state/_METADATA", "state/manifest.ocdbt", "state/ocdbt.process_*")


# Array data that zstd rejects (flipped bits in its headers and tables)
# is named only in the part before zstd's words: 'Error reading "params.w/0"
# in OCDBT database at local file "...": ZSTD_decompressStream() failed: Data
# corruption detected; at byte 0'. (A missing or short file says "Truncated
# Zstd-compressed stream" in the last part, which names the array already.)
_UNDECOMPRESSABLE = re.compile(
    r'Error reading "(?P<array>[^"]+)/[\d.]+" in OCDBT database at [^"]*"[^"]*": '
    r'ZSTD_decompressStream\(\) failed: (?P<why>[^;]*)')


def reason(e: BaseException) -> str:
    """One line for an exception from Orbax. TensorStore's run to kilobytes:
    'CODE: context: ...: context: what went wrong [payload=...]'; the code and
    the last two parts say what happened (and name the file)."""
    if e.__cause__ is not None and "See full TensorStore details" in str(e):
        return reason(e.__cause__)  # Orbax's wrapper: the cause names the array and file.
    line = re.split(r" \[\w+=", (str(e).strip() or type(e).__name__).splitlines()[0])[0]
    found = _UNDECOMPRESSABLE.search(line)
    if found:  # In the words of a checksum's mismatch.
        return (f"the data of {found['array'].replace('.', '/')} cannot be decompressed "
                f"({found['why']}): changed on disk after the save")
    code, sep, rest = line.partition(": ")
    if sep and re.fullmatch(r"[A-Z_]{4,}", code):
        line = f"{code}: {': '.join(rest.split(': ')[-2:])}"
    return line if len(line) <= 300 else line[:300] + "..."


def summary(problems: list[str]) -> str:
    """The first three problems, for a one-line message."""
    return "; ".join(problems[:3])


def denied(problems: list[str]) -> bool:
    """Whether the problem is access, not damage (nothing to move away)."""
    return any("ermission denied" in p for p in problems)


def advice(problems: list[str], otherwise: str, damaged: str = "its files are damaged") -> str:
    """What to do: fix permissions when that is the problem, else `otherwise`."""
    if denied(problems):
        return "fix the files' permissions, then run the same command again"
    return f"{damaged}: {otherwise}"


def missing_files(folder: str) -> list[str]:
    """The files a restore of the complete checkpoint `folder` opens first, if missing."""
    return [f"{name} is missing" for name in _REQUIRED
            if not glob.glob(os.path.join(folder, name))]


def _opened_files(folder: str) -> list[str]:
    """Problems with the files the CheckpointManager reads when it opens."""
    names = ["_CHECKPOINT_METADATA"]
    if os.path.isdir(os.path.join(folder, "metrics")):
        names.append("metrics/metrics")
    problems = []
    for name in names:
        content, why = read_json(os.path.join(folder, name))
        # JSON, but not what Orbax wrote (a dict; metrics: numbers): edited.
        if why is None and not (isinstance(content, dict) and (name != "metrics/metrics" or all(
                is_a(v, NUMBER) for v in content.values()))):
            why = "is damaged"
        if why:
            problems.append(f"{name} {why}")
    return problems


@dataclasses.dataclass
class Scan:
    """What `scan` found in a checkpoints directory."""

    problems: dict[int, list[str]]  # Step -> problems ([]: intact), debris left out.
    debris: dict[int, str]  # Step -> why it is skipped.
    incomplete: list[str]  # Folders of saves not finished (yet): a crash's, or in flight.


def scan(directory: str) -> Scan:
    """Looks at every step folder in `directory` before Orbax opens it.

    UserError if a step's CheckpointManager files are damaged (that step
    must be moved away before anything can be resumed or loaded).
    """
    try:
        names = os.listdir(directory) if os.path.isdir(directory) else []
    except OSError as e:
        raise UserError(f"cannot read {directory} ({e.strerror or e}); fix its permissions.")
    steps = sorted((int(e) for e in names if STEP.match(e)), reverse=True)
    opened = {s: _opened_files(os.path.join(directory, str(s))) for s in steps}
    problems = {s: opened[s] + missing_files(os.path.join(directory, str(s))) for s in steps}
    intact = [s for s in steps if not problems[s]]
    debris = {s: f"a checkpoint older than step {intact[0]} with files missing "
                 f"({summary(problems[s])}), left by a deletion that was cut off"
              for s in steps if intact and s < intact[0]
              and any("missing" in p for p in problems[s])}
    for step in sorted(set(steps) - debris.keys()):
        if opened[step]:
            raise UserError(move_away(os.path.join(directory, str(step)), opened[step]))
    return Scan({s: p for s, p in problems.items() if s not in debris}, debris,
                sorted(e for e in names if INCOMPLETE.match(e)))


NUMBER = (int, float)  # A JSON number.


def is_a(value: Any, kind: type | tuple) -> bool:
    """isinstance, where a JSON true/false is no number."""
    return kind is bool if isinstance(value, bool) else isinstance(value, kind)


def skip_broken(directory: str, clean: bool) -> Scan:
    """`scan`, saying which folders are skipped. `clean` (a training run,
    which owns the workdir) removes them, and skips saves that never finished
    (for a reader, one may be the run's save in flight)."""
    found = scan(directory)
    skipped = found.incomplete if clean else []
    if jax.process_index() != 0:  # Process 0 speaks and cleans up for all.
        return found
    for name in skipped:
        console.say(f"warning: skipping incomplete checkpoint {os.path.join(directory, name)} "
            "(a save that never finished, e.g. cut off by a crash); removing it.")
    for step, why in sorted(found.debris.items()):
        console.say(f"warning: skipping {os.path.join(directory, str(step))}: {why}"
            + ("; removing it." if clean else "."))
    if clean:
        for name in [*skipped, *map(str, found.debris)]:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return found


def move_away(folder: str, problems: list[str]) -> str:
    """A step folder that blocks the whole directory: move it out of the way."""
    if denied(problems):  # Not damage: nothing to move away.
        return (f"checkpoint {folder} cannot be read ({summary(problems)}); fix its files' "
                "permissions, then run the same command again.")
    workdir = os.path.dirname(os.path.dirname(folder))
    step = os.path.basename(folder)
    return (f"checkpoint {folder} is damaged ({summary(problems)}); move it out of "
            f"the way (mv {folder} {os.path.join(workdir, f'damaged-{step}')}), then run the "
            "same command again.")


def changed_on_disk(checksums: dict[str, int], tree: Any) -> str | None:
    """Why `tree`, just restored, is not what was saved with `checksums`: its
    arrays whose checksums differ (see checkpoint/checksum.py); None when all match."""
    arrays = checksum.mismatches(checksums, tree)
    if not arrays:
        return None
    more = f" and {len(arrays) - 1} more" if len(arrays) > 1 else ""
    return (f"the data of {arrays[0]}{more} differs from the checksum saved with it: "
            "changed on disk after the save")


def not_restored(folder: str, why: str, earlier: list[int]) -> str:
    """A training run cannot resume from `folder`; `earlier`: the steps it could use."""
    hint = (f"resume from an earlier one with --config.train.resume_step=N "
            f"(N in {', '.join(map(str, earlier))})" if earlier
            else "no earlier checkpoint exists, so start again in a new --workdir")
    hint = advice([why], hint, damaged="its files may be damaged or incomplete")
    return f"checkpoint {folder} could not be restored ({why}); {hint}."


def not_read(folder: str, problems: list[str], pick: str) -> str:
    """A reader (sampling, scoring) cannot load `folder`; `pick`: what else to load."""
    return f"checkpoint {folder} could not be read ({summary(problems)}); {advice(problems, pick)}."


def not_saved(directory: str, step: int | None, why: str, complete: list[int]) -> str:
    """A save failed; `complete`: the checkpoints still on disk."""
    kept = (f"the newest complete checkpoint is step {complete[-1]}" if complete
            else "no complete checkpoint exists yet")
    # (Another run on the same workdir is ruled out by the workdir lock.)
    cause = ("free disk space" if "space" in why.lower() or "quota" in why.lower()
             else "fix the directory's permissions" if denied([why])
             else "fix the cause")
    return (f"could not write checkpoint step {step} in {directory} ({why}); "
            f"{kept}. {cause[0].upper()}{cause[1:]}, then run the same command again to "
            "resume.")
