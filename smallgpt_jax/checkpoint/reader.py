"""Reading a run's checkpoints: the one Orbax restore, for training and for a trained model.

`restore` is the only place that reads a checkpoint's items: checkpoint/writer.py
asks it for the full TrainState (`full_state`) to resume, `load_checkpoint`
for the parameters alone (`params_only`), for sampling, scoring and pictures:

    params, model_config, tokenizer = load_params("runs/char_cpu", step="best")

`load_params` reads the parameters alone out of a checkpoint that checkpoint/writer.py wrote (no
optimizer is built and the optimizer state is not read), with the model
config and tokenizer saved next to them. A training run may be writing in
the same workdir meanwhile: this reader never removes anything, skips the
run's save in flight and folders it is deleting, and looks a checkpoint up
again when the run deleted it while it was being read.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from smallgpt_jax.checkpoint import faults
from smallgpt_jax.checkpoint.meta import Meta, Unreadable, read_meta
from smallgpt_jax.checkpoint.workdir import CHECKPOINT_DIR, STEP
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

# Reads of a workdir whose training run saves and deletes meanwhile: each
# attempt that fails because of it has a newer checkpoint to read.
_ATTEMPTS = 5


# How a checkpoint is opened, picked and read, for training (checkpoint/writer.py:
# the full state) and for sampling, scoring and pictures (below: the parameters).

def val_loss(metrics: dict) -> float:
    """Orbax ranks checkpoints by this; unevaluated ones rank last."""
    value = (metrics or {}).get("val_loss")
    return math.inf if value is None else float(value)


def checkpoints_dir(workdir: str) -> str:
    """The folder of a run's checkpoints, `<workdir>/checkpoints`, as an absolute path."""
    return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def open_manager(workdir: str, options: ocp.CheckpointManagerOptions | None = None
                 ) -> ocp.CheckpointManager:
    """The Orbax CheckpointManager of `workdir`'s checkpoints, for the training
    run (`options`: its keep policy, background saves) and for a reader (None:
    read only). Each step holds two items: `state`, read and written by the
    PyTree handler (it reads the whole state, or its `params` alone), and
    `meta` as JSON."""
    directory = checkpoints_dir(workdir)
    try:
        return ocp.CheckpointManager(
            directory, options=options or ocp.CheckpointManagerOptions(create=False),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
    except Exception as e:  # e.g. a step folder with unreadable metadata.
        raise UserError(f"cannot read the checkpoints in {directory}: {faults.reason(e)}")


def pick_step(manager: ocp.CheckpointManager, steps: list[int], wanted: str | int,
              where: str, asked: str = "") -> int:
    """The step that `wanted` names among `steps` (the complete checkpoints,
    sorted): 'latest' the newest, 'best' the lowest validation loss, or a step
    number. UserError if there is none; `asked` (e.g. 'config.train.resume_step=4')
    names the setting that asked for it, in that message."""
    said = f"{asked}: " if asked else ""
    if not steps:
        raise UserError(f"{said}no complete checkpoint in {where}; train first (python -m "
                        "smallgpt_jax.main --config=... --workdir=...).")
    if wanted == "latest":
        return steps[-1]
    if wanted == "best":
        scored = [(val_loss(manager.metrics(s)), s) for s in steps]
        scored = [(v, s) for v, s in scored if math.isfinite(v)]
        if not scored:
            raise UserError(f"no checkpoint in {where} has a validation loss yet; "
                            "ask for the latest one instead.")
        return min(scored)[1]
    if isinstance(wanted, str) and not wanted.isdigit():
        raise UserError(f"checkpoint step {wanted!r} is not 'latest', 'best' or a number.")
    if int(wanted) not in steps:
        raise UserError(f"{said}no checkpoint for step {wanted} in "
                        f"{where} (complete ones: {', '.join(map(str, steps))}).")
    return int(wanted)


def saved_params(manager: ocp.CheckpointManager, step: int) -> Any:
    """The saved parameters' Orbax metadata (shapes and dtypes) of checkpoint `step`."""
    return manager.item_metadata(step)["state"].tree["params"]


def full_state(target: Any) -> ocp.args.PyTreeRestore:
    """Restore args for the whole TrainState onto `target`'s placement:
    `target` is its arrays or shapes, each restored onto its own sharding
    (a sharded state's, say), or onto the first local device where it names
    none (shapes from `jax.eval_shape`)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device), target)
    return ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def params_only(saved: Any) -> ocp.args.PyTreeRestore:
    """Restore args for the state's `params` alone, as numpy arrays of the
    saved shapes (`saved`: saved_params)."""
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved,
                          is_leaf=lambda x: hasattr(x, "shape"))
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    return ocp.args.PyTreeRestore(item={"params": target}, restore_args={"params": as_numpy},
                                  partial_restore=True)


def restore(manager: ocp.CheckpointManager, step: int, state: Any = None,
            meta: bool = True) -> dict[str, Any]:
    """The one Orbax restore: checkpoint `step`'s `state` item with the restore
    args `state` (None: not read) and its `meta` JSON (if `meta`)."""
    items = {"meta": ocp.args.JsonRestore()} if meta else {}
    if state is not None:
        items["state"] = state
    return manager.restore(step, args=ocp.args.Composite(**items))


def parse_meta(raw: Any, folder: str, advice: str, damaged: Callable[[str], str]) -> Meta:
    """Checkpoint `folder`'s `meta` item (`raw`, as restored) as a Meta.
    UserError when another program wrote it (with `advice`, what to do) or
    it is damaged (`damaged(why)`: the message)."""
    try:
        return read_meta(raw, folder)
    except Unreadable as e:
        if e.foreign:
            raise UserError(f"checkpoint {folder} has no smallgpt_jax metadata ({e}); {advice}")
        raise UserError(damaged(str(e)))


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
    A checkpoint deleted by the training run while it was being read is
    looked up again.
    """
    directory = checkpoints_dir(workdir)
    if not os.path.isdir(directory):
        raise UserError(f"no checkpoints in {workdir} (expected {directory}); "
                        "is this the --workdir of a training run?")
    for attempt in range(_ATTEMPTS):
        before = _step_folders(directory)
        try:
            return _load(workdir, step)
        except _Vanished as e:
            if attempt == _ATTEMPTS - 1:
                raise UserError(f"checkpoint {e} was deleted while it was read (the training "
                                "run keeps only its newest ones); run the same command again.")
        except UserError:
            # A step came or went meanwhile (the training run saves, its keep policy
            # deletes): the error may be about a folder that moved away. Read again.
            if attempt == _ATTEMPTS - 1 or _step_folders(directory) == before:
                raise
    raise AssertionError("unreachable")


def _step_folders(directory: str) -> list[str] | None:
    try:
        return sorted(e for e in os.listdir(directory) if STEP.match(e))
    except OSError:
        return None


class _Vanished(Exception):
    """The checkpoint being read was deleted meanwhile (by the training run)."""


def _load(workdir: str, step: str | int):
    directory = checkpoints_dir(workdir)
    found = faults.skip_broken(directory, clean=False)  # The training run's files stay.
    with open_manager(workdir) as manager:
        steps = sorted(set(manager.all_steps()) - set(found.debris))
        chosen = pick_step(manager, steps, step, directory)
        folder = os.path.join(directory, str(chosen))
        others = [s for s in steps if s != chosen]
        pick = ("pick another step (complete ones: "
                f"{', '.join(map(str, others)) or 'none'})")
        problems = found.problems.get(chosen, [])  # (A step saved since is complete.)
        if problems and not os.path.isdir(folder):
            raise _Vanished(folder)
        if problems:
            raise UserError(faults.not_read(folder, problems, pick))
        try:
            # The saved shapes are the restore target: only `params` is read.
            restored = restore(manager, chosen, params_only(saved_params(manager, chosen)))
        except Exception as e:
            if not os.path.isdir(folder):
                raise _Vanished(folder)
            raise UserError(faults.not_read(folder, [faults.reason(e)], pick))
    # (Edited by hand, say: damaged.)
    meta = parse_meta(restored["meta"], folder, pick + ".",
                      lambda why: faults.not_read(folder, [why], pick))
    changed = faults.changed_on_disk(meta.checksums, restored["state"])
    if changed:
        raise UserError(faults.not_read(folder, [changed], pick))
    try:
        tok = tokenizer_lib.from_dict(meta.tokenizer)
        mc = model_config(meta.config["model"], tok.vocab_size)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"checkpoint {folder} has damaged metadata ({type(e).__name__}: "
                        f"{e}); {pick}.")
    return jax.device_put(restored["state"]["params"]), mc, tok, chosen
