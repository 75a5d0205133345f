"""Orbax checkpoints: save the training state, resume after a crash, load weights.

A run's checkpoints live in `<workdir>/checkpoints/<step>/`, one folder per
saved step, each with two items:

- `state`: the TrainState (step, params, optimizer state). One copy only:
  under pmap every device holds the same values, so device 0's are saved.
- `meta`: JSON with everything else needed to continue or to sample: the full
  config, the tokenizer with its vocabulary, the seed and step (together they
  are the whole RNG state, since batches and dropout keys are pure functions
  of them), this step's validation loss if it was evaluated, and the best
  validation loss so far.

Crash safety comes from Orbax: a checkpoint is written into
`<step>.orbax-checkpoint-tmp` and renamed to `<step>` only once every file is
on disk, so a save cut off by a crash is never mistaken for a complete one.
Saves run in a background thread, so training does not wait for the disk.

Which checkpoints stay: the `keep_checkpoints` newest, plus the one with the
lowest validation loss, which is never deleted while it is the best. A
checkpoint is deleted by first renaming its folder into `checkpoints/deleted/`
(one atomic step: a reader sees the whole folder or none of it), which is
emptied later. A folder older than the newest complete checkpoint that misses
files (a deletion cut off by a crash, in a workdir from before this rule) is
debris: it is skipped with a warning, and a training run removes it.

Each save records a checksum of every array (see checksum.py), and every
restore verifies them: bits flipped on disk are one clear error, not a model
that silently differs. A training run holds its workdir exclusively (lock.py).

`load_params(workdir)` reads the parameters alone (no optimizer), for
sampling and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from smallgpt_jax import checksum, tokenizer as tokenizer_lib
from smallgpt_jax.config import flatten
from smallgpt_jax.errors import UserError, check_writable_dir

CHECKPOINT_DIR = "checkpoints"
FORMAT = 1  # Version of the `meta` layout, for future readers.

_STEP = re.compile(r"^\d+$")
TRASH = "deleted"  # checkpoints/deleted/<step>: renamed there, then removed.
_INCOMPLETE = re.compile(r"^\d+\.orbax-checkpoint-tmp")
# Names a run writes at the top of its workdir: finding one means the
# directory belongs to a smallgpt_jax run and may be resumed (train.log is
# what the sweep runner writes there before the run starts).
_OUR_FILES = (CHECKPOINT_DIR, "config.json", "tokenizer.json", "summary.json", "train.log",
              "run.lock")
# Model fields that change neither the parameters' shapes nor their meaning;
# every other model field does, and changing it on resume is refused.
_FREE_MODEL_FIELDS = ("dropout", "attention", "dtype", "fast_backward")


def _say(text: str) -> None:
    """A line for the user on stderr (from process 0 only)."""
    if jax.process_index() == 0:
        print(text, file=sys.stderr, flush=True)


def _reason(e: BaseException) -> str:
    """A short, one-line description of an exception from Orbax/TensorStore."""
    text = str(e).strip() or type(e).__name__
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:  # TensorStore puts errno at the end of a long message.
        return os.strerror(int(code.group(1)))
    line = re.sub(r"(\s*\[tensorstore_spec=|\. See full TensorStore details).*", "",
                  text.splitlines()[0])
    status = re.match(r"([A-Z_]{4,}): (.*)", line)
    if status:  # "CODE: context: context: ...: what went wrong" -> the last two parts.
        line = f"{status.group(1)}: {': '.join(status.group(2).split(': ')[-2:])}"
    return line if len(line) <= 300 else line[:300] + "..."


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir`, or checks that an existing one is ours and writable.

    Raises UserError before any training starts.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory.")
    if os.path.isdir(workdir):
        entries = sorted(os.listdir(workdir))
        for name in ("config.json", "tokenizer.json"):
            _check_own_copy(workdir, name, entries)
        foreign = [e for e in ("config.json", "tokenizer.json")
                   if e in entries and not _is_ours(os.path.join(workdir, e))]
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
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{directory} is a file, not a folder of checkpoints; "
                        "choose another --workdir.")
    check_writable_dir(directory, f"--workdir={workdir}", "choose a directory you can write to")
    strange = [e for e in sorted(os.listdir(directory))
               if not (_STEP.match(e) or _INCOMPLETE.match(e) or e == TRASH)]
    if strange:
        raise UserError(
            f"{directory} holds {', '.join(strange[:5])}, which are not smallgpt_jax "
            "checkpoints; move them away or choose another --workdir.")


def _read_json(path: str) -> tuple[Any, str | None]:
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


def _check_own_copy(workdir: str, name: str, entries: list[str]) -> None:
    """A config.json or tokenizer.json that cannot be read, in a workdir with
    checkpoints, is the run's own copy gone bad, not another program's file:
    say so, and how to get it back (both are rewritten from the checkpoint)."""
    if name not in entries or CHECKPOINT_DIR not in entries:
        return
    path = os.path.join(workdir, name)
    content, why = _read_json(path)
    if why == "is damaged" or (why is None and not isinstance(content, dict)):
        raise UserError(
            f"{path} is damaged (not the JSON this run wrote); it is only a copy: delete it "
            "and run the same command again (resuming writes it again from the checkpoint).")
    if why:
        raise UserError(f"{path} {why}; fix its permissions, then run the same command again.")


def _is_ours(path: str) -> bool:
    """Is this config.json or tokenizer.json one that a run of ours wrote?"""
    content, _ = _read_json(path)
    if not isinstance(content, dict):
        return False
    if os.path.basename(path) == "config.json":
        return {"model", "train", "data"} <= content.keys()
    return content.get("kind") in ("char", "byte", "bpe")


def _summary(problems: list[str]) -> str:
    return "; ".join(problems[:3])


def _manager_file_problems(folder: str) -> list[str]:
    """The files Orbax's CheckpointManager reads for every step when it opens."""
    names = ["_CHECKPOINT_METADATA"]
    if os.path.isdir(os.path.join(folder, "metrics")):
        names.append("metrics/metrics")
    return [f"{name} {why}" for name in names
            if (why := _read_json(os.path.join(folder, name))[1])]


