r"""Steps (and tokens) to a target validation loss, over seeds, per arm.

    python experiments/steps_to_target.py --target=1.74 --seeds=0,1,2 \
        --arm="modern=configs/modern_char.py" --arm="speedrun=configs/speedrun_char.py" \
        --baseline=modern --out=runs/steps_to_target

An arm is NAME=CONFIG_FILE, then optional KEY=VALUE overrides separated by
spaces (--arm="no-smear=configs/speedrun_char.py model.smear=False"). Each
(arm, seed) trains once: config.seed is the seed, so it changes both the
initialisation and the batch order (and the validation batches). Seeds run
in turn, every arm for a seed before the next seed, so a machine that slows
down slows every arm alike.

Each run evaluates the validation loss every --eval_every steps (on the
config's eval_steps batches, the ones the training loop's evaluation uses)
and records the first evaluation step at which val <= target, its tokens,
the process CPU seconds and wall seconds to it (compilation and evaluations
included), and the last val. A run ends there (--nostop_at_target: it
trains on to --max_steps, the config's num_steps by default, where it
also gives up on the target). The training is the project's own pieces
(train.make_optimizer, parallel's step, data's batches) without
checkpoints, samples or logs; a test checks its losses against the loop's.

Each finished run is a line of OUT/runs.jsonl (the tool resumes: a run
found there is not run again); the table, mean ± std per arm, a Welch
t-test p-value against --baseline and, over the seeds both ran, the mean
per-seed difference with a paired t-test's p, is printed and written to
OUT/table.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from smallgpt_jax.cli import app as cli  # noqa: E402
from smallgpt_jax.system import runtime  # noqa: E402
from smallgpt_jax.system.errors import UserError  # noqa: E402

_ARMS = flags.DEFINE_multi_string("arm", [], "NAME=CONFIG_FILE [KEY=VALUE ...]; repeat per arm.")
_BASELINE = flags.DEFINE_string("baseline", "", "The arm the p-values compare with (default: the first).")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
_TARGET = flags.DEFINE_float("target", 1.74, "Validation loss to reach (nats/token).")
_EVERY = flags.DEFINE_integer("eval_every", 50, "Evaluate every N steps.")
_MAX = flags.DEFINE_integer("max_steps", 0, "Give up after N steps (0: the config's num_steps).")
_STOP = flags.DEFINE_boolean("stop_at_target", True, "End a run at the target.")
_OUT = flags.DEFINE_string("out", "runs/steps_to_target", "Folder for runs.jsonl and table.md.")


# ---------------------------------------------------------------- statistics

def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's two-sample t-test (scipy's, which JAX installs): (t, degrees
    of freedom, two-sided p). Arms whose runs all took the same number of
    steps have no spread, where scipy gives no answer: p is then 1 for equal
    means and 0 for different ones."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.var() + b.var() == 0:
        return (0.0, math.inf, 1.0) if a.mean() == b.mean() else (math.inf, math.inf, 0.0)
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """The paired t-test over the seeds both arms ran (scipy's ttest_rel):
    (mean of a - b, two-sided p, seeds). A seed fixes the initialisation,
    the batch order and the validation batches in every arm, so much of the
    spread between seeds is shared and cancels in the per-seed differences;
    with the same runs this test sees what Welch's cannot. Differences that
    are all equal have no spread: p is then 1 for zero and 0 otherwise."""
    seeds = sorted(set(a) & set(b))
    x, y = (np.asarray([arm[s] for s in seeds], float) for arm in (a, b))
    d = x - y
    if len(d) < 2:
        return (float(d.mean()) if len(d) else math.nan, math.nan, len(d))
    if d.var() == 0:
        return float(d.mean()), 1.0 if d.mean() == 0 else 0.0, len(d)
    return float(d.mean()), float(stats.ttest_rel(x, y).pvalue), len(d)


# ---------------------------------------------------------------- one run

def parse_arm(spec: str) -> tuple[str, str, list[str]]:
    """'NAME=FILE K=V ...' -> (NAME, FILE, ['K=V', ...])."""
    head, *overrides = spec.split()
    name, sep, path = head.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--arm={spec!r} must be NAME=CONFIG_FILE [KEY=VALUE ...].")
    return name, path, overrides


def run_one(config, target: float, eval_every: int, max_steps: int,
            stop_at_target: bool) -> dict:
    """Trains `config` (its seed) for up to max_steps; see the module docstring."""
    import jax  # Here: after runtime.setup_process().
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.config import validate
    from smallgpt_jax.model import model_config
    from smallgpt_jax.store import store
    from smallgpt_jax.training import loop

    validate(config)
    runtime.setup_run(config.compilation_cache)
    config = loop.resolved(config)
    t, T = config.train, config.model.block_size
    with tempfile.TemporaryDirectory() as workdir:  # load_splits writes tokenizer.json there.
        tok, splits, _, _ = store.load_splits(config.data, T, workdir)
    cfg = model_config(config.model, tok.vocab_size)
    tx, schedule = train.make_optimizer(t)
    par = parallel.data_parallel(config.parallel, cfg, tx, schedule, config.seed)
    state = par.put_state(train.init_state(cfg, tx, config.seed))
    # The loop's validation batches: stream 2, batches 0..eval_steps-1.
    val = np.concatenate([parallel.process_rows(data.sample_batch(
        splits.val, config.seed, s, t.batch_size, T, 2)) for s in range(t.eval_steps)])
    val = par.put_batch(val, t.eval_steps)
    record = {"steps": None, "tokens": None, "cpu_s": None, "wall_s": None, "curve": []}
    cpu0, wall0 = time.process_time(), time.time()
    for step in range(max_steps):
        batch = data.sample_batch(splits.train, config.seed, step, t.batch_size, T)
        state, _ = par.train_step(state, par.put_batch(parallel.process_rows(batch),
                                                       t.grad_accum_steps))
        done = step + 1
        if done % eval_every and done != max_steps:
            continue
        loss = float(np.mean(parallel.host_values(par.eval_step(state.params, val))))
        record["curve"].append([done, loss])
        if record["steps"] is None and loss <= target:
            record.update(steps=done, tokens=done * t.batch_size * T,
                          cpu_s=time.process_time() - cpu0, wall_s=time.time() - wall0)
            if stop_at_target:
                break
        if not math.isfinite(loss):
            break
    record["final_val"] = record["curve"][-1][1]
    return record


# ---------------------------------------------------------------- the table

def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{fmt.format(np.mean(values))} ± {fmt.format(std)}"


def table(runs: list[dict], arms: list[str], baseline: str, target: float) -> str:
    """Markdown: per arm, runs reaching the target, steps/tokens/CPU s to it
    (mean ± std over those), the final val, and p against the baseline's steps."""
    lines = [f"| arm | reached val <= {target} | steps | tokens | CPU s | wall s | final val "
             f"| p (steps vs {baseline}, Welch) | steps - {baseline}'s, same seeds: mean, "
             f"paired p |", "|---|---|---|---|---|---|---|---|---|"]
    by_arm = {a: [r for r in runs if r["arm"] == a] for a in arms}
    base_by_seed = {r["seed"]: r["steps"] for r in by_arm[baseline] if r["steps"] is not None}
    base = list(base_by_seed.values())
    for arm in arms:
        rs = by_arm[arm]
        hit = [r for r in rs if r["steps"] is not None]
        steps = [r["steps"] for r in hit]
        p = pair = "-"
        if arm != baseline and len(steps) > 1 and len(base) > 1 and len(hit) == len(rs):
            p = f"{welch(steps, base)[2]:.2g}"
            diff, p_pair, n = paired({r["seed"]: r["steps"] for r in hit}, base_by_seed)
            if n > 1:
                pair = f"{diff:+.0f}, {p_pair:.2g} ({n} seeds)"
        lines.append(
            f"| {arm} | {len(hit)}/{len(rs)} | {_mean_std(steps, '{:.0f}')} | "
            f"{_mean_std([r['tokens'] for r in hit], '{:.3g}')} | "
            f"{_mean_std([r['cpu_s'] for r in hit], '{:.0f}')} | "
            f"{_mean_std([r['wall_s'] for r in hit], '{:.0f}')} | "
            f"{_mean_std([r['final_val'] for r in rs], '{:.3f}')} | {p} | {pair} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before JAX starts threads.
    from smallgpt_jax.cli.config_files import load_config
    with cli.user_errors():
        if not _ARMS.value:
            raise UserError("give at least one --arm=NAME=CONFIG_FILE; see --help.")
        arms = [parse_arm(a) for a in _ARMS.value]
        names = [a[0] for a in arms]
        if len(set(names)) != len(names):
            raise UserError(f"two arms share a name: {', '.join(names)}.")
        baseline = _BASELINE.value or names[0]
        if baseline not in names:
            raise UserError(f"--baseline={baseline!r} is not an arm ({', '.join(names)}).")
        try:
            seeds = [int(s) for s in _SEEDS.value.split(",")]
        except ValueError:
            raise UserError(f"--seeds={_SEEDS.value!r} must be integers separated by commas.")
        if _EVERY.value <= 0 or _MAX.value < 0:
            raise UserError("--eval_every must be positive and --max_steps not negative.")
        os.makedirs(_OUT.value, exist_ok=True)
        path = os.path.join(_OUT.value, "runs.jsonl")
        runs = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
        for seed in seeds:
            for name, file, overrides in arms:
                if any(r["arm"] == name and r["seed"] == seed for r in runs):
                    continue
                config = load_config(file, [*overrides, f"seed={seed}"])
                max_steps = _MAX.value or config.train.num_steps
                record = run_one(config, _TARGET.value, _EVERY.value, max_steps, _STOP.value)
                record = {"arm": name, "seed": seed, "config": file, "overrides": overrides,
                          **record}
                runs.append(record)
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"{name} seed {seed}: steps {record['steps']}, final val "
                      f"{record['final_val']:.4f}, CPU {record['cpu_s']} s", flush=True)
        runs = [r for r in runs if r["seed"] in seeds and r["arm"] in names]
        out = table(runs, names, baseline, _TARGET.value)
        print(out)
        with open(os.path.join(_OUT.value, "table.md"), "w") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    cli.run_app(main)
