"""A training run's setup: its data, model and state (fresh or restored), on
the devices; `Run` is what the loop's steps, evaluations and saves read.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from smallgpt_jax import data, parallel, train
from smallgpt_jax.checkpoint import writer as checkpoint, compat as resume_compat
from smallgpt_jax.model import count_params, model_config as make_model_config
from smallgpt_jax.store import store
from smallgpt_jax.training import evaluation, reporting, stopping


@dataclasses.dataclass
class Run:
    """What setup made: everything the steps, evaluations and saves read.

    The fresh or restored TrainState is not kept: only its copies on the
    devices (`rstate`) and its parameters (`params`), each held only as long
    as it is needed (see Trainer.__init__ and Trainer.step).
    """

    config: ml_collections.ConfigDict
    workdir: str
    tok: Any  # tokenizer.Tokenizer
    splits: data.Splits
    tokens_per_char: float
    model_cfg: Any
    evals: evaluation.EvalSettings
    # The state on the devices. The Trainer takes it (each step donates it).
    rstate: train.TrainState | None
    # The initial parameters on the first device: the warm-up runs the sampler on
    # them (training/warmup.py), a run with nothing to train returns them.
    params: Any
    state_shapes: Any  # One copy's ShapeDtypeStructs: the warm-up compiles a save's checksum.
    par: parallel.DataParallel
    resume: checkpoint.Resume | None  # None: a fresh run.
    data_changed: bool  # Resumed on other data: earlier evaluations do not carry over.
    start_step: int  # The state's step: 0, or the checkpoint's.


def setup(config: ml_collections.ConfigDict, workdir: str, ckpt: checkpoint.Checkpointer,
          stop: stopping.StopSignals, progress: reporting.ProgressBar, settings: str) -> Run:
    """Loads the data, builds or restores the state, and says what it set up."""
    t = config.train
    micro = parallel.per_device_batch(t.batch_size, t.grad_accum_steps)
    resume = ckpt.resume_point(config.to_dict())  # None: a fresh run.
    tok, splits, source, tokens_per_char = store.load_splits(
        config.data, config.model.block_size, workdir, stop,
        resume.tokenizer if resume else None)
    data_changed = resume is not None and resume_compat.data_changed(
        resume.meta, splits.fingerprint, t.allow_data_change)
    if jax.process_index() == 0:
        reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    model_cfg = make_model_config(config.model, tok.vocab_size)
    tx, schedule = train.make_optimizer(t)
    par = parallel.data_parallel(config.parallel, model_cfg, tx, schedule, config.seed)
    # Where the state is made or restored (fsdp: in its shards, on any mesh).
    target = par.state_target(jax.eval_shape(lambda: train.init_state(model_cfg, tx,
                                                                       config.seed)))
    if resume:
        state = ckpt.restore_state(resume, target)
    else:
        state = train.init_state(model_cfg, tx, config.seed, target)

    progress.message(
        f"{source}: {len(splits.train):,} train / {len(splits.val):,} val tokens, "
        f"{tok.kind} vocabulary {tok.vocab_size}, {tokens_per_char:.3f} tokens/char")
    progress.message(
        f"model: {count_params(state.params) / 1e6:.2f}M parameters; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"in {jax.process_count()} process(es), {config.parallel}, "
        f"{micro} sequences per device per micro-batch; workdir {workdir}")
    progress.message(settings)
    # The state goes to the devices here, and this function's reference is its
    # last: a copy kept on the first device (params and both Adam moments) for
    # the whole run would hold memory the steps may need.
    return Run(config, workdir, tok, splits, tokens_per_char, model_cfg, eval_settings(config),
               par.put_state(state), state.params, jax.eval_shape(lambda: state), par, resume,
               data_changed, int(state.step))


def eval_settings(config: ml_collections.ConfigDict) -> evaluation.EvalSettings:
    """The fields of `config` an evaluation reads."""
    t = config.train
    return evaluation.EvalSettings(seed=config.seed, eval_steps=t.eval_steps,
                                   batch_size=t.batch_size, block_size=config.model.block_size,
                                   sample_tokens=t.sample_tokens)