def damaged_files(folder: str) -> list[str]:
    """Problems with the files a restore of the complete checkpoint `folder`
    reads, found cheaply. (The CheckpointManager's own files were checked
    when it opened the directory: `_check_step_folders`.)

    Orbax reads arrays asynchronously, and when files are missing the reads
    still in flight print tracebacks after the error; checking first gives one
    clear message. (Damaged array data is still caught by the restore itself.)
    """
    try:
        return _damaged_files(folder)
    except FileNotFoundError:  # Deleted while we looked (by the training run).
        return ["its files are missing"]


def _damaged_files(folder: str) -> list[str]:
    problems = []
    meta = os.path.join(folder, "meta", "metadata")
    if not os.path.isfile(meta) or os.path.getsize(meta) == 0:
        problems.append("meta/metadata is missing or empty")
    state = os.path.join(folder, "state")
    content, why = _read_json(os.path.join(state, "_METADATA"))
    if why:
        problems.append(f"state/_METADATA {why}")
    if isinstance(content, dict) and content.get("use_ocdbt"):
        # One database: a manifest for the tree, one per writing process.
        parts = [e for e in os.listdir(state) if e.startswith("ocdbt.process_")]
        if not parts:
            problems.append("state/ocdbt.process_* is missing")
        for manifest in ["manifest.ocdbt"] + [f"{p}/manifest.ocdbt" for p in parts]:
            path = os.path.join(state, manifest)
            if not os.path.isfile(path) or os.path.getsize(path) == 0:
                problems.append(f"state/{manifest} is missing or empty")
        for data_dir in ["d"] + [f"{p}/d" for p in parts]:
            path = os.path.join(state, data_dir)
            empty = [e for e in (os.listdir(path) if os.path.isdir(path) else [])
                     if os.path.getsize(os.path.join(path, e)) == 0]
            if empty:
                problems.append(f"state/{data_dir}/{empty[0]} is empty")
    return problems


