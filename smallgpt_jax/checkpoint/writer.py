"""Orbax checkpoints of a training run: save the state, keep the newest and the best, resume.

A run's checkpoints live in `<workdir>/checkpoints/<step>/`, one folder per
saved step, each with two items:

- `state`: the TrainState (step, params, optimizer state). One copy only:
  under pmap every device holds the same values, so device 0's are saved.
- `meta`: JSON with everything else needed to continue or to sample
  (checkpoint/meta.py).

Crash safety comes from Orbax: a checkpoint is written into
`<step>.orbax-checkpoint-tmp` and renamed to `<step>` only once every file is
on disk, so a save cut off by a crash is never mistaken for a complete one.
Saves run in a background thread, so training does not wait for the disk.

`config.train.resume_step=N` goes back to step N once: newer checkpoints are
deleted, the ones written after record N (`branch_points`), and the same
command again continues from them (checkpoint/compat.py: continues_branch).

Which checkpoints stay: the `keep_checkpoints` newest, plus the one with the
lowest validation loss, which is never deleted while it is the best. A
checkpoint is deleted by first renaming its folder into `checkpoints/deleted/`
(one atomic step: a reader sees the whole folder or none of it), which is
emptied later. Damaged and half-deleted folders: checkpoint/faults.py.

Each save records a checksum of every array (see checkpoint/checksum.py), and every
restore verifies them: bits flipped on disk are one clear error, not a model
that silently differs. A training run holds its workdir exclusively (system/lock.py).

Reading a checkpoint (here for the full state, for sampling, scoring and
pictures the parameters alone): checkpoint/reader.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from smallgpt_jax.checkpoint import checksum, faults
from smallgpt_jax.checkpoint.compat import (check_resumable, check_same_shapes,
                                            continues_branch, drop_newer)
from smallgpt_jax.checkpoint.meta import Meta
from smallgpt_jax.checkpoint.reader import (checkpoints_dir, full_state, open_manager,
                                            parse_meta, pick_step, restore, saved_params,
                                            val_loss)
from smallgpt_jax.checkpoint.workdir import STEP, TRASH
from smallgpt_jax.system import console
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Resume:
    """Where a resumed run starts: a checkpoint's step, its meta JSON, and
    the tokenizer it was trained with (the data is encoded with it again)."""

    step: int
    meta: Meta
    tokenizer: tokenizer_lib.Tokenizer

    @property
    def best_val_loss(self) -> float:
        return self.meta.best

    @property
    def train_time_s(self) -> float:
        """Seconds spent training up to this checkpoint (earlier runs included)."""
        return float(self.meta.train_time_s or 0.0)


class Checkpointer:
    """Saves and restores a run's checkpoints with an Orbax CheckpointManager.

    Use as a context manager: leaving it waits for a save still being written
    (so the newest checkpoint is complete before the process exits).
    """

    def __init__(self, workdir: str, keep: int):
        self.directory = checkpoints_dir(workdir)
        # Each step's problems, for the resume point (the run owns the workdir:
        # nothing changes them meanwhile).
        self._problems = faults.skip_broken(self.directory, clean=True).problems
        self._empty_trash()
        # Keep the newest `keep`, and the best one by validation loss (BestN sorts
        # worst first and keeps the last n; unevaluated checkpoints never count).
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep),
            checkpoint_managers.BestN(get_metric_fn=val_loss, reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=val_loss, best_mode="min",  # Makes Orbax store each step's metrics.
            # Deleting is a rename into TRASH: never a half-deleted step folder.
            todelete_subdir=TRASH,
            enable_async_checkpointing=True)
        self._manager = open_manager(workdir, options)
        self._saving: int | None = None  # Step of the save in flight, if any.
        # The steps this run's line of checkpoints went back to with
        # config.train.resume_step, oldest first; set by resume_point.
        self.branch_points: list[int] = []

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # Already failing: finish what can be finished, keep the first error.
            self.close()
        except Exception as e:
            console.say(f"warning: {e}")

    def _empty_trash(self) -> None:
        """Removes the checkpoints that the keep policy deleted (renamed away)."""
        if jax.process_index() == 0:
            shutil.rmtree(os.path.join(self.directory, TRASH), ignore_errors=True)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _on_disk(self) -> list[int]:
        """Complete checkpoints as the directory shows them right now."""
        return sorted(int(e) for e in os.listdir(self.directory) if STEP.match(e))

    # -- resuming ---------------------------------------------------------

    def resume_point(self, new: dict) -> Resume | None:
        """Picks the checkpoint to resume from (None: start at step 0); `new`:
        the run's config as plain data (`config.to_dict()`), compared with the
        checkpoint's.

        The newest one, or `new`'s train.resume_step (unless this same command
        went back to that step before: then its newest). Refuses a config that
        changes the model's or tokenizer's shape; logs the allowed changes.
        The Resume carries the checkpoint's tokenizer: the run keeps the
        vocabulary it was trained with.
        """
        steps = self.steps()
        wanted = new["train"]["resume_step"]
        if wanted >= 0 and continues_branch(self._branch_of(steps, wanted), wanted, new,
                                            self.directory):
            wanted = -1  # This command ran before: its own checkpoints are newer.
        if not steps and wanted < 0:
            return None
        step = pick_step(self._manager, steps, wanted if wanted >= 0 else "latest",
                         self.directory, asked=f"config.train.resume_step={wanted}")
        where = f"{self.directory}/{step}"
        meta = self._meta(step)
        # The checkpoints of a run that went back to a step say which (see save()).
        self.branch_points = list(meta.branch_points) + ([wanted] if wanted >= 0 else [])
        for line in check_resumable(meta, new, where, jax.device_count()):
            console.say(line)
        return Resume(step, meta, tokenizer_lib.from_dict(meta.tokenizer))

    def _meta(self, step: int) -> Meta:
        """Checkpoint `step`'s meta item; UserError if it cannot be read."""
        problems = self._problems.get(step, [])
        if problems:
            raise UserError(self._damaged(step, faults.summary(problems)))
        try:
            meta = restore(self._manager, step)["meta"]
        except Exception as e:
            raise UserError(self._damaged(step, faults.reason(e)))
        return parse_meta(meta, f"{self.directory}/{step}",
                          "is this workdir from another program?",
                          lambda why: self._damaged(step, why))

    def _branch_of(self, steps: list[int], wanted: int) -> tuple[int, Meta] | None:
        """(step, meta) of the newest readable checkpoint after step `wanted`."""
        for step in reversed([s for s in steps if s > wanted]):
            try:
                return step, self._meta(step)
            except UserError:  # Damaged: the one before it tells as well.
                continue
        return None

    def restore_state(self, resume: Resume, target: Any) -> Any:
        """Loads the saved TrainState where `target` places it.

        `target` is a fresh state of the config (arrays, or just their shapes
        from `jax.eval_shape`): it says which structure and shapes to expect,
        and where each array goes (reader.full_state: its own sharding if it
        names one, else the first local device).
        """
        try:
            saved = saved_params(self._manager, resume.step)
        except Exception as e:
            raise UserError(self._damaged(resume.step, faults.reason(e)))
        check_same_shapes(saved, target.params, f"{self.directory}/{resume.step}")
        try:
            state = restore(self._manager, resume.step, full_state(target), meta=False)["state"]
        except Exception as e:
            raise UserError(self._damaged(resume.step, faults.reason(e)))
        changed = faults.changed_on_disk(resume.meta.checksums, state)
        if changed:
            raise UserError(self._damaged(resume.step, changed))
        drop_newer(self.steps(), resume.step, self._manager.delete)
        self._empty_trash()
        console.say(f"resuming from checkpoint step {resume.step} ({self.directory}/{resume.step})")
        return state

    def _damaged(self, step: int, why: str) -> str:
        earlier = [s for s in self._on_disk() if s < step]
        return faults.not_restored(f"{self.directory}/{step}", why, earlier)

    # -- saving -----------------------------------------------------------

    def save(self, step: int, state: Any, meta: Meta) -> None:
        """Starts writing a checkpoint of `state` (one, unreplicated copy) with
        the run's `meta`; the checksums, device count and branch points are
        added here.

        Returns once the arrays are copied to host memory (Orbax copies jax
        arrays before its save() returns); the files are written in the
        background, so the next train step may reuse (donate) the buffers.
        Raises UserError if an earlier background save failed (e.g. the disk
        is full).
        """
        self.wait()
        self._empty_trash()  # What the last save's keep policy deleted.
        # Summed where the arrays are (on the device), before any host copy.
        sums = checksum.checksums(state)
        # One process: jax arrays, which Orbax copies to the host itself.
        # Several: host copies, which Orbax treats as replicated and process 0
        # writes (it cannot save an array that lives on one process's device);
        # but an array spread over every process's devices (fsdp) stays one:
        # each process writes its own shards, nothing is gathered.
        keep_jax = jax.process_count() == 1
        state = jax.tree.map(
            lambda x: x if isinstance(x, jax.Array) and (keep_jax or not x.is_fully_addressable)
            else np.asarray(x), state)
        meta = dataclasses.replace(meta, step=step, checksums=sums,
                                   device_count=jax.device_count(),
                                   branch_points=tuple(self.branch_points))
        metrics = {} if meta.val_loss is None else {"val_loss": float(meta.val_loss)}
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta.to_json())),
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
        return faults.not_saved(self.directory, step, faults.reason(e), self._on_disk())

    def close(self) -> None:
        try:
            self.wait()
            self._empty_trash()
        finally:
            self._manager.close()
