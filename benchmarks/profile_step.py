"""Where a train step's time goes, by kind of operation.

    python -m benchmarks.profile_step --config=configs/char_cpu.py --config.train.batch_size=12 [--steps=10]

Compiles the step exactly as `benchmarks.train_step` does (the step training/loop.py
runs), runs `--warmup` steps, then records `--steps` more with
`jax.profiler`, and sums the time of every XLA operation by category. An
operation's time is its fastest run among the recorded steps, an estimate of
its cost undisturbed by other processes. The sum is below the wall time of a
step: the difference is time between operations (threads waking, dispatch).

Categories come from the operation's source location, which XLA keeps in the
compiled program (`op_name`, e.g. `.../block_0/attn/bthk,bshk->bhts/dot_general`).
Matmul rows also show their rate: the model FLOPs of that kind per step
(`12 L D T` per token for attention, the rest of `6 N + 12 L D T` for the dense
layers, as in `train_step.py`) over their time.
"""

from __future__ import annotations

if __name__ == "__main__":  # First: the allocator, before NumPy starts threads.
    from smallgpt_jax.system import runtime
    runtime.setup_process()

import collections  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import flags  # noqa: E402

from benchmarks import train_step  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 10, "Steps recorded by the profiler.")

DENSE, ATTENTION = "dense-layer matmuls", "attention matmuls"
CATEGORIES = [DENSE, ATTENTION, "attention softmax and mask", "dropout (random bits, masks)",
              "LayerNorm, MLP element-wise, layout copies", "optimizer and clipping",
              "everything else"]


# Control flow: the operations of their bodies are timed on their own.
_WRAPPERS = ("while", "call", "conditional")


def op_sources(hlo_text: str) -> dict[str, tuple[bool, str]]:
    """{instruction name: (is a matmul, op_name)} from a compiled program's text."""
    sources = {}
    for line in hlo_text.splitlines():
        # The result type is one shape, or a tuple of them: "(f32[4]{0}, f32[2]{0})".
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) ([\w\-]+)\(", line)
        if m and m.group(2) not in _WRAPPERS:
            op_name = re.search(r'op_name="([^"]+)"', line)
            op_name = op_name.group(1) if op_name else ""
            # Library calls (YNNPACK) wrap dots in fusions: the source names the dot.
            is_matmul = m.group(2) == "dot" or "dot_general" in op_name.rsplit("/", 1)[-1]
            sources.setdefault(m.group(1), (is_matmul, op_name))
    return sources


def category(name: str, sources: dict[str, tuple[bool, str]]) -> str:
    is_matmul, src = sources.get(name, (False, ""))
    if is_matmul:
        return ATTENTION if "/attn/" in src and "->" in src else DENSE
    if "Dropout" in src:  # The random bits are computed inside these fusions.
        return "dropout (random bits, masks)"
    if "/attn/" in src:
        return "attention softmax and mask"
    if "transpose" in name or name.startswith("copy") or any(
            k in src for k in ("/mlp/", "norm", "Norm")):
        return "LayerNorm, MLP element-wise, layout copies"
    if src and "GPT" not in src:
        return "optimizer and clipping"
    return "everything else"


def profile(jstep, steps: int) -> tuple[dict[str, float], float]:
    """({category: seconds per step}, median wall seconds per step)."""
    import jax

    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                t0 = time.perf_counter()
                jstep.step()
                walls.append(time.perf_counter() - t0)
        trace = next(Path(trace_dir).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(trace))
    runs = collections.defaultdict(list)
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                runs[event.name].append(event.duration_ns * 1e-9)
    sources = op_sources(jstep.compiled.as_text())
    per_step = collections.Counter()
    for name, times in runs.items():
        if name in sources:  # XLA operations only (not runtime or Python events).
            per_step[category(name, sources)] += min(times) * (len(times) / steps)
    return dict(per_step), sorted(walls)[len(walls) // 2]


def main(argv: list[str]) -> None:
    from smallgpt_jax.cli import app as cli
    from smallgpt_jax.system import runtime

    with cli.user_errors():
        config = train_step._CONFIG.value
        from smallgpt_jax.config import validate
        validate(config)
        runtime.setup_run(config.get("compilation_cache", ""))
        jstep = train_step.JaxStep(config, train_step.vocab_size_for(config))
        jstep.run(train_step._WARMUP.value, timed=False)
        seconds, wall = profile(jstep, _STEPS.value)
    m = jstep.model_cfg
    tokens = config.train.batch_size * m.block_size
    attention_flops = 12 * m.num_layers * m.embed_dim * m.block_size * tokens
    flops = {ATTENTION: attention_flops, DENSE: train_step.flops_per_token(
        jstep.num_params, m) * tokens - attention_flops}
    print(f"{config.name}: batch {config.train.batch_size}, {_STEPS.value} steps profiled")
    for name in CATEGORIES:
        if name in seconds:
            s = seconds[name]
            rate = f"  {flops[name] / s / 1e9:6.1f} GFLOP/s" if name in flops else ""
            print(f"{name:45s} {s * 1e3:9.1f} ms{rate}")
    print(f"{'sum of operations / wall time per step':45s} {sum(seconds.values()) * 1e3:9.1f}"
          f" / {wall * 1e3:.1f} ms")


if __name__ == "__main__":
    from smallgpt_jax.cli import app as cli
    flags.mark_flag_as_required("config")
    cli.run_app(main)