def _check_step_folders(directory: str, clean: bool) -> set[int]:
    """Refuses to go on when a complete checkpoint's small JSON files are
    damaged: Orbax reads them all when it opens the directory, so one bad file
    would otherwise block every resume, whichever step is asked for.

    Returns the steps whose folders are debris: older than the newest intact
    checkpoint and missing files (a deletion cut off by a crash, or one
    happening right now in the training run). Those are skipped with a
    warning; `clean` (a training run, which owns the workdir) removes them.
    """
    try:
        names = os.listdir(directory) if os.path.isdir(directory) else []
    except OSError as e:
        raise UserError(f"cannot read {directory} ({e.strerror or e}); fix its permissions.")
    steps = sorted((int(e) for e in names if _STEP.match(e)), reverse=True)
    manager_problems, problems = {}, {}
    for step in steps:
        folder = os.path.join(directory, str(step))
        manager_problems[step] = _manager_file_problems(folder)
        problems[step] = manager_problems[step] + damaged_files(folder)
    intact = [s for s in steps if not problems[s]]
    debris = {s for s in steps if intact and s < intact[0]
              and any("missing" in p for p in problems[s])}
    for step in sorted(debris):
        folder = os.path.join(directory, str(step))
        _say(f"warning: skipping {folder}: a checkpoint older than step {intact[0]} with files "
             f"missing ({_summary(problems[step])}), left by a deletion that was cut off"
             + ("; removing it." if clean else "."))
        if clean and jax.process_index() == 0:
            shutil.rmtree(folder, ignore_errors=True)
    for step in sorted(set(steps) - debris):
        if manager_problems[step]:
            raise UserError(_move_away(os.path.join(directory, str(step)),
                                       manager_problems[step]))
    return debris


def _changed(arrays: list[str]) -> str:
    more = f" and {len(arrays) - 1} more" if len(arrays) > 1 else ""
    return (f"the data of {arrays[0]}{more} differs from the checksum saved with it: "
            "changed on disk after the save")


def _move_away(folder: str, problems: list[str]) -> str:
    if _denied(problems):  # Not damage: nothing to move away.
        return (f"checkpoint {folder} cannot be read ({_summary(problems)}); fix its files' "
                "permissions, then run the same command again.")
    workdir = os.path.dirname(os.path.dirname(folder))
    step = os.path.basename(folder)
    return (f"checkpoint {folder} is damaged ({_summary(problems)}); move it out of "
            f"the way (mv {folder} {os.path.join(workdir, f'damaged-{step}')}), then run the "
            "same command again.")


def _is_structural(field: str, new: dict[str, Any]) -> bool:
    """Does changing `field` change the shapes (or the meaning) of the state?"""
    if field.startswith("model."):
        return field.split(".", 1)[1] not in _FREE_MODEL_FIELDS
    if field in ("data.tokenizer", "data.end_of_text"):  # The vocabulary changes.
        return True
    if field == "data.vocab_size":  # Only BPE and word learn a vocabulary of this size.
        return new.get("data.tokenizer") in tokenizer_lib.LEARNED
    return False


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """Differences between a checkpoint's config and a new one, as
    'field: old -> new' lines: (refused, allowed).

    Refused: anything that changes the model's or the tokenizer's shape.
    Allowed: everything else (num_steps, eval cadence, schedule, logging...).
    Fields the old config did not have (added to the code since) are skipped.
    """
    flat_old, flat_new = flatten(old), flatten(new)
    refused, allowed = [], []
    for field in sorted(flat_new):
        if field not in flat_old or field == "train.resume_step":
            continue
        before, after = flat_old[field], flat_new[field]
        if before == after:
            continue
        line = f"{field}: {before!r} -> {after!r}"
        (refused if _is_structural(field, flat_new) else allowed).append(line)
    return refused, allowed


