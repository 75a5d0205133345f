"""The real train and eval steps compiled ahead of time for a target machine
that is not here (a TPU slice, N CPU devices), and XLA's estimates of what
one step costs there: memory per device, FLOPs and bytes moved, and the step
time the target's published peaks allow.

Nothing runs and no array is made: the steps are `parallel.make_sharded_steps`
(config.parallel 'pmap' or 'shard_map': the state replicated) or
`sharding.make_fsdp_steps` ('fsdp': the state split over the devices) over a
`Mesh` of the target's devices, lowered from shapes alone
(`jax.ShapeDtypeStruct`s with shardings) and compiled. For a TPU the devices
are compile-only ones that libtpu describes from a topology name; no TPU is
needed, only the library (`pip install -e ".[tpu]"`).

The 'auto' settings are resolved for the target's platform, not this host's
(`model_config(..., platform)`): a CPU host would otherwise compile float32
and the CPU kernels for a TPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smallgpt_jax import parallel, sharding, train
from smallgpt_jax.analysis import hlo_cost, hlo_text
from smallgpt_jax.model import count_params, model_config, resolve_remat
from smallgpt_jax.system.errors import UserError

GB, GiB = 1e9, 2 ** 30


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # As on the command line: 'tpu:v5e-1', 'cpu:4'.
    platform: str  # 'tpu', 'cpu' or 'gpu'.
    devices: int  # JAX devices (a v4 or v5p chip in megacore mode is one device).
    topology: str = ""  # libtpu's name, e.g. 'v5e:2x4'.
    chip_config: str = "default"  # 'megacore': both TensorCores of a chip as one device.
    chips_per_host: tuple = (1, 1, 1)
    peak_flops: float | None = None  # Published peak bf16 FLOP/s per device.
    hbm_bytes_per_s: float | None = None  # Published memory bandwidth per device.
    memory_bytes: float | None = None  # Published memory per device.


# Peaks per chip as Google publishes them in the Cloud TPU documentation
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e, "key specifications"):
# published peaks, which real steps do not reach; a v4 or v5p chip counts
# once (megacore). Memory in the units of those pages (v4: GiB; others: GB).
_CHIPS = {
    "v4": dict(peak_flops=275e12, hbm_bytes_per_s=1200 * GB, memory_bytes=32 * GiB),
    "v5e": dict(peak_flops=197e12, hbm_bytes_per_s=819 * GB, memory_bytes=16 * GB),
    "v5p": dict(peak_flops=459e12, hbm_bytes_per_s=2765 * GB, memory_bytes=95 * GB),
    "v6e": dict(peak_flops=918e12, hbm_bytes_per_s=1638 * GB, memory_bytes=32 * GB),
}
TARGETS = {t.name: t for t in [
    Target("tpu:v5e-1", "tpu", 1, "v5e:1x1", "default", (1, 1, 1), **_CHIPS["v5e"]),
    Target("tpu:v5e-8", "tpu", 8, "v5e:2x4", "default", (2, 4, 1), **_CHIPS["v5e"]),
    Target("tpu:v4-8", "tpu", 4, "v4:2x2x1", "megacore", (2, 2, 1), **_CHIPS["v4"]),
    Target("tpu:v5p-8", "tpu", 4, "v5p:2x2x1", "megacore", (2, 2, 1), **_CHIPS["v5p"]),
    Target("tpu:v6e-8", "tpu", 8, "v6e:2x4", "default", (2, 4, 1), **_CHIPS["v6e"]),
]}
KNOWN = ", ".join([*TARGETS, "cpu:N", "gpu"])
NO_GPU = ("--target=gpu: compiling for a GPU without one is not supported; on a machine "
          "with a GPU, benchmarks/gpu_check.sh measures the real step.")


def target(name: str) -> Target:
    """The Target named `name`; a UserError listing the known ones otherwise."""
    if name in TARGETS:
        return TARGETS[name]
    if name == "gpu":
        raise UserError(NO_GPU)
    if name.startswith("cpu:") and name[4:].isdigit() and int(name[4:]) > 0:
        # This host's CPU as N devices sharing its memory; no published peak.
        n = int(name[4:])
        return Target(name, "cpu", n, memory_bytes=os.sysconf("SC_PAGE_SIZE")
                      * os.sysconf("SC_PHYS_PAGES") // n)
    raise UserError(f"--target={name!r} is not a known target; known: {KNOWN}.")


@contextlib.contextmanager
def _quiet_stderr():
    """libtpu prints its start-up complaints of a host without TPU chips (no
    accelerator type, no worker names) straight to file descriptor 2; they
    say nothing about a compile-only topology. Any error still comes as an
    exception."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def devices(t: Target) -> list:
    """The target's devices: compile-only TPU devices from libtpu, or this
    host's CPU devices (set `jax_num_cpu_devices` before JAX starts)."""
    if t.platform == "cpu":
        found = jax.devices("cpu")
        if len(found) < t.devices:
            raise UserError(f"--target={t.name}: this process has {len(found)} CPU devices.")
        return found[:t.devices]
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        raise UserError(f"--target={t.name} needs libtpu, which is not installed: "
                        'pip install -e ".[tpu]"')
    from jax.experimental import topologies  # Loads libtpu: only for a TPU target.
    # A compile-only client uses no chip; without this, a second process
    # (another compile, a test worker) is refused libtpu's machine-wide lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _quiet_stderr():
            topo = topologies.get_topology_desc(
                topology_name=t.topology, platform="tpu", chip_config_name=t.chip_config,
                chips_per_host_bounds=t.chips_per_host)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--target={t.name}: libtpu cannot describe topology "
                        f"{t.topology!r}: {str(e).splitlines()[0]}") from e
    return list(topo.devices)


