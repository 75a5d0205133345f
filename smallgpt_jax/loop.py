"""The training loop, top to bottom: data, model, steps, evaluation, logs.

    text -> tokenizer -> token ids -> (seed, step)-sampled batches
         -> data-parallel train step (pmap or shard_map)
         -> periodic evaluation, samples, TensorBoard
         -> Orbax checkpoints (resume, SIGTERM/SIGINT, keep newest + best)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time

import jax
import numpy as np
import ml_collections

from smallgpt_jax import checkpoint, data, lock, reporting, runtime, sampling, store, train
from smallgpt_jax.config import validate
from smallgpt_jax.errors import Interrupted, UserError
from smallgpt_jax.model import count_params, model_config as make_model_config


def process_rows(batch_NT1: np.ndarray) -> np.ndarray:
    """The rows of a global batch that this process feeds to its devices."""
    n = batch_NT1.shape[0] // jax.process_count()
    i = jax.process_index()
    return batch_NT1[i * n:(i + 1) * n]


def evaluate(par: train.DataParallel, rparams, splits: data.Splits,
             config) -> dict[str, float]:
    """Mean loss over the same `eval_steps` batches of each split every time."""
    t, m = config.train, config.model
    out = {}
    for stream, (name, tokens) in enumerate((("train", splits.train), ("val", splits.val)), 1):
        losses = []
        for i in range(t.eval_steps):
            batch = data.sample_batch(tokens, config.seed, i, t.batch_size, m.block_size, stream)
            losses.append(par.eval_step(rparams, par.put_batch(process_rows(batch))))
        out[name] = float(np.mean([par.unreplicate(l) for l in losses]))
    return out


def sample_text(params, model_cfg, tok, n_tokens: int, seed: int) -> str:
    """A short sample from the model, starting from a newline (or token 0)."""
    return sampling.sample_texts(params, model_cfg, tok, "", n_tokens, seed,
                                 temperature=0.8)[0]


class FiniteCheck:
    """Stops training at the first step whose loss or gradient norm is NaN/inf.

    Reading a number back from the device waits for the step that computes
    it: checking step k's loss right after launching step k would make the
    host wait for every step before preparing the next batch. So after
    launching step k we check step k-1, which the device has (nearly always)
    finished while step k is queued. `flush()` checks the newest step too; it
    runs before every log, evaluation and checkpoint, so a broken state is
    never evaluated or saved.
    """

    def __init__(self, newest_checkpoint, unreplicate):
        self.pending = None  # (step, metrics) launched but not checked yet.
        self.last_finite = None  # (step, loss) of the newest good step.
        self.newest_checkpoint = newest_checkpoint
        self.unreplicate = unreplicate  # Device values -> one host copy.

    def after_step(self, step: int, metrics: dict) -> None:
        previous, self.pending = self.pending, (step, metrics)
        if previous is not None:
            self._check(*previous)

    def flush(self) -> None:
        if self.pending is not None:
            self._check(*self.pending)
            self.pending = None

    def _check(self, step: int, metrics: dict) -> None:
        loss = float(self.unreplicate(metrics["loss"]))
        grad_norm = float(self.unreplicate(metrics["grad_norm"]))
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.last_finite = (step, loss)
            return
        before = (f"last finite loss {self.last_finite[1]:.4f} at step {self.last_finite[0]}"
                  if self.last_finite else "no finite loss seen in this run")
        newest = self.newest_checkpoint()
        kept = (f"nothing was saved from it: the newest checkpoint is step {newest}"
                if newest is not None else "nothing was saved from it")
        raise UserError(
            f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm} "
            f"({before}); {kept}. Lower --config.train.learning_rate (or raise "
            "warmup_steps) and run again to resume.")


def agreed_stop(stop: checkpoint.StopSignals, step: int, every: int) -> int | None:
    """The signal to stop on after `step`, the same in every process (or None).

    One process acts on its own signal at once. In a multi-host job a signal
    reaches the processes at slightly different moments (a cluster's
    scheduler, a preemption); one process saving (a collective) while the
    others run the next step (another collective) would wait for each other
    forever. So every `every` steps, all processes share their flags and stop
    together if any was signalled.
    """
    if jax.process_count() == 1:
        return stop.signum  # Read once: a signal may land at any moment.
    if step % every:
        return None
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(stop.signum or 0))
    return int(np.max(flags)) or None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir`; returns the final metrics.

    Re-running with the same workdir resumes from its newest complete
    checkpoint. SIGTERM or SIGINT saves a checkpoint, then raises Interrupted.
    """
    validate(config)
    runtime.setup(config)  # Allocator, RNG lowering, compilation cache (see runtime.py).
    checkpoint.prepare_workdir(workdir)  # A foreign or read-only workdir fails here.
    # One run per workdir (process 0 holds it for the job); a second is refused at once.
    owner = lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with owner, checkpoint.StopSignals() as stop, \
            checkpoint.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
        return _train_and_evaluate(config, workdir, ckpt, stop)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        ckpt: checkpoint.Checkpointer, stop: checkpoint.StopSignals) -> dict:
    t, m = config.train, config.model
    micro = train.per_device_batch(t.batch_size, t.grad_accum_steps)
    resume = ckpt.resume_point(config)  # None: a fresh run.
    tok, splits, source, tokens_per_char = store.load_splits(config, workdir, stop)
    data_changed = resume is not None and store.data_changed(resume.meta, splits, config)
    if jax.process_index() == 0:
        reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    model_cfg = make_model_config(config, tok.vocab_size)
    tx, schedule = train.make_optimizer(t), train.learning_rate_schedule(t)
    if resume:  # Only the shapes of a fresh state are needed: no real init.
        shapes = jax.eval_shape(lambda: train.init_state(model_cfg, tx, config.seed))
        state = ckpt.restore_state(resume, shapes)
    else:
        state = train.init_state(model_cfg, tx, config.seed)
    par = train.data_parallel(config.parallel, model_cfg, tx, schedule, config.seed)

    start_step = int(state.step)
    progress = reporting.ProgressBar(t.num_steps, t.eval_every)
    progress.message(
        f"{source}: {len(splits.train):,} train / {len(splits.val):,} val tokens, "
        f"{tok.kind} vocabulary {tok.vocab_size}, {tokens_per_char:.3f} tokens/char")
    progress.message(
        f"model: {count_params(state.params) / 1e6:.2f}M parameters; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"in {jax.process_count()} process(es), {config.parallel}, "
        f"{micro} sequences per device per micro-batch; workdir {workdir}")

    if start_step >= t.num_steps:
        progress.message(f"nothing to train: the checkpoint is at step {start_step} and "
                         f"config.train.num_steps={t.num_steps}; raise it to train longer.")
        summary = os.path.join(workdir, "summary.json")
        if jax.process_index() == 0 and not os.path.exists(summary):  # Killed before writing it.
            reporting.write_json(summary, ckpt.finished_summary(resume))
        return {"steps": start_step, "params": state.params, "model_config": model_cfg,
                "tokenizer": tok}
    # TensorBoard drops what a killed earlier process logged from start_step + 1 on.
    # The writer is closed on every way out (an error, a signal): what was logged
    # reaches disk.
    with reporting.Writer(workdir, purge_step=start_step + 1) as writer:
        writer.text(start_step, "config", "\n" + str(config))
        rstate = par.put_state(state)
        tokens_per_step = t.batch_size * m.block_size
        t_start = t_log = time.time()
        time_before = resume.train_time_s if resume else 0.0  # Earlier runs of this workdir.
        best_val = resume.best_val_loss if resume and not data_changed else math.inf
        # The newest evaluation (for summary.json); none carries over to other data.
        last = dict(resume.meta.get("eval") or {}) if resume and not data_changed else {}
        finite = FiniteCheck(ckpt.latest_step, par.unreplicate)
        for step in range(start_step, t.num_steps):
            batch = data.sample_batch(splits.train, config.seed, step, t.batch_size, m.block_size)
            rstate, metrics = par.train_step(
                rstate, par.put_batch(process_rows(batch), t.grad_accum_steps))
            done = step + 1
            finite.after_step(done, metrics)  # Checks the previous step: no stall.
            if done % t.log_every == 0 or done == t.num_steps:
                finite.flush()
                ckpt.poll()  # A background save that failed is reported here.
                metrics = {k: float(par.unreplicate(v)) for k, v in metrics.items()}
                now = time.time()
                steps_since = t.log_every if done % t.log_every == 0 else done % t.log_every
                metrics["tokens_per_sec"] = tokens_per_step * steps_since / (now - t_log)
                t_log = now
                writer.scalars(done, {f"train/{k}": v for k, v in metrics.items()})
                progress.update(done, metrics["loss"], metrics["tokens_per_sec"])
            val_loss = None
            if done % t.eval_every == 0 or done == t.num_steps:
                finite.flush()  # Waits for the queued steps: their time is training's.
                t_eval = time.time()
                losses = evaluate(par, rstate.params, splits, config)
                val_loss = losses["val"]
                best_val = min(best_val, losses["val"])
                last = {"eval/train_loss": losses["train"], "eval/val_loss": losses["val"],
                        "eval/val_perplexity": math.exp(losses["val"]),
                        "eval/val_bpc": train.bits_per_char(losses["val"], tokens_per_char),
                        "eval/best_val_loss": best_val}
                writer.scalars(done, last)
                # Only process 0 writes, so only it samples and draws.
                if writer.enabled and (done % (t.sample_every or t.eval_every) == 0
                                       or done == t.num_steps):
                    params = par.unreplicate(rstate.params)
                    text = sample_text(params, model_cfg, tok, t.sample_tokens, config.seed + done)
                    writer.text(done, "sample", text)
                    from smallgpt_jax import viz  # Imported here: matplotlib only when needed.
                    # Every layer's and head's attention on 16 validation tokens.
                    writer.image(done, "attention", viz.attention_image(
                        params, model_cfg, tok, splits.val[:min(16, m.block_size)]))
                writer.flush()
                # Evaluation is not training: tokens/s and the ETA leave it out.
                t_log += time.time() - t_eval
                progress.paused(time.time() - t_eval)
                progress.message(
                    f"step {done}: train loss {losses['train']:.4f}, "
                    f"val loss {losses['val']:.4f}, val ppl {last['eval/val_perplexity']:.2f}, "
                    f"val bpc {last['eval/val_bpc']:.3f}")
            # Save every checkpoint_every steps, at the end, on a signal, and when the
            # validation loss is a new best (so the best model is always on disk).
            signum = agreed_stop(stop, done, t.log_every)
            if (done % t.checkpoint_every == 0 or done == t.num_steps or signum
                    or (val_loss is not None and val_loss == best_val)):
                finite.flush()
                ckpt.save(done, par.unreplicate(rstate), config=config, tokenizer=tok,
                          best_val_loss=best_val, val_loss=val_loss, eval_metrics=last,
                          train_time_s=time_before + time.time() - t_start,
                          data_fingerprint=splits.fingerprint)
                writer.flush()  # After a crash, the logs reach at least this checkpoint.
            if signum and done < t.num_steps:
                ckpt.wait()
                raise Interrupted(
                    f"stopped by {signal.Signals(signum).name} at step {done}, after saving "
                    f"checkpoint {ckpt.directory}/{done}; run the same command again to resume.",
                    signum)
        # Wall time of all the runs that made this model (a killed run's steps
        # after its last checkpoint were redone, and are not counted twice).
        wall = time_before + time.time() - t_start
        final = {**last, "steps": t.num_steps, "wall_time_s": wall}
        writer.hparams(reporting.flat_hparams(config),
                       {k: v for k, v in final.items() if k.startswith("eval/")}, t.num_steps)
    # The run is finished once its final checkpoint is on disk; only then says summary.json so.
    ckpt.wait()
    if jax.process_index() == 0:
        reporting.write_json(os.path.join(workdir, "summary.json"), final)
    final["params"] = par.unreplicate(rstate.params)
    final["model_config"], final["tokenizer"] = model_cfg, tok
    return final
