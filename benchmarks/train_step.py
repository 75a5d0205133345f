"""Train-step benchmark: our JAX step next to a PyTorch reference, one run.

    python -m benchmarks.train_step --config=configs/char_cpu.py \
        [--config.train.batch_size=16] [--repeats=20] [--rounds=4] [--skip_torch]

It times the step that `training/loop.py` runs (`parallel.make_parallel_steps`: forward,
backward, gradient clipping, AdamW) on a fixed batch, and reports compile
time, the median step time (JAX's steps are dispatched back to back and waited
for once per round, as the loop runs them: a round's mean per step), tokens/s, model FLOPs per token, achieved FLOP/s,
MFU and peak memory; then the same model, batch and optimizer in PyTorch
(`benchmarks/torch_reference.py`, in a child process) and the ratio. The two
are timed in alternating rounds so that a change in machine load hits both.

Model FLOPs per token are 6 N + 12 L D T (forward and backward, PaLM /
nanoGPT convention): N counts the parameters that take part in matmuls (all
but the position table, and the input embedding when the head is untied),
12 L D T the attention scores and weighted sums (no causal halving).
MFU divides achieved FLOP/s by the device's peak: on CPU the float32 matmul
rate measured at start-up (`benchmarks.peak`), on GPU/TPU the published peak
for the model's dtype looked up by device kind.
"""

from __future__ import annotations

if __name__ == "__main__":  # First: the allocator, before NumPy starts threads.
    from smallgpt_jax.system import runtime
    runtime.setup_process()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from smallgpt_jax.cli.config_files import define_config_flag  # noqa: E402

_CONFIG = define_config_flag("Path to a config file, e.g. configs/char_cpu.py.")
_WARMUP = flags.DEFINE_integer(
    "warmup", 5, "Untimed steps after compiling, per framework (the first steps also "
    "settle the heap: see runtime.py).")
_REPEATS = flags.DEFINE_integer(
    "repeats", 20, "Timed steps per framework (reported: the median of the rounds' mean "
    "JAX step, and of torch's steps).")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 4, "The timed steps are split into this many alternating JAX/torch rounds.")
_SKIP_TORCH = flags.DEFINE_boolean("skip_torch", False, "Time the JAX step only.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch threads (0: all cores).")
_PEAK = flags.DEFINE_float(
    "peak_flops", 0.0, "Peak FLOP/s for MFU (0: measure on CPU, look up on GPU/TPU).")
_VOCAB = flags.DEFINE_integer(
    "vocab_size", 0, "Vocabulary size (0: 65 for 'char' as in Tiny Shakespeare, 256 for "
    "'byte', config.data.vocab_size for 'bpe').")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Also write the JSON record to this file.")
_CACHE = flags.DEFINE_boolean(
    "compilation_cache", False, "Allow JAX's persistent compilation cache (off: the "
    "compile time reported is a cold compile).")


def vocab_size_for(config) -> int:
    if _VOCAB.value:
        return _VOCAB.value
    return {"char": 65, "byte": 256}.get(config.data.tokenizer, config.data.vocab_size)


def matmul_params(params, model_cfg) -> int:
    """Parameters that take part in matmuls (see the module docstring)."""
    from smallgpt_jax.model import count_params
    n = count_params(params)
    if "pos_embed" in params:
        n -= params["pos_embed"].size
    if not model_cfg.tie_embeddings:
        n -= params["token_embed"]["embedding"].size
    return n


def flops_per_token(n_matmul: int, model_cfg) -> int:
    """6 N + 12 L D T: training FLOPs per token (forward + backward)."""
    m = model_cfg
    return 6 * n_matmul + 12 * m.num_layers * m.embed_dim * m.block_size


def torch_mismatch(config) -> str | None:
    """Why the PyTorch reference cannot mirror this config, or None if it can."""
    m, t = config.model, config.train
    wanted = {"pos_encoding": "learned", "norm": "layernorm", "norm_position": "pre",
              "activation": "gelu", "tie_embeddings": True, "mlp_ratio": 4,
              "dtype": "float32"}
    import jax  # Here, not at the top: XLA flags are set before JAX starts.
    from smallgpt_jax.system import runtime
    # The dtype JAX will compute in ('auto' is float32 on a CPU).
    chosen = dict(m, dtype=runtime.resolve_dtype(m.dtype, jax.default_backend()))
    for field, value in wanted.items():
        if chosen[field] != value:
            return f"model.{field}={chosen[field]!r} (the reference has {value!r})"
    if t.grad_accum_steps != 1:
        return "train.grad_accum_steps > 1"
    return None


