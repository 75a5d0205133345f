"""The training loop, top to bottom: setup, steps, evaluation, checkpoints.

    text -> tokenizer -> token ids -> (seed, step)-sampled batches   setup.setup()
         -> data-parallel train step (pmap or shard_map)              Trainer.step
         -> train scalars, progress line                              Trainer.log
         -> periodic evaluation, samples, TensorBoard                 Trainer.evaluate
         -> Orbax checkpoints (resume, SIGTERM/SIGINT, newest + best) Trainer.save

`train_and_evaluate` runs them in that order; training/setup.py makes what a
run starts from, training/evaluation.py holds what an evaluation computes,
parallel.py how steps run on the devices, training/stopping.py what ends a run
early.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections

from smallgpt_jax import data, parallel
from smallgpt_jax.checkpoint import writer as checkpoint
from smallgpt_jax.checkpoint.meta import Meta
from smallgpt_jax.checkpoint.workdir import prepare_workdir, read_json
from smallgpt_jax.config import validate
from smallgpt_jax.system import lock, runtime
from smallgpt_jax.system.errors import Interrupted
from smallgpt_jax.training import (evaluation, profiling, reporting, run_summary, setup, stopping,
                                   warmup)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: profiling.Hooks | None = None,
                       started: float | None = None) -> RunResult:
    """Trains `config` in `workdir`; returns the final metrics and model.

    Re-running with the same workdir resumes from its newest complete
    checkpoint. SIGTERM, SIGHUP or SIGINT saves a checkpoint, then raises
    Interrupted; before the first step (nothing to save) it stops at once.
    `hooks` (see training/profiling.py) let a tool time the run. The run's
    wall time counts from `started` (time.time(); the command line passes its
    process's start), or else from this call.
    """
    started = time.time() if started is None else started
    validate(config)
    applied = runtime.setup_run(config.compilation_cache)  # XLA flags, compilation cache.
    auto = config.model.dtype == "auto"
    config = resolved(config)
    settings = (f"compute dtype {config.model.dtype}{' (auto)' if auto else ''}; "
                f"XLA_FLAGS {applied['xla_flags'][0]!r} ({applied['xla_flags'][1]})")
    # A signal during the setup stops at once. Not in a multi-host job, whose
    # processes stop together at a step (stopping.agreed_stop): one leaving
    # alone would leave the others waiting for it.
    with stopping.StopSignals(at_once=jax.process_count() == 1) as stop:
        try:
            return _run(config, workdir, stop, settings, hooks or profiling.Hooks(), started)
        except stopping.StopNow as e:
            raise Interrupted(str(e), e.signum) from None


def resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The run's own copy of `config`, with 'auto' dtype replaced by the dtype
    used on this host, so config.json, the checkpoint and the log say which.
    The caller's config is left as it was."""
    config = copy.deepcopy(config)
    config.model.dtype = runtime.resolve_dtype(config.model.dtype, jax.default_backend())
    return config


def _run(config: ml_collections.ConfigDict, workdir: str, stop: stopping.StopSignals,
         settings: str, hooks: profiling.Hooks, started: float) -> RunResult:
    """train_and_evaluate in its workdir, once the process is set up."""
    prepare_workdir(workdir)  # A foreign or read-only workdir fails here.
    # One run per workdir (process 0 holds it for the job); a second is refused at once.
    owner = lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with owner, checkpoint.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
        # progress.json: the newest step, loss and ETA for a watcher (a sweep's live lines).
        progress = reporting.ProgressBar(config.train.num_steps, config.train.eval_every,
                                         progress_file=os.path.join(workdir, "progress.json"))
        run = setup.setup(config, workdir, ckpt, stop, progress, settings)
        if run.start_step >= config.train.num_steps:
            return nothing_to_train(run, ckpt, progress)
        return _train(run, ckpt, stop, progress, hooks, started)


def _train(run: setup.Run, ckpt: checkpoint.Checkpointer, stop: stopping.StopSignals,
           progress: reporting.ProgressBar, hooks: profiling.Hooks, started: float) -> RunResult:
    """Steps from `run.start_step` to the end, with logs, evaluations and saves."""
    t, workdir = run.config.train, run.workdir
    # TensorBoard drops what a killed earlier process logged from start_step + 1 on.
    # The writer is closed on every way out (an error, a signal): what was logged
    # reaches disk.
    with reporting.Writer(workdir, purge_step=run.start_step + 1) as writer, \
            contextlib.closing(profiling.ProfileWindow(t.profile_steps, workdir)) as profile, \
            contextlib.closing(warmup.Warmup()) as warm:
        trainer = Trainer(run, ckpt, writer, progress, hooks, started)
        stop.save_first()  # From here on a signal saves a checkpoint, then stops.
        for step in range(run.start_step, t.num_steps):
            done = step + 1  # Steps count from 1 in logs, checkpoints and hooks.
            trainer.step(done, profile, warm)
            if due(done, t.log_every, t.num_steps):
                trainer.log(done)
            val_loss = None
            if due(done, t.eval_every, t.num_steps):
                val_loss = trainer.evaluate(done, warm)
            # Save every checkpoint_every steps, at the end, on a signal, and when the
            # validation loss is a new best (so the best model is always on disk).
            signum = stopping.agreed_stop(stop, done, t.log_every)
            if (due(done, t.checkpoint_every, t.num_steps) or signum
                    or (val_loss is not None and val_loss == trainer.best_val)):
                trainer.save(done, val_loss, warm)
            if signum and done < t.num_steps:
                ckpt.wait()
                raise Interrupted(
                    f"stopped by {signal.Signals(signum).name} at step {done}, after saving "
                    f"checkpoint {ckpt.directory}/{done}; run the same command again to resume.",
                    signum)
        final = trainer.final_metrics()
    # The run is finished once its final checkpoint is on disk; only then says summary.json so.
    ckpt.wait()
    if jax.process_index() == 0:
        reporting.write_json(os.path.join(workdir, "summary.json"), final)
    return RunResult(final["steps"], final, run.par.unreplicate(trainer.rstate.params),
                     run.model_cfg, run.tok)


def due(done: int, every: int, num_steps: int) -> bool:
    """Whether something done every `every` steps, and at the end, falls after step `done`."""
    return done % every == 0 or done == num_steps


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a run ends with: its metrics apart from the model it trained."""

    steps: int  # The step the run ended at.
    metrics: dict  # summary.json's values (a finished run's again when there was nothing to train).
    params: Any  # The final parameters, on the host's default device.
    model_config: Any  # model.ModelConfig
    tokenizer: Any  # tokenizer.Tokenizer


def nothing_to_train(run: setup.Run, ckpt: checkpoint.Checkpointer,
                     progress: reporting.ProgressBar) -> RunResult:
    """A rerun of a finished run: says so, and writes a summary.json a kill lost."""
    progress.message(f"nothing to train: the checkpoint is at step {run.start_step} and "
                     f"config.train.num_steps={run.config.train.num_steps}; raise it to "
                     "train longer.")
    summary = os.path.join(run.workdir, "summary.json")
    if jax.process_index() == 0 and not os.path.exists(summary):  # Killed before writing it.
        reporting.write_json(summary, run_summary.finished_summary(run.resume.meta))
    # Its real time and losses for the closing summary (not 00:00): what the run
    # reported, or else what its final checkpoint recorded.
    metrics, _ = read_json(summary)
    if not (isinstance(metrics, dict) and metrics.get("steps") == run.start_step):
        metrics = run_summary.finished_summary(run.resume.meta)
    return RunResult(run.start_step, metrics, run.params, run.model_cfg, run.tok)


# Training: one method per phase of a step.

class Trainer:
    """The state the phases of a step share (the state on the devices, the
    next batch, the newest evaluation, the clocks), and the phases."""

    def __init__(self, run: setup.Run, ckpt: checkpoint.Checkpointer, writer: reporting.Writer,
                 progress: reporting.ProgressBar, hooks: profiling.Hooks, started: float):
        self.run, self.ckpt, self.writer, self.progress, self.hooks = (
            run, ckpt, writer, progress, hooks)
        config, resume = run.config, run.resume
        # Tagged to sort after "sample": TensorBoard's Text tab shows the samples first.
        writer.text(run.start_step, "setup/config", "\n" + str(config))
        self.rstate, run.rstate = run.rstate, None  # Donated by the first step: ours alone.
        # This run's time counts from its start: imports, data, compiling included.
        self.t_start, self.t_log = started, time.time()
        self.setup_s = self.t_log - self.t_start  # The part before step 1.
        self.step_log = run.start_step  # The step of the last log (tokens/s counts from it).
        self.time_before = resume.train_time_s if resume else 0.0  # Earlier runs of this workdir.
        carried = resume is not None and not run.data_changed
        self.best_val = resume.best_val_loss if carried else math.inf
        # The newest evaluation (for summary.json); none carries over to other data.
        self.last = dict(resume.meta.eval) if carried else {}
        self.eval_s = 0.0  # Time this process spent evaluating (and sampling, drawing).
        self.finite = stopping.FiniteCheck(ckpt.latest_step)
        self.eval_data = evaluation.eval_batches(run.par, run.splits, run.evals)  # Made once.
        self.batch = self._batch(run.start_step)

    def _batch(self, step: int) -> jax.Array:
        """Step `step`'s batch (a pure function of seed and step), on the devices."""
        t, m = self.run.config.train, self.run.config.model
        batch = data.sample_batch(self.run.splits.train, self.run.config.seed, step,
                                  t.batch_size, m.block_size)
        return self.run.par.put_batch(parallel.process_rows(batch), t.grad_accum_steps)

    def step(self, done: int, profile: profiling.ProfileWindow, warm: warmup.Warmup) -> None:
        """Launches train step `done` (counted from 1); does not wait for it."""
        run = self.run
        profile.before_step(done)
        with jax.profiler.StepTraceAnnotation("train", step_num=done):
            self.rstate, metrics = run.par.train_step(self.rstate, self.batch)
            if done < run.config.train.num_steps:  # The next batch is made while this step runs.
                self.batch = self._batch(done)
        if done == run.start_step + 1:  # While the first step runs: see training/warmup.py.
            warm.start(evaluation.warmup_tasks(
                run.par, self.rstate, run.params, run.state_shapes, self.eval_data,
                run.model_cfg, run.tok, run.splits, run.evals, self.writer.enabled))
            run.params = None  # The warm-up's from now on; it lets go when done.
        self.finite.after_step(done, metrics)  # Only kept: checked at the next flush.
        self.hooks.step_launched(done, metrics)
        if profile.after_step(done, self.rstate):
            self.progress.message(f"profile of steps {self.run.config.train.profile_steps} "
                                  f"written to {self.run.workdir}/plugins/profile")

    def log(self, done: int) -> None:
        """Train scalars and the progress line (waits for the launched steps)."""
        t = self.run.config.train
        metrics = self.finite.flush()  # This step's, read with the unchecked ones.
        self.hooks.logged(done)
        self.ckpt.poll()  # A background save that failed is reported here.
        now = time.time()
        metrics["tokens_per_sec"] = (t.batch_size * self.run.config.model.block_size
                                     * (done - self.step_log) / (now - self.t_log))
        self.t_log, self.step_log = now, done
        self.writer.scalars(done, {f"train/{k}": v for k, v in metrics.items()})
        self.progress.update(done, metrics["loss"], metrics["tokens_per_sec"])

    def evaluate(self, done: int, warm: warmup.Warmup) -> float:
        """Evaluates, logs it (with a sample now and then); returns the val loss."""
        run, t = self.run, self.run.config.train
        self.finite.flush()  # Waits for the queued steps: their time is training's.
        warm.wait("eval")  # Its program is ready (nothing compiles twice); not the sampler's.
        t_eval = time.time()
        with jax.profiler.TraceAnnotation("evaluate"):
            losses = evaluation.evaluate(run.par, self.rstate.params, self.eval_data,
                                         run.evals.eval_steps)
        self.hooks.evaluated(done, losses, time.time() - t_eval)
        self.best_val = min(self.best_val, losses["val"])
        self.last = evaluation.eval_metrics(losses, self.best_val, run.tokens_per_char)
        self.writer.scalars(done, self.last)
        # Only process 0 writes, so only it samples and draws.
        if self.writer.enabled and due(done, t.sample_every or t.eval_every, t.num_steps):
            warm.wait()  # The sampler's and the picture's programs too.
            evaluation.write_sample(self.writer, done, run.par.unreplicate(self.rstate.params),
                                    run.model_cfg, run.tok, run.splits, run.evals)
        self.writer.flush()
        # Evaluation is not training: tokens/s and the ETA leave it out.
        pause = time.time() - t_eval
        self.t_log += pause
        self.progress.paused(pause)
        self.eval_s += pause
        self.progress.message(
            f"step {done}: train loss {losses['train']:.4f}, "
            f"val loss {losses['val']:.4f}, val ppl {self.last['eval/val_perplexity']:.2f}, "
            f"val bpc {self.last['eval/val_bpc']:.3f}")
        return losses["val"]

    def save(self, done: int, val_loss: float | None, warm: warmup.Warmup) -> None:
        """Starts a checkpoint of step `done` (written in the background)."""
        run = self.run
        self.finite.flush()  # A broken state is never saved.
        warm.wait("checksum")  # Its program is ready (compiled on the warm-up thread).
        self.ckpt.save(done, run.par.saved(self.rstate), Meta(
            step=done, seed=run.config.seed, val_loss=val_loss, best_val_loss=self.best_val,
            train_time_s=self.wall_time(), eval=self.last, config=run.config.to_dict(),
            tokenizer=run.tok.to_dict(), data_fingerprint=run.splits.fingerprint))
        self.hooks.saved(done)
        self.writer.flush()  # After a crash, the logs reach at least this checkpoint.

    def wall_time(self) -> float:
        """Wall time of all the runs that made this model (a killed run's steps
        after its last checkpoint were redone, and are not counted twice)."""
        return self.time_before + time.time() - self.t_start

    def final_metrics(self) -> dict:
        """The newest evaluation, steps and times (summary.json); logs the hparams."""
        t = self.run.config.train
        final = {**self.last, "steps": t.num_steps, "wall_time_s": self.wall_time(),
                 "setup_time_s": self.setup_s}  # (This process's; wall_time_s counts it.)
        if not self.time_before:  # (A resumed run's earlier evaluations are not known.)
            final["eval_time_s"] = self.eval_s
        self.writer.hparams(reporting.flat_hparams(self.run.config.to_dict()),
                            {k: v for k, v in final.items() if k.startswith("eval/")},
                            t.num_steps)
        return final
