"""What a run's evaluations cost: each piece per call, and the run's total.

    python -m benchmarks.eval_cost --config=configs/char_cpu.py [--repeats=5]

Times, on the config's model and data, what the loop does besides training:
an evaluation's losses (`evaluation.evaluate`), the text sample and the
attention picture (`evaluation.write_sample`'s two parts), and a checkpoint
save written to disk (`Checkpointer.save`, then `wait`); and for comparison
one train step. Each is the median of --repeats calls after one untimed call
(compiled, warm), in wall seconds and in this process's CPU seconds (the
CPU time is the steadier figure on a shared machine).

Then it counts, with the loop's own rule (`loop.due`), how many evaluations,
samples and saves the config's run makes (assuming, as in a short run, that
every evaluation reaches a new best validation loss, which saves), and
prints their CPU cost as a share of the run's train steps. Parameters are
freshly initialised: the cost does not depend on what the model learned.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time

from absl import flags

from smallgpt_jax.cli import app as cli
from smallgpt_jax.cli.config_files import define_config_flag
from smallgpt_jax.system import runtime

_CONFIG = define_config_flag()
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per piece; the median is reported.")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def median_cost(fn, repeats: int) -> tuple[float, float]:
    """(wall s, CPU s) of one call: the median over `repeats`, after a warm-up call."""
    import jax
    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        c, w = cpu_seconds(), time.perf_counter()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - w)
        cpus.append(cpu_seconds() - c)
    return statistics.median(walls), statistics.median(cpus)


def run_counts(t) -> dict[str, int]:
    """Evaluations, samples and saves of a run of `t` (config.train), if every
    evaluation is a new best."""
    from smallgpt_jax.training.loop import due
    steps = range(1, t.num_steps + 1)
    evals = [s for s in steps if due(s, t.eval_every, t.num_steps)]
    return {"evaluate": len(evals),
            "sample + picture": sum(due(s, t.sample_every or t.eval_every, t.num_steps)
                                    for s in evals),
            "save": sum(due(s, t.checkpoint_every, t.num_steps) or s in evals for s in steps)}


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.checkpoint import writer as checkpoint
    from smallgpt_jax.checkpoint.meta import Meta
    from smallgpt_jax.checkpoint.workdir import prepare_workdir
    from smallgpt_jax.model import model_config
    from smallgpt_jax.store import store
    from smallgpt_jax.training import evaluation, setup

    config, n = _CONFIG.value, _REPEATS.value
    runtime.setup_run(config.get("compilation_cache", ""))
    t = config.train
    with tempfile.TemporaryDirectory() as workdir:
        prepare_workdir(workdir)
        tok, splits, _, _ = store.load_splits(config.data, config.model.block_size, workdir, None)
        cfg = model_config(config.model, tok.vocab_size)
        tx, schedule = train.make_optimizer(t)
        par = parallel.data_parallel(config.parallel, cfg, tx, schedule, config.seed)
        rstate = par.put_state(train.init_state(cfg, tx, config.seed))
        batches = evaluation.eval_batches(par, splits, setup.eval_settings(config))
        params = par.unreplicate(rstate.params)
        batch = par.put_batch(parallel.process_rows(data.sample_batch(
            splits.train, config.seed, 0, t.batch_size, cfg.block_size)), t.grad_accum_steps)

        def train_step():
            nonlocal rstate
            rstate, metrics = par.train_step(rstate, batch)
            return metrics

        def sample_and_picture():
            evaluation.sample_text(params, cfg, tok, t.sample_tokens, config.seed)
            return evaluation.attention_pictures(params, cfg, tok, splits)

        load = os.getloadavg()[0]
        cost = {"evaluate": median_cost(
                    lambda: evaluation.evaluate(par, rstate.params, batches, t.eval_steps), n),
                "sample + picture": median_cost(sample_and_picture, n)}
        with checkpoint.Checkpointer(workdir, t.keep_checkpoints) as ckpt:
            step = iter(range(1, 10 ** 6))

            def save():
                s = next(step)
                ckpt.save(s, par.unreplicate(rstate), Meta(
                    step=s, seed=config.seed, config=config.to_dict(), tokenizer=tok.to_dict(),
                    best_val_loss=1.0 / s, val_loss=1.0 / s))
                ckpt.wait()
            cost["save"] = median_cost(save, n)
        step_wall, step_cpu = median_cost(train_step, 4 * n)

    print(f"{config.name}, load average {load:.1f} -> {os.getloadavg()[0]:.1f} "
          f"(medians of {n} calls)")
    print(f"{'piece':18s} {'wall s':>7s} {'CPU s':>7s} {'per run':>8s} {'CPU s/run':>10s}")
    counts, total = run_counts(t), 0.0
    for name, (wall, cpu) in cost.items():
        total += counts[name] * cpu
        print(f"{name:18s} {wall:7.3f} {cpu:7.3f} {counts[name]:8d} {counts[name] * cpu:10.1f}")
    train_cpu = t.num_steps * step_cpu
    print(f"{'train step':18s} {step_wall:7.3f} {step_cpu:7.3f} {t.num_steps:8d} {train_cpu:10.1f}")
    print(f"evaluations, samples and saves: {total:.1f} CPU s, "
          f"{100 * total / train_cpu:.1f}% of the train steps' CPU time")


if __name__ == "__main__":
    cli.run_app(main)