class TorchWorker:
    """The PyTorch reference step in a child process (see _torch_worker.py)."""

    def __init__(self, kwargs: dict[str, Any]):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._torch_worker", json.dumps(kwargs)],
            cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self._expect("READY"))

    def _expect(self, tag: str) -> str:
        line = self.proc.stdout.readline()
        if not line.startswith(tag):
            self.proc.kill()
            raise RuntimeError(f"torch worker: expected {tag}, got {line!r} "
                               f"(exit code {self.proc.poll()})")
        return line[len(tag):].strip()

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def warm(self, n: int) -> None:
        self._send(f"WARM {n}")
        self._expect("DONE")

    def run(self, n: int) -> list[float]:
        self._send(f"RUN {n}")
        return json.loads(self._expect("TIMES"))

    def close(self) -> dict:
        self._send("QUIT")
        mem = json.loads(self._expect("MEM"))
        self.proc.wait(timeout=60)
        return mem


class JaxStep:
    """The loop's data-parallel train step, compiled ahead of time."""

    def __init__(self, config, vocab_size: int):
        from flax.jax_utils import replicate
        from smallgpt_jax import data, train
        from smallgpt_jax.model import model_config

        t = config.train
        self.model_cfg = model_config(config.model, vocab_size)
        tx, schedule = train.make_optimizer(t)
        state = train.init_state(self.model_cfg, tx, config.seed)
        self.num_params = matmul_params(state.params, self.model_cfg)
        try:
            from smallgpt_jax import parallel
        except ImportError:  # Older code: the device placement was part of train.py.
            parallel = train
        if hasattr(parallel, "data_parallel"):  # The step training/loop.py runs (config.parallel).
            par = parallel.data_parallel(config.parallel, self.model_cfg, tx, schedule,
                                         config.seed)
            p_train, put_state, put_batch = par.train_step, par.put_state, par.put_batch
        else:  # Older code: pmap only.
            p_train, _ = parallel.make_parallel_steps(self.model_cfg, tx, schedule, config.seed)
            put_state, put_batch = replicate, parallel.shard_batch
        parallel.per_device_batch(t.batch_size, t.grad_accum_steps)  # Clear error if uneven.
        tokens = np.random.default_rng(0).integers(0, vocab_size, 100_000).astype(np.int32)

        def host_batch(step: int):  # What the loop does on the host for each step.
            rows = data.sample_batch(tokens, config.seed, step, t.batch_size,
                                     self.model_cfg.block_size)
            return put_batch(rows, t.grad_accum_steps)

        self.host_batch = host_batch
        self.cpu_times: list[float] = []  # Process CPU seconds per step (all threads).
        self.faults, self.timed_steps = 0, 0
        self.batch = host_batch(0)
        self.state = put_state(state)
        t0 = time.perf_counter()
        self.compiled = p_train.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.first_loss = self.step()

    def step(self) -> float:
        """One step; fetching the loss waits until it has finished."""
        self.state, metrics = self.compiled(self.state, self.batch)
        return float(np.asarray(metrics["loss"]).reshape(-1)[0])  # pmap: [devices].

    def run(self, n: int, timed: bool = True) -> list[float]:
        """Dispatches n steps back to back and waits once, after the last (as
        the loop runs them: a wait per step would add a dispatch and a sync to
        each); returns [seconds per step], the n steps' mean."""
        if n <= 0:
            return []
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            self.state, metrics = self.compiled(self.state, self.batch)
        metrics["loss"].block_until_ready()  # Steps run in order: the last done, all done.
        per_step = (time.perf_counter() - t0) / n
        self.cpu_times.append((time.process_time() - c0) / n)
        if timed:  # Minor page faults: a sign of buffers being mapped afresh.
            self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            self.timed_steps += n
        return [per_step]

    def host_batch_ms(self, n: int = 20) -> float:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            self.host_batch(i).block_until_ready()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    def buffer_bytes(self) -> int | None:
        """Arguments + outputs + temporaries of the compiled step, less aliasing."""
        try:
            m = self.compiled.memory_analysis()
            return int(m.argument_size_in_bytes + m.output_size_in_bytes
                       + m.temp_size_in_bytes - m.alias_size_in_bytes)
        except Exception:  # Not every backend reports it.
            return None


# How JaxStep.run times the bare step, said in the output.
TIMING = ("no per-step sync: each round's steps dispatched back to back and waited for once; "
          "a time is the round's mean step")


