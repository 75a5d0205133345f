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

from smallgpt_jax import (checkpoint, data, lock, profiling, reporting, runtime, sampling,
                          stopping, store, train, warmup)
from smallgpt_jax.config import validate
from smallgpt_jax.errors import Interrupted, UserError
from smallgpt_jax.model import count_params, model_config as make_model_config
from smallgpt_jax.workdir import prepare_workdir


def process_rows(batch_NT1: np.ndarray) -> np.ndarray:
    """The rows of a global batch that this process feeds to its devices."""
    n = batch_NT1.shape[0] // jax.process_count()
    i = jax.process_index()
    return batch_NT1[i * n:(i + 1) * n]


def eval_batches(par: train.DataParallel, splits: data.Splits, config) -> jax.Array:
    """The `eval_steps` batches of both splits (train first), on the devices:
    made and put once, since every evaluation uses the same ones. This
    process's rows are ordered so that batch s of device d is what `put_batch`
    would give device d for that batch alone."""
    t, m = config.train, config.model
    batches = [process_rows(data.sample_batch(tokens, config.seed, i, t.batch_size,
                                              m.block_size, stream))
               for stream, tokens in ((1, splits.train), (2, splits.val))
               for i in range(t.eval_steps)]
    n_SDbT1 = np.stack(batches).reshape(len(batches), jax.local_device_count(), -1,
                                        m.block_size + 1)
    rows = n_SDbT1.transpose(1, 0, 2, 3).reshape(-1, m.block_size + 1)
    return par.put_batch(rows, 2 * t.eval_steps)


def evaluate(par: train.DataParallel, rparams, batches: jax.Array,
             config) -> dict[str, float]:
    """Mean loss over the same `eval_steps` batches of each split every time
    (`batches` from `eval_batches`): one program runs them all."""
    S = config.train.eval_steps
    losses = train.host_values(par.eval_step(rparams, batches)).reshape(-1)
    return {"train": float(np.mean(losses[:S])), "val": float(np.mean(losses[S:]))}


def warmup_tasks(par: train.DataParallel, rstate, params, batches: jax.Array, model_cfg, tok,
                 splits: data.Splits, config, draws: bool) -> list:
    """What the first evaluation compiles, as warmup.Warmup tasks: the
    evaluation program (from shapes: `rstate` is donated to the next step),
    and on the process that draws, the sampler and the attention picture, run
    once on `params` (the initial ones, on one device, as the evaluation will
    pass them; copying `rstate`'s here would compile the copies' programs on
    this thread)."""
    t = config.train
    spec = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), rstate.params)
    tasks = [lambda: par.eval_step.lower(spec, batches).compile()]
    if draws:
        from smallgpt_jax import viz
        tasks += [lambda: sample_text(params, model_cfg, tok, t.sample_tokens, config.seed),
                  lambda: viz.attention_image(params, model_cfg, tok, splits.val[:min(
                      16, model_cfg.block_size)])]
    return tasks


def sample_text(params, model_cfg, tok, n_tokens: int, seed: int) -> str:
    """A short sample from the model, starting from a newline (or token 0)."""
    return sampling.sample_texts(params, model_cfg, tok, "", n_tokens, seed,
                                 temperature=0.8)[0]


