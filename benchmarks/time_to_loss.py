"""Time to a validation loss, with the project's own training loop.

    python -m benchmarks.time_to_loss --config=configs/char_cpu.py --target_val_loss=2.2 \
        [--config.train.eval_every=100 ...] [--cache=cold|warm|off] [--keep_going]
        [--workdir=DIR] [--warmup=5] [--repeats=20] [--json_out=FILE]

It runs `loop.train_and_evaluate` (the loop `smallgpt_jax.main` runs, not a
copy) in this fresh process, with a fresh workdir and by default an empty
compilation cache, and watches it through `profiling.Hooks` and JAX's own
compile events (`jax.monitoring`). The run stops at the first evaluation at
or below the target (`--keep_going`: at num_steps). Then, in the same
process, the same config's compiled train step alone is timed
(`benchmarks.train_step.JaxStep`). It prints a table and, last, one line
`JSON {...}`:

| field | meaning |
| --- | --- |
| first_step_s | process start to the end of step 1 (it waits for step 1 only) |
| compiled_programs, compile_s | XLA programs compiled (or loaded from the persistent cache) during the run, and their seconds (trace, lowering and XLA, from JAX's compile events) |
| programs_before_first_step | those of them compiled before step 1 ended |
| loop_step_s | median seconds per step between log points (every step up to a log point has finished there), leaving out intervals with an evaluation or a checkpoint |
| loop_step_times | [step, seconds per step] of each interval the median is taken over |
| bare_step_s | seconds per compiled step alone on a fixed batch: `--repeats` steps (after `--warmup`) dispatched back to back and waited for once, as `benchmarks.train_step` times them (no per-step sync, as in the loop) |
| eval_s | median seconds per evaluation (both splits; samples and pictures not included) |
| time_to_target_s | process start to the end of the first evaluation at or below the target; null if none |
| stopped_by | the signal that stopped the benchmark early (SIGTERM from `timeout`, Ctrl-C), or null |

A stop signal does not lose the record: the loop saves and ends, the bare
step is skipped (null), and the table and JSON are written with what was
measured, then the process exits with 128 + the signal number. The record
is also written to `--json_out` after every evaluation, so even a kill
keeps the evaluations made so far. The cold compilation cache folder is
removed on every way out.
"""

from __future__ import annotations

import time

T0 = time.time()  # Process start, nearly: before JAX or the project is imported.

if __name__ == "__main__":  # First: the allocator, before NumPy starts threads.
    from smallgpt_jax.system import runtime
    runtime.setup_process()

import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

from absl import flags  # noqa: E402

from benchmarks import train_step  # noqa: E402  Its flags: --config, --warmup, --repeats, --json_out.
from smallgpt_jax.checkpoint.workdir import CHECKPOINT_DIR  # noqa: E402
from smallgpt_jax.system import runtime  # noqa: E402
from smallgpt_jax.system.errors import Interrupted, UserError  # noqa: E402
from smallgpt_jax.training import profiling  # noqa: E402

_TARGET = flags.DEFINE_float("target_val_loss", None, "Validation loss to reach (nats/token).")
_KEEP_GOING = flags.DEFINE_boolean(
    "keep_going", False, "Train to num_steps instead of stopping at the target.")
_CACHE = flags.DEFINE_enum(
    "cache", "cold", ["cold", "warm", "off"],
    "cold: a new, empty persistent compilation cache (a cold start); warm: the config's "
    "own (normally the user cache); off: none.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Run folder (default: a temporary one, removed).")

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class TargetReached(Exception):
    """Raised from a hook to end the run at the target."""


