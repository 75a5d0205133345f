"""What a resumed run may change from its checkpoint.

A run resumed with another config keeps its checkpoint's parameters and
optimizer state, so a change to anything that shapes them (the model's
sizes, the tokenizer and its vocabulary) is refused with the list of
fields; everything else (step counts, evaluation cadence, the learning-rate
schedule, logging, dropout) may change, and the run logs what did. Before
the state is read, the saved parameters' shapes are compared with the new
model's too (a checkpoint whose config missed a field that matters). A
resume on other text (the store's fingerprint) is refused unless allowed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from smallgpt_jax.checkpoint.meta import Meta
from smallgpt_jax.config import flatten
from smallgpt_jax.system import console
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

# Model fields that change neither the parameters' shapes nor their meaning;
# every other model field does, and changing it on resume is refused.
_FREE_MODEL_FIELDS = ("dropout", "dropout_rng", "attention", "dtype", "fast_backward", "remat")


def is_structural(field: str, new: dict[str, Any]) -> bool:
    """Does changing `field` (flattened, e.g. 'model.num_layers') change the
    shapes (or the meaning) of the state? `new`: the new flattened config."""
    if field.startswith("model."):
        return field.split(".", 1)[1] not in _FREE_MODEL_FIELDS
    if field == "train.optimizer":  # The optimizer state's shape changes.
        return True
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
    A field the checkpoint's config lacks is skipped: there is nothing to
    compare it with.
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
        (refused if is_structural(field, flat_new) else allowed).append(line)
    return refused, allowed


def check_resumable(meta: Meta, new: dict, where: str, devices: int) -> list[str]:
    """What to tell the user about resuming from checkpoint `where` (its
    `meta`) with the config `new` on `devices` devices: the allowed changes,
    and a device count other than the checkpoint's. UserError naming the
    fields if a change is refused."""
    refused, allowed = config_changes(meta.config, new)
    if refused:
        raise UserError(
            f"cannot resume from {where}: the config changes the shape of the model or "
            f"tokenizer ({'; '.join(refused)}). Use the old values, or a new --workdir to "
            "start a new run.")
    notes = [f"resuming with changed settings: {'; '.join(allowed)}"] if allowed else []
    if meta.device_count not in (None, devices):
        notes.append(f"note: the checkpoint was written with {meta.device_count} device(s), "
                     f"this run has {devices}: training continues, but not bit for bit as an "
                     "uninterrupted run would.")
    return notes


def continues_branch(newest: tuple[int, Meta] | None, wanted: int, new: dict,
                     directory: str) -> bool:
    """Whether a run given config.train.resume_step=`wanted` is the same
    command again: the newest checkpoint after `wanted` (`newest`: its step
    and meta, None if there is none) descends from a run that went back to
    `wanted` already. Then this run continues from the newest instead of
    going back again and deleting that work (a printed "run the same command
    again to resume" must never lose work); with other settings than the
    newest's (`new`: the config), it is refused: going back once more, or
    continuing with the changes, is for the user to choose.
    """
    if newest is None or wanted not in newest[1].branch_points:
        return False  # Nothing newer, or another run's: go back to `wanted`.
    step, meta = newest
    refused, allowed = config_changes(meta.config, new)
    if refused or allowed:
        raise UserError(
            f"config.train.resume_step={wanted}: the checkpoints after step {wanted} in "
            f"{directory} (the newest is {step}) were trained from step {wanted} already, "
            f"with other settings ({'; '.join(refused + allowed)}). To continue them, leave "
            f"resume_step out; to go back to step {wanted} again, first move the checkpoints "
            f"after it out of {directory}.")
    console.say(
        f"config.train.resume_step={wanted} was applied by an earlier run of this command; "
        f"continuing its checkpoints from step {step}.")
    return True


def drop_newer(steps: list[int], step: int, delete: Callable[[int], None]) -> None:
    """Resuming at config.train.resume_step=`step` goes back in time: the
    checkpoints after it (among `steps`) are another future, replaced by this
    run's. Deletes them (`delete`), saying which."""
    newer = [s for s in steps if s > step]
    if newer:
        console.say(f"warning: deleting checkpoints {', '.join(map(str, newer))}, newer than "
                    f"config.train.resume_step={step} (only this once: the same command "
                    "again continues this run).")
    for s in newer:
        delete(s)


def _param_shapes(tree: Any) -> dict[str, tuple]:
    """{'block_0/attn/qkv/kernel': shape} for arrays or Orbax array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path):
            tuple(leaf.shape) for path, leaf in leaves}


def check_same_shapes(saved: Any, ours: Any, where: str) -> None:
    """UserError naming the parameters whose shapes differ between checkpoint
    `where` (`saved`: its params, arrays or Orbax metadata) and this run's."""
    theirs, ours = _param_shapes(saved), _param_shapes(ours)
    if theirs != ours:
        diff = [f"{k}: {theirs.get(k, 'absent')} -> {ours.get(k, 'absent')}"
                for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        raise UserError(f"cannot resume from {where}: parameter shapes differ "
                        f"({'; '.join(diff[:8])}{'; ...' if len(diff) > 8 else ''}).")


def data_changed(resume_meta: Meta | None, fingerprint: str, allow: bool) -> bool:
    """Whether a resumed run now trains on other text than its checkpoint was.

    Refused (one line) unless `allow` (config.train.allow_data_change); then logged,
    and True: the best validation loss so far was on other validation text,
    so its history restarts. A checkpoint that recorded no data says nothing.
    """
    before = resume_meta.data_fingerprint if resume_meta else ""
    if not before or before == fingerprint:
        return False
    if not allow:
        raise UserError(
            "cannot resume: the corpus or its train/validation split differs from what the "
            "checkpoint was trained on (other file contents, files, or train_fraction). Train "
            "on the old data, use a new --workdir, or pass "
            "--config.train.allow_data_change=True to go on with the new data.")
    console.say("resuming on different data (config.train.allow_data_change=True): "
                          "the best validation loss so far is forgotten, since it was "
                          "measured on other text.")
    return True