def batch_split(config, n_devices: int) -> tuple[int, int]:
    """(sequences per device per micro-batch, per device per eval batch)."""
    t = config.train
    if t.batch_size % (n_devices * t.grad_accum_steps):
        raise UserError(
            f"config.train.batch_size={t.batch_size} does not split evenly over the "
            f"target's {n_devices} device(s) x {t.grad_accum_steps} accumulation step(s); "
            f"use a multiple of {n_devices * t.grad_accum_steps}.")
    return t.batch_size // (n_devices * t.grad_accum_steps), t.batch_size // n_devices


class OutOfMemory(Exception):
    """XLA refused to compile `program` for the target: it needs more device
    memory than the target has. `message` is XLA's line, with its figures."""

    def __init__(self, program: str, message: str):
        super().__init__(f"the {program} does not fit: {message}")
        self.program, self.message = program, message


@dataclasses.dataclass
class Program:
    name: str
    compile_s: float
    cost: dict  # cost_analysis(): 'flops', 'bytes accessed', ...
    memory: object  # memory_analysis()
    hlo: str  # The optimised program, as text.
    loop_flops: float  # FLOPs the loop bodies add beyond their one counted run.
    loop_bytes: float
    trip_counts_known: bool
    hbm_bytes: float  # Bytes that cross HBM (hlo_cost, hbm=True), loops counted in full.
    # Kernels (Pallas calls) that declare no cost: XLA counts them as free,
    # so the program's FLOPs and bytes are unknown (None), never a low figure.
    undeclared_kernels: int = 0
    # CPU seconds of this process while compiling: on a shared machine the
    # wall seconds count other processes' turns too.
    compile_cpu_s: float = 0.0

    @property
    def flops(self) -> float | None:
        if self.undeclared_kernels:
            return None
        return float(self.cost.get("flops", 0.0)) + self.loop_flops

    @property
    def bytes(self) -> float | None:
        if self.undeclared_kernels:
            return None
        return float(self.cost.get("bytes accessed", 0.0)) + self.loop_bytes