def _val_loss(metrics: dict) -> float:
    """Orbax ranks checkpoints by this; unevaluated ones rank last."""
    value = (metrics or {}).get("val_loss")
    return math.inf if value is None else float(value)


def _param_shapes(tree: Any) -> dict[str, tuple]:
    """{'block_0/attn/qkv/kernel': shape} for arrays or Orbax array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path):
            tuple(leaf.shape) for path, leaf in leaves}


@dataclasses.dataclass
class Resume:
    """Where a resumed run starts: a checkpoint's step and its meta JSON."""

    step: int
    meta: dict

    @property
    def best_val_loss(self) -> float:
        value = self.meta.get("best_val_loss")
        return math.inf if value is None else float(value)

    @property
    def train_time_s(self) -> float:
        """Seconds spent training up to this checkpoint (earlier runs included)."""
        return float(self.meta.get("train_time_s") or 0.0)


class Checkpointer:
    """Saves and restores a run's checkpoints with an Orbax CheckpointManager.

    Use as a context manager: leaving it waits for a save still being written
    (so the newest checkpoint is complete before the process exits).
    """

    def __init__(self, workdir: str, keep: int):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        for name in self.incomplete():
            _say(f"warning: skipping incomplete checkpoint {os.path.join(self.directory, name)} "
                 "(a save that never finished, e.g. cut off by a crash); removing it.")
            if jax.process_index() == 0:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        _check_step_folders(self.directory, clean=True)
        self._empty_trash()
        # Keep the newest `keep`, and the best one by validation loss (BestN sorts
        # worst first and keeps the last n; unevaluated checkpoints never count).
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep),
            checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_val_loss, best_mode="min",  # Makes Orbax store each step's metrics.
            # Deleting is a rename into TRASH: never a half-deleted step folder.
            todelete_subdir=TRASH,
            enable_async_checkpointing=True)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()})
        except Exception as e:  # e.g. a step folder with unreadable metadata.
            raise UserError(f"cannot read the checkpoints in {self.directory}: {_reason(e)}")
        self._saving: int | None = None  # Step of the save in flight, if any.

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # Already failing: finish what can be finished, keep the first error.
            self.close()
        except Exception as e:
            _say(f"warning: {e}")

    def _empty_trash(self) -> None:
        """Removes the checkpoints that the keep policy deleted (renamed away)."""
        if jax.process_index() == 0:
            shutil.rmtree(os.path.join(self.directory, TRASH), ignore_errors=True)

    def incomplete(self) -> list[str]:
        """Folders of saves that never finished (left by a crash)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(e for e in os.listdir(self.directory) if _INCOMPLETE.match(e))

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _on_disk(self) -> list[int]:
        """Complete checkpoints as the directory shows them right now."""
        return sorted(int(e) for e in os.listdir(self.directory) if _STEP.match(e))

    # -- resuming ---------------------------------------------------------

    def resume_point(self, config: ml_collections.ConfigDict) -> Resume | None:
        """Picks the checkpoint to resume from (None: start at step 0).

        The newest one, or `config.train.resume_step`. Refuses a config that
        changes the model's or tokenizer's shape; logs the allowed changes.
        Puts the checkpoint's tokenizer back as the workdir's tokenizer.json,
        so the run keeps the vocabulary it was trained with.
        """
        steps = self.steps()
        wanted = config.train.resume_step
        if wanted >= 0 and wanted not in steps:
            raise UserError(
                f"config.train.resume_step={wanted}: there is no checkpoint for that step in "
                f"{self.directory} (complete ones: {', '.join(map(str, steps)) or 'none'}).")
        if not steps:
            return None
        step = wanted if wanted >= 0 else steps[-1]
        problems = damaged_files(os.path.join(self.directory, str(step)))
        if problems:
            raise UserError(self._damaged(step, _summary(problems)))
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise UserError(self._damaged(step, _reason(e)))
        if not isinstance(meta, dict) or "config" not in meta or "tokenizer" not in meta:
            raise UserError(f"checkpoint {self.directory}/{step} has no smallgpt_jax metadata; "
                            "is this workdir from another program?")
        refused, allowed = config_changes(meta["config"], config.to_dict())
        if refused:
            raise UserError(
                f"cannot resume from {self.directory}/{step}: the config changes the shape of "
                f"the model or tokenizer ({'; '.join(refused)}). Use the old values, or a new "
                "--workdir to start a new run.")
        if allowed:
            _say(f"resuming with changed settings: {'; '.join(allowed)}")
        if meta.get("device_count") not in (None, jax.device_count()):
            _say(f"note: the checkpoint was written with {meta['device_count']} device(s), this "
                 f"run has {jax.device_count()}: training continues, but not bit for bit as "
                 "an uninterrupted run would.")
        if jax.process_index() == 0:
            tokenizer_lib.save(tokenizer_lib.from_dict(meta["tokenizer"]),
                               os.path.join(self.workdir, "tokenizer.json"))
        return Resume(step, meta)

    def restore_state(self, resume: Resume, target: Any) -> Any:
        """Loads the saved TrainState, onto the first local device.

        `target` is a fresh state of the config (arrays, or just their shapes
        from `jax.eval_shape`): it says which structure and shapes to expect.
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
        try:
            saved = self._manager.item_metadata(resume.step)["state"].tree["params"]
            theirs, ours = _param_shapes(saved), _param_shapes(target.params)
        except Exception as e:
            raise UserError(self._damaged(resume.step, _reason(e)))
        if theirs != ours:
            diff = [f"{k}: {theirs.get(k, 'absent')} -> {ours.get(k, 'absent')}"
                    for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
            raise UserError(
                f"cannot resume from {self.directory}/{resume.step}: parameter shapes differ "
                f"({'; '.join(diff[:8])}{'; ...' if len(diff) > 8 else ''}).")
        try:
            state = self._manager.restore(resume.step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:
            raise UserError(self._damaged(resume.step, _reason(e)))
        changed = checksum.mismatches(resume.meta.get("checksums"), state)
        if changed:
            raise UserError(self._damaged(resume.step, _changed(changed)))
        newer = [s for s in self.steps() if s > resume.step]
        if newer:  # resume_step went back in time: those futures are replaced.
            _say(f"warning: deleting checkpoints {', '.join(map(str, newer))}, newer than "
                 f"config.train.resume_step={resume.step}; leave resume_step out next time.")
            for s in newer:
                self._manager.delete(s)
            self._empty_trash()
        _say(f"resuming from checkpoint step {resume.step} ({self.directory}/{resume.step})")
        return state

    def finished_summary(self, resume: Resume) -> dict[str, Any]:
        """summary.json's content for a run whose final checkpoint is `resume`."""
        meta = resume.meta
        old = {"eval/val_loss": meta.get("val_loss"), "eval/best_val_loss":
               meta.get("best_val_loss")}  # Checkpoints from before meta["eval"].
        return {**{k: v for k, v in old.items() if v is not None}, **(meta.get("eval") or {}),
                "steps": resume.step, "wall_time_s": resume.train_time_s}

    def _damaged(self, step: int, why: str) -> str:
        earlier = [s for s in self._on_disk() if s < step]
        hint = (f"resume from an earlier one with --config.train.resume_step=N "
                f"(N in {', '.join(map(str, earlier))})" if earlier
                else "no earlier checkpoint exists, so start again in a new --workdir")
        hint = _advice([why], hint, damaged="its files may be damaged or incomplete")
        return f"checkpoint {self.directory}/{step} could not be restored ({why}); {hint}."

    # -- saving -----------------------------------------------------------

    def save(self, step: int, state: Any, *, config: ml_collections.ConfigDict,
             tokenizer: tokenizer_lib.Tokenizer, best_val_loss: float,
             val_loss: float | None = None, train_time_s: float | None = None,
             eval_metrics: dict[str, float] | None = None,
             data_fingerprint: str = "") -> None:
        """Starts writing a checkpoint of `state` (one, unreplicated copy).

        Returns once the arrays are copied to host memory (Orbax copies jax
        arrays before its save() returns); the files are written in the
        background, so the next train step may reuse (donate) the buffers.
        Raises UserError if an earlier background save failed (e.g. the disk
        is full). `eval_metrics`: the newest evaluation's numbers, kept so
        that a finished run's summary.json can be written again from its
        final checkpoint.
        """
        self.wait()
        self._empty_trash()  # What the last save's keep policy deleted.
        # Summed where the arrays are (on the device), before any host copy.
        sums = checksum.checksums(state)
        # One process: jax arrays, which Orbax copies to the host itself.
        # Several: host copies, which Orbax treats as replicated and process 0
        # writes (it cannot save an array that lives on one process's device).
        keep_jax = jax.process_count() == 1
        state = jax.tree.map(
            lambda x: x if keep_jax and isinstance(x, jax.Array) else np.asarray(x), state)
        meta = {
            "format": FORMAT,
            "step": step,
            "seed": config.seed,  # With `step`, the whole RNG state.
            "device_count": jax.device_count(),
            "val_loss": val_loss,
            "best_val_loss": best_val_loss if math.isfinite(best_val_loss) else None,
            "train_time_s": train_time_s,  # Wall time of training so far, over resumes.
            "eval": eval_metrics or {},
            # Verified by every restore: data changed on disk is an error, not a surprise.
            "checksums": sums,
            "config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "data_fingerprint": data_fingerprint,  # Corpus and split (store.py manifest).
        }
        metrics = {} if val_loss is None else {"val_loss": float(val_loss)}
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=metrics, force=True)
        except Exception as e:
            raise UserError(self._save_failed(step, e))
        self._saving = step

    def poll(self) -> None:
        """Reports a failed background save without waiting for one in flight."""
        if self._saving is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Waits for the save in flight; UserError if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise UserError(self._save_failed(self._saving, e))
        finally:
            self._saving = None

    def _save_failed(self, step: int | None, e: BaseException) -> str:
        complete = self._on_disk()
        kept = (f"the newest complete checkpoint is step {complete[-1]}" if complete
                else "no complete checkpoint exists yet")
        why = _reason(e)
        # (Another run on the same workdir is ruled out by the workdir lock.)
        cause = ("free disk space" if "space" in why.lower() or "quota" in why.lower()
                 else "fix the directory's permissions" if _denied([why])
                 else "fix the cause")
        return (f"could not write checkpoint step {step} in {self.directory} ({why}); "
                f"{kept}. {cause[0].upper()}{cause[1:]}, then run the same command again to "
                "resume.")

    def close(self) -> None:
        try:
            self.wait()
            self._empty_trash()
        finally:
            self._manager.close()


def _resolve_step(manager: ocp.CheckpointManager, step: str | int, where: str,
                  skip: set[int] = frozenset()) -> int:
    steps = sorted(set(manager.all_steps()) - skip)
    if not steps:
        raise UserError(f"no complete checkpoint in {where}; train first (python -m "
                        "smallgpt_jax.main --config=... --workdir=...).")
    if step == "latest":
        return steps[-1]
    if step == "best":
        scored = [(_val_loss(manager.metrics(s)), s) for s in steps]
        scored = [(v, s) for v, s in scored if math.isfinite(v)]
        if not scored:
            raise UserError(f"no checkpoint in {where} has a validation loss yet; "
                            "ask for the latest one instead.")
        return min(scored)[1]
    if isinstance(step, str) and not step.isdigit():
        raise UserError(f"checkpoint step {step!r} is not 'latest', 'best' or a number.")
    if int(step) not in steps:
        raise UserError(f"no checkpoint for step {step} in {where} "
                        f"(complete ones: {', '.join(map(str, steps))}).")
    return int(step)


class _Vanished(Exception):
    """The checkpoint being read was deleted meanwhile (by the training run)."""


def load_params(workdir: str, step: str | int = "latest"
                ) -> tuple[Any, Any, tokenizer_lib.Tokenizer]:
    """(params, model config, tokenizer) from a checkpoint in `workdir`
    (`load_checkpoint` also says which step that was)."""
    return load_checkpoint(workdir, step)[:3]


def load_checkpoint(workdir: str, step: str | int = "latest"
                    ) -> tuple[Any, Any, tokenizer_lib.Tokenizer, int]:
    """(params, model config, tokenizer, the step number loaded) from a
    checkpoint in `workdir`.

    `step` is 'latest', 'best' (lowest validation loss) or a step number.
    Reads the parameters alone: no optimizer is built and the optimizer
    state is not read. A training run may be writing (and deleting old
    checkpoints in) the same workdir: a checkpoint deleted while it was being
    read is looked up again.
    """
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise UserError(f"no checkpoints in {workdir} (expected {directory}); "
                        "is this the --workdir of a training run?")
    for attempt in range(3):
        try:
            return _load_params(directory, step)
        except _Vanished as e:
            if attempt == 2:
                raise UserError(f"checkpoint {e} was deleted while it was read (the training "
                                "run keeps only its newest ones); run the same command again.")
    raise AssertionError("unreachable")


def _load_params(directory: str, step: str | int):
    from smallgpt_jax.model import model_config  # Here to keep imports light.

    debris = _check_step_folders(directory, clean=False)
    try:
        manager = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(create=False),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
    except Exception as e:
        raise UserError(f"cannot read the checkpoints in {directory}: {_reason(e)}")
    with manager:
        chosen = _resolve_step(manager, step, directory, debris)
        folder = os.path.join(directory, str(chosen))
        others = [s for s in sorted(set(manager.all_steps()) - debris) if s != chosen]
        pick = ("pick another step (complete ones: "
                f"{', '.join(map(str, others)) or 'none'})")
        problems = damaged_files(folder)
        if problems and not os.path.isdir(folder):
            raise _Vanished(folder)
        if problems:
            raise UserError(f"checkpoint {folder} could not be read "
                            f"({_summary(problems)}); {_advice(problems, pick)}.")
        try:
            saved = manager.item_metadata(chosen)["state"].tree["params"]
            # The saved shapes are the restore target: only `params` is read.
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved,
                                  is_leaf=lambda x: hasattr(x, "shape"))
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
            restored = manager.restore(chosen, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"params": target},
                                             restore_args={"params": as_numpy},
                                             partial_restore=True),
                meta=ocp.args.JsonRestore()))
        except Exception as e:
            if not os.path.isdir(folder):
                raise _Vanished(folder)
            raise UserError(f"checkpoint {folder} could not be read ({_reason(e)}); "
                            f"{_advice([_reason(e)], pick)}.")
    meta = restored["meta"]
    if not isinstance(meta, dict) or not {"config", "tokenizer"} <= meta.keys():
        raise UserError(f"checkpoint {folder} has no smallgpt_jax metadata (meta/metadata "
                        f"lacks the config or tokenizer); {pick}.")
    changed = checksum.mismatches(meta.get("checksums"), restored["state"])
    if changed:
        raise UserError(f"checkpoint {folder} could not be read ({_changed(changed)}); "
                        f"its files are damaged: {pick}.")
    try:
        tok = tokenizer_lib.from_dict(meta["tokenizer"])
        config = ml_collections.ConfigDict(meta["config"])
        mc = model_config(config, tok.vocab_size)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"checkpoint {folder} has damaged metadata ({type(e).__name__}: "
                        f"{e}); {pick}.")
    return jax.device_put(restored["state"]["params"]), mc, tok, chosen


def _denied(problems: list[str]) -> bool:
    """Whether the problem is access, not damage (nothing to move away)."""
    return any("ermission denied" in p for p in problems)


def _advice(problems: list[str], otherwise: str, damaged: str = "its files are damaged") -> str:
    """What to do: fix permissions when that is the problem, else `otherwise`."""
    if _denied(problems):
        return "fix the files' permissions, then run the same command again"
    return f"{damaged}: {otherwise}"