class Stopped(Exception):
    """A stop signal outside the loop (the loop itself saves, then raises Interrupted)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


class Watcher(profiling.Hooks):
    """Records when things happen in the loop (seconds since process start)."""

    def __init__(self, target: float | None, stop_at_target: bool, on_eval=lambda: None):
        self.target, self.stop_at_target, self.on_eval = target, stop_at_target, on_eval
        self.first_step_s = None
        self.log_points: list[tuple[int, float]] = []  # (step, time)
        self.busy_steps: set[int] = set()  # Steps followed by an evaluation or a save.
        self.evals: list[dict[str, Any]] = []
        self.time_to_target_s = None
        self.compiles: list[tuple[str, str, float, float]] = []  # (event, name, seconds, end)

    def compile_event(self, event: str, duration: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            self.compiles.append((event, kwargs.get("fun_name", "?"), duration,
                                  time.time() - T0))

    def step_launched(self, step: int, metrics: dict) -> None:
        if self.first_step_s is None:
            import jax
            jax.block_until_ready(metrics)  # Only for step 1: the end of the first step.
            self.first_step_s = time.time() - T0

    def logged(self, step: int) -> None:
        self.log_points.append((step, time.time() - T0))

    def evaluated(self, step: int, losses: dict[str, float], seconds: float) -> None:
        now = time.time() - T0
        self.busy_steps.add(step)
        self.evals.append({"step": step, "val_loss": losses["val"],
                           "train_loss": losses["train"], "eval_s": seconds, "t_s": now})
        if self.target is not None and losses["val"] <= self.target:
            if self.time_to_target_s is None:
                self.time_to_target_s = now
        self.on_eval()
        if self.time_to_target_s is not None and self.stop_at_target:
            raise TargetReached

    def saved(self, step: int) -> None:
        self.busy_steps.add(step)

    def step_times(self) -> list[tuple[int, float]]:
        """(step, seconds per step) between log points, skipping the first
        interval (compiles, first steps) and intervals holding an evaluation
        or a save."""
        per_step = []
        for (a, ta), (b, tb) in zip(self.log_points[1:], self.log_points[2:]):
            if not any(a <= s < b for s in self.busy_steps):
                per_step.append((b, (tb - ta) / (b - a)))
        return per_step

    def loop_step_s(self) -> float | None:
        """The median of `step_times`."""
        per_step = [s for _, s in self.step_times()]
        return statistics.median(per_step) if per_step else None


def run(config, workdir: str) -> dict[str, Any]:
    """Times the loop, then the bare step; a stop signal ends either early
    with what was measured (`stopped_by`)."""
    from jax import monitoring

    from smallgpt_jax.training import loop

    out = {"steps": None, "reached": False, "bare_step_s": None, "stopped_by": None}
    watcher = Watcher(_TARGET.value, not _KEEP_GOING.value,
                      on_eval=lambda: write_json(record(config, watcher, out)))
    monitoring.register_event_duration_secs_listener(watcher.compile_event)
    cache_dir = None
    if _CACHE.value == "cold":
        cache_dir = tempfile.mkdtemp(prefix="smallgpt_cold_cache_")
        config.compilation_cache = cache_dir
    elif _CACHE.value == "off":
        config.compilation_cache = ""
    # Outside the loop a signal raises Stopped; inside, the loop's own
    # handlers save and raise Interrupted, then give these back.
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        try:
            out["steps"] = loop.train_and_evaluate(config, workdir, hooks=watcher).steps
        except TargetReached:
            out["reached"], out["steps"] = True, watcher.evals[-1]["step"]
        out["run_s"] = time.time() - T0
        # The bare step: same config, same process, after the run.
        bare = train_step.JaxStep(config, _vocab(workdir))
        bare.run(train_step._WARMUP.value, timed=False)
        out["bare_step_s"] = statistics.median(bare.run(train_step._REPEATS.value))
    except (Interrupted, Stopped) as e:
        out["stopped_by"] = signal.Signals(e.signum).name
        out["steps"] = out["steps"] or (watcher.log_points[-1][0] if watcher.log_points else 0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    out.setdefault("run_s", time.time() - T0)
    return record(config, watcher, out)


def record(config, watcher: Watcher, out: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of what `watcher` saw and `out` holds so far."""
    import jax
    backend = [c for c in watcher.compiles if c[0] == COMPILE_EVENTS[2]]
    device = jax.devices()[0]
    loop_step, bare_step = watcher.loop_step_s(), out["bare_step_s"]
    first = watcher.first_step_s
    return {
        "config_name": config.name, "device": f"{device.platform} {device.device_kind} "
                                              f"x{jax.device_count()}",
        "dtype": runtime.resolve_dtype(config.model.dtype, device.platform), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compilation_cache": _CACHE.value, "target_val_loss": _TARGET.value,
        "first_step_s": first,
        "compiled_programs": len(backend),
        "compile_s": sum(c[2] for c in watcher.compiles),
        "programs_before_first_step": sum(1 for c in backend if first and c[3] <= first),
        "programs": _program_table(watcher.compiles),
        "loop_step_s": loop_step, "bare_step_s": bare_step,
        "loop_step_times": watcher.step_times(),
        "loop_over_bare": loop_step / bare_step if loop_step and bare_step else None,
        "eval_s": statistics.median(e["eval_s"] for e in watcher.evals) if watcher.evals else None,
        "evaluations": watcher.evals,
        "time_to_target_s": watcher.time_to_target_s, "reached_target": out["reached"] or (
            watcher.time_to_target_s is not None),
        "steps": out["steps"] if out["steps"] is not None else (
            watcher.evals[-1]["step"] if watcher.evals else None),
        "run_s": out.get("run_s", time.time() - T0), "batch_size": config.train.batch_size,
        "block_size": config.model.block_size,
        "load_avg": os.getloadavg(), "stopped_by": out["stopped_by"],
    }