def summarize(times: list[float], tokens_per_step: int, flops_step: float,
              peak: float | None) -> dict[str, Any]:
    median = statistics.median(times)
    flop_s = flops_step / median
    return {"median_s": median, "min_s": min(times), "max_s": max(times),
            "times_s": times, "tokens_per_s": tokens_per_step / median,
            "flop_per_s": flop_s, "mfu": flop_s / peak if peak else None}


def device_memory(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def render(record: dict[str, Any]) -> str:
    j, tr = record["jax"], record.get("torch")
    mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    rows = [  # (label, jax value, torch value, jax/torch ratio)
        ("compile time (s)", f"{j['compile_s']:.2f}", "-", ""),
        ("step time, median (ms)", f"{1e3 * j['median_s']:.2f}",
         tr and f"{1e3 * tr['median_s']:.2f}", tr and f"{tr['median_s'] / j['median_s']:.2f}x faster"),
        ("step time, min (ms)", f"{1e3 * j['min_s']:.2f}", tr and f"{1e3 * tr['min_s']:.2f}", ""),
        ("tokens / s", f"{j['tokens_per_s']:,.0f}", tr and f"{tr['tokens_per_s']:,.0f}",
         tr and f"{j['tokens_per_s'] / tr['tokens_per_s']:.2f}"),
        ("model GFLOP / token", f"{record['flops_per_token'] / 1e9:.4f}",
         tr and f"{record['flops_per_token'] / 1e9:.4f}", ""),
        ("achieved GFLOP/s", f"{j['flop_per_s'] / 1e9:.1f}", tr and f"{tr['flop_per_s'] / 1e9:.1f}", ""),
        ("MFU", pct(j["mfu"]), tr and pct(tr["mfu"]), ""),
        ("peak host memory (MiB)", mib(j["peak_host_bytes"]), tr and mib(tr["peak_host_bytes"]), ""),
        ("step buffers (MiB)", mib(j["step_buffer_bytes"]), "-", ""),
        ("device memory peak (MiB)", mib(j["device_peak_bytes"]), "-", ""),
        ("host batch build (ms)", f"{j['host_batch_ms']:.2f}", "-", ""),
        ("CPU time / step (ms)", f"{1e3 * j['cpu_s_per_step']:.1f}", "-", ""),
        ("page faults / step", f"{j['page_faults_per_step']:,.0f}",
         tr and f"{tr['page_faults_per_step']:,.0f}", ""),
    ]
    m = record["model"]
    peak = record["peak_flops"]
    head = [
        f"config {record['config_name']}: L={m['num_layers']} H={m['num_heads']} "
        f"D={m['embed_dim']} T={m['block_size']} B={record['batch_size']} "
        f"V={m['vocab_size']} dtype={m['dtype']} dropout={m['dropout']} "
        f"bias={m['use_bias']} attention={m['attention']} scan={m['scan_layers']}",
        f"device {record['device']}; peak {'unknown' if not peak else f'{peak / 1e9:,.0f} GFLOP/s'}"
        f" ({record['peak_source']}); load average {record['load_avg'][0]:.2f} at start, "
        f"{record['load_avg_end'][0]:.2f} at end",
        f"matmul parameters N={record['num_params']:,}; timed {record['repeats']} steps each "
        f"after {record['warmup']} warm-up, in {record['rounds']} alternating rounds",
        f"jax: {record['jax'].get('timing', 'each step waited for (older record)')}; "
        "torch: each step timed alone",
    ]
    if record.get("torch_note"):
        head.append(f"torch: {record['torch_note']}")
    widths = [max(len(str(r[i] or "-")) for r in rows) for i in range(4)]
    widths = [max(w, len(h)) for w, h in zip(widths, ("", "jax", "torch", "jax vs torch"))]
    line = lambda r: "  ".join(f"{str(c if c is not None else '-'):<{w}}" for c, w in zip(r, widths))
    return "\n".join(head + [line(("", "jax", "torch", "jax vs torch"))] + [line(r) for r in rows])


def benchmark(config) -> dict[str, Any]:
    import jax
    from benchmarks.peak import device_peak_flops, peak_memory_bytes
    from smallgpt_jax.config import validate

    validate(config)
    try:
        from smallgpt_jax.system import runtime
    except ImportError:  # Older code (to measure "before" figures): no tweaks.
        runtime = None
    # As a run has them (run as a script, runtime.setup_process applied them
    # already); SMALLGPT_RUNTIME_TWEAKS=0 measures without any of it.
    tweaks = {}
    if runtime and hasattr(runtime, "use_default_xla_flags"):  # Before JAX starts.
        tweaks["xla_flags"] = runtime.use_default_xla_flags()
    if runtime and runtime.tweaks_enabled():
        tweaks.update(host_allocator=runtime.tune_host_allocator(),
                      unrolled_threefry=runtime.use_unrolled_threefry(True))
    if _CACHE.value and runtime:
        runtime.enable_compilation_cache(runtime.default_compilation_cache_dir())
    else:
        jax.config.update("jax_enable_compilation_cache", False)
    load_start = os.getloadavg()
    device = jax.devices()[0]
    m, t = config.model, config.train
    if runtime and hasattr(runtime, "resolve_dtype"):  # 'auto': what a run would use.
        m.dtype = runtime.resolve_dtype(m.dtype, jax.default_backend())
    vocab = vocab_size_for(config)

    # The CPU peak is measured first, while nothing else of ours is running.
    if _PEAK.value:
        peak, peak_source = _PEAK.value, "given by --peak_flops"
    else:
        peak = device_peak_flops(device, m.dtype)
        peak_source = (f"fastest measured {m.dtype} matmul" if device.platform == "cpu"
                       else f"published {m.dtype} peak")

    jstep = JaxStep(config, vocab)
    tokens_per_step = t.batch_size * m.block_size
    fpt = flops_per_token(jstep.num_params, jstep.model_cfg)
    flops_step = fpt * tokens_per_step

    torch_note = None if not _SKIP_TORCH.value else "skipped (--skip_torch)"
    worker = None
    if torch_note is None:
        torch_note = torch_mismatch(config)
        if torch_note is None:
            worker = TorchWorker(dict(
                num_layers=m.num_layers, num_heads=m.num_heads, embed_dim=m.embed_dim,
                block_size=m.block_size, vocab_size=vocab, batch_size=t.batch_size,
                learning_rate=t.learning_rate, seed=config.seed, dropout=m.dropout,
                bias=m.use_bias, num_threads=_TORCH_THREADS.value or None,
                # flax's nn.gelu is the tanh approximation: the reference matches it.
                gelu_approximate="tanh"))
        else:
            torch_note = "not run: " + torch_note

    warmup, repeats, rounds = _WARMUP.value, _REPEATS.value, max(1, min(_ROUNDS.value, _REPEATS.value))
    jstep.run(warmup, timed=False)
    if worker:
        worker.warm(warmup)
    jax_times, torch_times = [], []
    for r in range(rounds):  # Alternate, so load changes hit both sides.
        n = repeats // rounds + (r < repeats % rounds)
        jax_times += jstep.run(n)
        if worker:
            torch_times += worker.run(n)

    record: dict[str, Any] = {
        "config_name": config.name, "model": jstep.model_cfg.to_dict(),
        "batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps,
        "device": f"{device.platform} {device.device_kind} x{jax.device_count()}",
        "parallel": config.parallel,
        "jax_version": jax.__version__, "peak_flops": peak, "peak_source": peak_source,
        "num_params": jstep.num_params, "flops_per_token": fpt, "tokens_per_step": tokens_per_step,
        "warmup": warmup, "repeats": repeats, "rounds": rounds,
        "load_avg": load_start, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "runtime_tweaks": tweaks,
    }
    record["jax"] = {
        **summarize(jax_times, tokens_per_step, flops_step, peak),
        "compile_s": jstep.compile_s, "first_loss": jstep.first_loss,
        # CPU seconds per step over all threads: less sensitive to other
        # processes than wall time on a shared machine.
        "cpu_s_per_step": statistics.median(jstep.cpu_times[-len(jax_times):]),
        "timing": TIMING,
        "host_batch_ms": jstep.host_batch_ms(), "page_faults_per_step": jstep.faults / max(jstep.timed_steps, 1),
        "peak_host_bytes": peak_memory_bytes(), "step_buffer_bytes": jstep.buffer_bytes(),
        "device_peak_bytes": None if device.platform == "cpu" else device_memory(device),
    }
    if worker:
        mem = worker.close()
        record["torch"] = {**summarize(torch_times, tokens_per_step, flops_step, peak),
                           **worker.info, **mem}
        record["speedup"] = record["torch"]["median_s"] / record["jax"]["median_s"]
    record["torch_note"] = torch_note
    record["load_avg_end"] = os.getloadavg()
    return record


def main(argv: list[str]) -> None:
    from smallgpt_jax.cli import app as cli
    with cli.user_errors():
        record = benchmark(_CONFIG.value)
    print(render(record))
    print("JSON " + json.dumps(record))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    from smallgpt_jax.cli import app as cli
    flags.mark_flag_as_required("config")
    cli.run_app(main)