class FiniteCheck:
    """Stops training at the first step whose loss or gradient norm is NaN/inf.

    Reading a number back from the device waits for the step that computes
    it, and while the host waits it prepares nothing: on a GPU the device
    then idles through each step's host work (batch, dispatch). So the loop
    never waits between log points: `after_step` keeps the launched steps'
    metrics (small device arrays), and `flush()` reads them all at once and
    checks them in order. It runs before every log, evaluation and checkpoint,
    so a broken state is never evaluated or saved.
    """

    def __init__(self, newest_checkpoint):
        self.pending = []  # (step, metrics) launched but not checked yet.
        self.last_finite = None  # (step, loss) of the newest good step.
        self.newest_checkpoint = newest_checkpoint

    def after_step(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def flush(self) -> dict[str, float] | None:
        """Checks every step launched since the last flush; returns the newest
        one's metrics as floats (None if there was none)."""
        pending, self.pending = self.pending, []
        values = train.host_values([m for _, m in pending])  # One read for all.
        for (step, _), m in zip(pending, values):
            self._check(step, float(m["loss"].item()), float(m["grad_norm"].item()))
        return {k: float(v.item()) for k, v in values[-1].items()} if values else None

    def _check(self, step: int, loss: float, grad_norm: float) -> None:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: profiling.Hooks | None = None) -> dict:
    """Trains `config` in `workdir`; returns the final metrics.

    Re-running with the same workdir resumes from its newest complete
    checkpoint. SIGTERM or SIGINT saves a checkpoint, then raises Interrupted.
    `hooks` (see profiling.py) let a tool time the run.
    """
    validate(config)
    applied = runtime.setup_run(config)  # XLA flags, compilation cache.
    # 'auto' becomes the dtype used, so config.json and the log say which.
    auto = config.model.dtype == "auto"
    config.model.dtype = runtime.resolve_dtype(config.model.dtype, jax.default_backend())
    settings = (f"compute dtype {config.model.dtype}{' (auto)' if auto else ''}; "
                f"XLA_FLAGS {applied['xla_flags'][0]!r} ({applied['xla_flags'][1]})")
    prepare_workdir(workdir)  # A foreign or read-only workdir fails here.
    # One run per workdir (process 0 holds it for the job); a second is refused at once.
    owner = lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with owner, stopping.StopSignals() as stop, \
            checkpoint.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
        return _train_and_evaluate(config, workdir, ckpt, stop, hooks or profiling.Hooks(),
                                   settings)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        ckpt: checkpoint.Checkpointer, stop: stopping.StopSignals,
                        hooks: profiling.Hooks, settings: str) -> dict:
    t, m = config.train, config.model
    micro = train.per_device_batch(t.batch_size, t.grad_accum_steps)
    resume = ckpt.resume_point(config)  # None: a fresh run.
    tok, splits, source, tokens_per_char = store.load_splits(
        config, workdir, stop, resume.tokenizer if resume else None)
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
    progress.message(settings)

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
    with reporting.Writer(workdir, purge_step=start_step + 1) as writer, \
            contextlib.closing(profiling.ProfileWindow(t.profile_steps, workdir)) as profile, \
            contextlib.closing(warmup.Warmup()) as warm:
        writer.text(start_step, "config", "\n" + str(config))
        writer.loss_chart(start_step, ["train/loss", "eval/train_loss", "eval/val_loss"])
        rstate = par.put_state(state)
        tokens_per_step = t.batch_size * m.block_size
        t_start = t_log = time.time()
        time_before = resume.train_time_s if resume else 0.0  # Earlier runs of this workdir.
        best_val = resume.best_val_loss if resume and not data_changed else math.inf
        # The newest evaluation (for summary.json); none carries over to other data.
        last = dict(resume.meta.get("eval") or {}) if resume and not data_changed else {}
        eval_s = 0.0  # Time this process spent evaluating (and sampling, drawing).
        finite = FiniteCheck(ckpt.latest_step)
        eval_data = eval_batches(par, splits, config)  # The same at every evaluation.

        def train_batch(step: int) -> jax.Array:
            batch = data.sample_batch(splits.train, config.seed, step, t.batch_size, m.block_size)
            return par.put_batch(process_rows(batch), t.grad_accum_steps)

        batch = train_batch(start_step)
        for step in range(start_step, t.num_steps):
            done = step + 1  # Steps count from 1 in logs, checkpoints and hooks.
            profile.before_step(done)
            with jax.profiler.StepTraceAnnotation("train", step_num=done):
                rstate, metrics = par.train_step(rstate, batch)
                if done < t.num_steps:  # The next batch is made while this step runs.
                    batch = train_batch(done)
            if step == start_step:  # While step 1 runs: see warmup.py.
                warm.start(warmup_tasks(par, rstate, state.params, eval_data, model_cfg, tok,
                                        splits, config, writer.enabled))
            finite.after_step(done, metrics)  # Only kept: checked at the next flush.
            hooks.step_launched(done, metrics)
            if profile.after_step(done, rstate):
                progress.message(f"profile of steps {t.profile_steps} written to "
                                 f"{workdir}/plugins/profile")
            if done % t.log_every == 0 or done == t.num_steps:
                metrics = finite.flush()  # This step's, read with the unchecked ones.
                hooks.logged(done)
                ckpt.poll()  # A background save that failed is reported here.
                now = time.time()
                steps_since = t.log_every if done % t.log_every == 0 else done % t.log_every
                metrics["tokens_per_sec"] = tokens_per_step * steps_since / (now - t_log)
                t_log = now
                writer.scalars(done, {f"train/{k}": v for k, v in metrics.items()})
                progress.update(done, metrics["loss"], metrics["tokens_per_sec"])
            val_loss = None
            if done % t.eval_every == 0 or done == t.num_steps:
                finite.flush()  # Waits for the queued steps: their time is training's.
                warm.wait()  # Its programs are ready (nothing compiles twice).
                t_eval = time.time()
                with jax.profiler.TraceAnnotation("evaluate"):
                    losses = evaluate(par, rstate.params, eval_data, config)
                hooks.evaluated(done, losses, time.time() - t_eval)
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
                    # (Tagged so that its group sorts after the eval and train
                    # groups: TensorBoard's first screen then shows the losses.)
                    writer.image(done, "views/attention", viz.attention_image(
                        params, model_cfg, tok, splits.val[:min(16, m.block_size)]))
                writer.flush()
                # Evaluation is not training: tokens/s and the ETA leave it out.
                pause = time.time() - t_eval
                t_log += pause
                progress.paused(pause)
                eval_s += pause
                progress.message(
                    f"step {done}: train loss {losses['train']:.4f}, "
                    f"val loss {losses['val']:.4f}, val ppl {last['eval/val_perplexity']:.2f}, "
                    f"val bpc {last['eval/val_bpc']:.3f}")
            # Save every checkpoint_every steps, at the end, on a signal, and when the
            # validation loss is a new best (so the best model is always on disk).
            signum = stopping.agreed_stop(stop, done, t.log_every)
            if (done % t.checkpoint_every == 0 or done == t.num_steps or signum
                    or (val_loss is not None and val_loss == best_val)):
                finite.flush()
                ckpt.save(done, par.unreplicate(rstate), config=config, tokenizer=tok,
                          best_val_loss=best_val, val_loss=val_loss, eval_metrics=last,
                          train_time_s=time_before + time.time() - t_start,
                          data_fingerprint=splits.fingerprint)
                hooks.saved(done)
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
        if not time_before:  # (A resumed run's earlier evaluations are not known.)
            final["eval_time_s"] = eval_s
        writer.hparams(reporting.flat_hparams(config),
                       {k: v for k, v in final.items() if k.startswith("eval/")}, t.num_steps)
    # The run is finished once its final checkpoint is on disk; only then says summary.json so.
    ckpt.wait()
    if jax.process_index() == 0:
        reporting.write_json(os.path.join(workdir, "summary.json"), final)
    final["params"] = par.unreplicate(rstate.params)
    final["model_config"], final["tokenizer"] = model_cfg, tok
    return final