def write_json(r: dict[str, Any]) -> None:
    if train_step._JSON_OUT.value:
        with open(train_step._JSON_OUT.value, "w") as f:
            json.dump(r, f, indent=1)


def _vocab(workdir: str) -> int:
    """The run's vocabulary size (from the tokenizer it saved)."""
    from smallgpt_jax.tokenizers import tokenizer
    return tokenizer.load(os.path.join(workdir, "tokenizer.json")).vocab_size


def _program_table(compiles) -> list[dict[str, Any]]:
    """Seconds per program name (trace + lowering + XLA), most expensive first."""
    by_name = collections.defaultdict(lambda: {"count": 0, "seconds": 0.0})
    for event, name, seconds, _ in compiles:
        by_name[name]["seconds"] += seconds
        if event == COMPILE_EVENTS[2]:
            by_name[name]["count"] += 1
    rows = [{"name": n, **v} for n, v in by_name.items() if v["count"]]
    return sorted(rows, key=lambda r: -r["seconds"])


def render(r: dict[str, Any]) -> str:
    s = lambda x, f="{:.3f}": "-" if x is None else f.format(x)
    lines = [
        f"config {r['config_name']}, device {r['device']}, dtype {r['dtype']}, "
        f"compilation cache {r['compilation_cache']}, XLA_FLAGS '{r['xla_flags']}'",
        f"first step done            {s(r['first_step_s'], '{:.2f}')} s after start",
        f"programs compiled          {r['compiled_programs']} ({r['programs_before_first_step']}"
        f" before step 1 ended), {r['compile_s']:.2f} s",
        f"loop step (median)         {s(r['loop_step_s'] and 1e3 * r['loop_step_s'], '{:.2f}')} ms",
        f"bare compiled step         {s(r['bare_step_s'] and 1e3 * r['bare_step_s'], '{:.2f}')}"
        f" ms  (loop / bare {s(r['loop_over_bare'])})",
        f"evaluation (median)        {s(r['eval_s'])} s",
        f"time to val loss <= {r['target_val_loss']}   {s(r['time_to_target_s'], '{:.1f}')} s"
        f" (stopped at step {r['steps']}, {r['run_s']:.1f} s after start)",
        "evaluations: " + ", ".join(f"step {e['step']} val {e['val_loss']:.4f} at "
                                    f"{e['t_s']:.1f} s" for e in r["evaluations"]),
        "most expensive programs: " + ", ".join(
            f"{p['name']} {p['seconds']:.2f} s" for p in r["programs"][:6]),
    ]
    if r["stopped_by"]:
        lines.append(f"stopped by {r['stopped_by']}: the figures are what was measured by then")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from smallgpt_jax.cli import app as cli
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="time_to_loss_")
    with cli.user_errors():
        if os.path.exists(os.path.join(workdir, CHECKPOINT_DIR)):
            raise UserError(f"--workdir={workdir} holds a run already; the benchmark "
                                "needs a fresh one (a resume is no cold start).")
        try:
            r = run(train_step._CONFIG.value, workdir)
        finally:
            if not _WORKDIR.value:
                shutil.rmtree(workdir, ignore_errors=True)
    print(render(r))
    write_json(r)
    print("JSON " + json.dumps(r), flush=True)
    if r["stopped_by"]:
        sys.exit(128 + signal.Signals[r["stopped_by"]].value)


if __name__ == "__main__":
    from smallgpt_jax.cli import app as cli
    flags.mark_flag_as_required("config")
    cli.run_app(main)
