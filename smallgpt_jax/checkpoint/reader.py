"""Loading a trained model from a run's checkpoints, for sampling, scoring and pictures.

    params, model_config, tokenizer = load_params("runs/char_cpu", step="best")

Reads the parameters alone out of a checkpoint that checkpoint/writer.py wrote (no
optimizer is built and the optimizer state is not read), with the model
config and tokenizer saved next to them. A training run may be writing in
the same workdir meanwhile: this reader never removes anything, skips the
run's save in flight and folders it is deleting, and looks a checkpoint up
again when the run deleted it while it was being read.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from smallgpt_jax.checkpoint import writer as checkpoint, faults
from smallgpt_jax.checkpoint.meta import Unreadable, read_meta
from smallgpt_jax.checkpoint.workdir import CHECKPOINT_DIR, STEP
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

# Reads of a workdir whose training run saves and deletes meanwhile: each
# attempt that fails because of it has a newer checkpoint to read.
_ATTEMPTS = 5


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
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise UserError(f"no checkpoints in {workdir} (expected {directory}); "
                        "is this the --workdir of a training run?")
    for attempt in range(_ATTEMPTS):
        before = _step_folders(directory)
        try:
            return _load(directory, step)
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


def _resolve_step(manager: ocp.CheckpointManager, steps: list[int], step: str | int,
                  where: str) -> int:
    """The step number that 'latest', 'best' or a number names among `steps`
    (the complete checkpoints, sorted)."""
    if not steps:
        raise UserError(f"no complete checkpoint in {where}; train first (python -m "
                        "smallgpt_jax.main --config=... --workdir=...).")
    if step == "latest":
        return steps[-1]
    if step == "best":
        scored = [(checkpoint.val_loss(manager.metrics(s)), s) for s in steps]
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


def _load(directory: str, step: str | int):
    found = faults.skip_broken(directory, clean=False)  # The training run's files stay.
    # A PyTree handler: it can read the `params` of the state alone.
    manager = checkpoint.open_manager(directory, ocp.CheckpointManagerOptions(create=False),
                                      ocp.PyTreeCheckpointHandler())
    with manager:
        steps = sorted(set(manager.all_steps()) - set(found.debris))
        chosen = _resolve_step(manager, steps, step, directory)
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
            raise UserError(faults.not_read(folder, [faults.reason(e)], pick))
    try:
        meta = read_meta(restored["meta"], folder)
    except Unreadable as e:
        if e.foreign:
            raise UserError(f"checkpoint {folder} has no smallgpt_jax metadata ({e}); {pick}.")
        raise UserError(faults.not_read(folder, [str(e)], pick))  # Edited by hand, say.
    changed = faults.changed_on_disk(meta.checksums, restored["state"])
    if changed:
        raise UserError(faults.not_read(folder, [changed], pick))
    try:
        tok = tokenizer_lib.from_dict(meta.tokenizer)
        config = ml_collections.ConfigDict(meta.config)
        mc = model_config(config, tok.vocab_size)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"checkpoint {folder} has damaged metadata ({type(e).__name__}: "
                        f"{e}); {pick}.")
    return jax.device_put(restored["state"]["params"]), mc, tok, chosen