def _loop_extra(comps: dict, runs: dict, per_instr) -> float:
    """What the loop bodies add beyond the one run XLA's totals count."""
    return sum((runs[c] - 1) * sum(per_instr(i, comps[c]) for i in comps[c].instrs)
               for c in runs if runs[c] > 1)


def compile_program(name: str, fn, *args) -> Program:
    """Lowers and compiles `fn` for `args` (shapes), with the loop corrections:
    matmul FLOPs (and kernels' declared ones) from the program before
    optimisation (its dots are plain), bytes from the optimised one (as
    XLA's own total)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    lowered = fn.lower(*args)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # A TPU compile checks the memory itself; that answer is the result.
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        line = str(e).split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0]
        raise OutOfMemory(name, line) from None
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    before = hlo_text.parse(lowered.as_text(dialect="hlo"))
    runs_before, known_before = hlo_cost.multiplicities(before)
    hlo = compiled.as_text()
    after = hlo_text.parse(hlo)
    runs_after, known_after = hlo_cost.multiplicities(after)
    return Program(
        name, seconds, dict(cost or {}), compiled.memory_analysis(), hlo,
        _loop_extra(before, runs_before,
                    lambda i, c: hlo_cost.dot_flops(i, c) + hlo_cost.kernel_flops(i)),
        _loop_extra(after, runs_after,
                    lambda i, c: hlo_cost.instruction_bytes(i, c, after)),
        known_before and known_after, hlo_cost.hbm_bytes(after, runs_after),
        hlo_cost.undeclared_kernels(after), cpu_seconds)


def _spec(tree, sharding):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def compile_steps(config: ml_collections.ConfigDict, vocab_size: int, t: Target,
                  eval_step: bool = True) -> dict:
    """Compiles the train step (and the eval step) of `config` for target `t`.
    Returns {'config', 'model' (resolved for the target), 'params' (count), 'state_bytes',
    'params_bytes' (per device: all of it replicated, 1/devices of it or so
    under fsdp), 'programs': [Program]}."""
    micro, eval_rows = batch_split(config, t.devices)
    found = devices(t)
    mesh = jax.sharding.Mesh(np.array(found), (parallel.AXIS,))
    m = model_config(config.model, vocab_size, t.platform)  # 'auto' for the target.
    tx, schedule = train.make_optimizer(config.train)
    shapes = jax.eval_shape(lambda: train.init_state(m, tx, config.seed))
    if config.parallel == "fsdp":
        s_train, s_eval = sharding.make_fsdp_steps(m, tx, schedule, config.seed, mesh, shapes)
        state = jax.tree_util.tree_map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            shapes, sharding.state_shardings(shapes, mesh))
    else:  # pmap's program is shard_map's: the state replicated on every device.
        s_train, s_eval = parallel.make_sharded_steps(m, tx, schedule, config.seed, mesh)
        state = _spec(shapes, jax.NamedSharding(mesh, jax.P()))
    split = jax.NamedSharding(mesh, jax.P(parallel.AXIS))
    T1 = m.block_size + 1
    batch = jax.ShapeDtypeStruct((t.devices, config.train.grad_accum_steps, micro, T1),
                                 jnp.int32, sharding=split)
    programs = [compile_program("train step", s_train, state, batch)]
    if eval_step:
        batches = jax.ShapeDtypeStruct((t.devices, 2 * config.train.eval_steps, eval_rows, T1),
                                       jnp.int32, sharding=split)
        programs.append(compile_program("eval step", s_eval, state.params, batches))
    return {"config": config, "model": m, "params": count_params(shapes.params),
            "state_bytes": sharding.per_device_bytes(state),
            "params_bytes": sharding.per_device_bytes(state.params), "programs": programs}


def compiled_as(kind: str) -> str:
    """The step that is compiled for config.parallel=`kind`: pmap's is
    shard_map's (the same per-device program over a replicated state; pmap
    itself cannot be lowered for devices that are not here)."""
    return "shard_map" if kind == "pmap" else kind


def needed_bytes(result: dict) -> float:
    """Device memory the run needs at its fullest, per device: the train
    step's arguments, outputs (less those written into donated arguments),
    temporaries and code; or the eval step's, with the train state that stays
    on the device meanwhile (its parameter argument is the state's own)."""
    def own(ma):
        return (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                + ma.temp_size_in_bytes + ma.generated_code_size_in_bytes)
    train_p, *rest = result["programs"]
    resident = result["state_bytes"] - result["params_bytes"]
    return max([own(train_p.memory)] + [own(p.memory) + resident for p in rest])


def refused(e: OutOfMemory, config: ml_collections.ConfigDict, t: Target) -> dict:
    """The `--json` object of a config XLA would not compile for lack of memory."""
    return {"target": t.name, "devices": t.devices, "parallel": config.parallel,
            "remat": resolve_remat(config.model.remat, t.platform, config.model.scan_layers),
            "fits": False,
            "device_memory_bytes": None if t.memory_bytes is None else int(t.memory_bytes),
            "out_of_memory": str(e)}


def summary(result: dict, t: Target) -> dict:
    """The figures for one target, per device and per train step (the keys of
    `--json`)."""
    train_p = result["programs"][0]
    c = result["config"]
    tokens = c.train.batch_size * c.model.block_size  # All devices together.
    flop_ms = (train_p.flops / t.peak_flops * 1e3
               if t.peak_flops and train_p.flops is not None else None)
    mem_ms = (train_p.bytes / t.hbm_bytes_per_s * 1e3
              if t.hbm_bytes_per_s and train_p.bytes is not None else None)
    hbm_ms = (train_p.hbm_bytes / t.hbm_bytes_per_s * 1e3
              if t.hbm_bytes_per_s and train_p.bytes is not None else None)
    bound = max(flop_ms or 0, mem_ms or 0)
    return {
        "target": t.name, "devices": t.devices, "parallel": c.parallel,
        "compiled_as": compiled_as(c.parallel),
        "remat": result["model"].remat,
        "fits": bool(t.memory_bytes is None or needed_bytes(result) <= t.memory_bytes),
        "device_memory_bytes": None if t.memory_bytes is None else int(t.memory_bytes),
        "state_bytes": result["state_bytes"],
        "temp_bytes": train_p.memory.temp_size_in_bytes,
        "flops_per_step": train_p.flops, "bytes_per_step": train_p.bytes,
        "flop_bound_ms": flop_ms, "memory_bound_ms": mem_ms,
        # What crosses HBM alone (XLA's bytes count VMEM and both ends of a copy too).
        "hbm_bytes_per_step": None if train_p.bytes is None else train_p.hbm_bytes,
        "hbm_bound_ms": hbm_ms,
        "tokens_per_s": tokens / bound * 1e3 if bound else None,
        "programs": len(result["programs"]),
        "compile_s": sum(p.compile_s for p in result["programs"]),
        "compile_cpu_s": sum(p.compile_cpu_s for p in result["programs"]),
        "xla_effort": xla_effort(),
    }


def xla_effort() -> dict[str, float | str]:
    """JAX's settings for how hard XLA works on a program, where they are not
    the defaults (JAX_EXEC_TIME_OPTIMIZATION_EFFORT, JAX_MEMORY_FITTING_EFFORT,
    JAX_OPTIMIZATION_LEVEL): less effort compiles a TPU step several times
    faster, but into another program (benchmarks/README.md), so its figures
    say so."""
    names = {"exec_time": "jax_exec_time_optimization_effort",
             "memory_fitting": "jax_memory_fitting_effort",
             "optimization_level": "jax_optimization_level"}
    # A JAX without one of them (jax 0.12 has only the level) compiles with its default.
    found = {k: getattr(jax.config, name, None) for k, name in names.items()}
    return {k: v if isinstance(v, float) else str(v) for k, v in found.items()
            if v not in (None, 0.0, "UNKNOWN")}
