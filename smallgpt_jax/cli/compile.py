"""Compile a config's train and eval steps for a machine that is not here, and
print what XLA estimates one step costs there (nothing runs).

    python -m smallgpt_jax.compile --config=configs/shakespeare_char.py
        --target=tpu:v5e-1 [--json] [--breakdown] [--config.model.dropout=0 ...]

Targets: tpu:v5e-1, tpu:v5e-8, tpu:v4-8, tpu:v5p-8, tpu:v6e-8 (compile-only
TPU devices from libtpu: pip install -e ".[tpu]"), cpu:N (this host's CPU as
N devices). 'auto' settings are resolved for the target.

Prints one table: programs compiled and seconds; parameters + optimizer state
and temporaries per device against the device's memory; FLOPs and bytes per
step and device (XLA's static estimates, loop bodies counted as many times as
they run); the step time the target's published peak FLOP/s and memory
bandwidth allow, and tokens/s from the larger of the two. --json prints the
same as one JSON object; --breakdown adds the operations that move the most
bytes (--breakdown_by=hbm: the most through HBM). Where JAX's effort settings
are not the defaults (JAX_EXEC_TIME_OPTIMIZATION_EFFORT, ...) the table and
`xla_effort` say so: XLA then compiles another program.
"""

from __future__ import annotations

import json
import os

from absl import flags

from smallgpt_jax.cli import app as cli
from smallgpt_jax.cli.config_files import define_config_flag
from smallgpt_jax.config import validate
from smallgpt_jax.system import runtime
from smallgpt_jax.system.errors import UserError

MiB = 2 ** 20


def _define_flags() -> None:
    define_config_flag()
    flags.DEFINE_string("target", None, "tpu:v5e-1, tpu:v5e-8, tpu:v4-8, tpu:v5p-8, "
                        "tpu:v6e-8, cpu:N or gpu.")
    flags.DEFINE_boolean("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_boolean("breakdown", False, "Add the operations that move the most bytes.")
    flags.DEFINE_enum("breakdown_by", "xla", ["xla", "hbm"], "Rank --breakdown's operations "
                      "by XLA's bytes or by the bytes that cross HBM.")
    flags.DEFINE_integer("vocab_size", 65, "Vocabulary size V for a 'char' tokenizer "
                         "(65: the characters of Tiny Shakespeare).")


def _ms(x, unknown: str = "no published peak") -> str:
    return f"unknown ({unknown})" if x is None else f"{x:,.2f} ms"


def table(s: dict, result: dict, t) -> str:
    """The figures of aot.summary as a Markdown table."""
    from smallgpt_jax.analysis import aot  # Imports JAX: see main().
    m, c = result["model"], result["config"]
    progs = result["programs"]
    peaks = (f"published peaks per device: {t.peak_flops / 1e12:,.0f} TFLOP/s bf16, "
             f"{t.hbm_bytes_per_s / 1e9:,.0f} GB/s" if t.peak_flops else "no published peaks")
    needed = aot.needed_bytes(result)
    memory = s["device_memory_bytes"]
    room = (f"of {memory / MiB:,.0f} MiB: " + (f"fits, {(memory - needed) / MiB:,.0f} MiB free"
            if s["fits"] else f"does NOT fit, {(needed - memory) / MiB:,.0f} MiB short"))
    loops = progs[0].loop_flops or progs[0].loop_bytes
    why = (f"{progs[0].undeclared_kernels} kernel call(s) declare no cost"
           if progs[0].undeclared_kernels else "no published peak")
    rows = [
        ("target", f"{t.name}: {t.devices} device(s); {peaks}"),
        ("settings", f"parallel {c.parallel}"
                     + (f" (compiled as {s['compiled_as']})" if s["compiled_as"] != c.parallel
                        else "") + f", remat {m.remat}, dtype {m.dtype}, "
                     f"fast_backward {m.fast_backward}, attention {m.attention}, scan_layers "
                     f"{m.scan_layers}, dropout {m.dropout}; {result['params']:,} parameters"
                     + "".join(f"; XLA {k.replace('_', ' ')} {v} (not the default: "
                               "another program)" for k, v in s["xla_effort"].items())),
        ("batch", f"{c.train.batch_size} x {m.block_size} tokens per step, "
                  f"{c.train.batch_size // t.devices} sequences per device"),
        ("programs", f"{s['programs']} compiled in {s['compile_s']:.1f} s, "
                     f"{s['compile_cpu_s']:.1f} CPU-s (" + ", ".join(
                         f"{p.name} {p.compile_s:.1f} s, {p.compile_cpu_s:.1f} CPU-s"
                         for p in progs) + ")"),
        ("state / device", f"{s['state_bytes'] / MiB:,.1f} MiB (parameters + optimizer"
                           + (", split over the devices)" if c.parallel == "fsdp" else ")")),
        ("temporaries / device", f"{s['temp_bytes'] / MiB:,.1f} MiB (train step)"),
        ("memory / device", f"{needed / MiB:,.0f} MiB at the fullest " + room),
        ("FLOPs / step / device", f"unknown ({why})" if s["flops_per_step"] is None
         else f"{s['flops_per_step'] / 1e9:,.1f} GFLOP"),
        ("bytes / step / device", f"unknown ({why})" if s["bytes_per_step"] is None
         else f"{s['bytes_per_step'] / 1e9:,.2f} GB (XLA's bytes accessed: "
              "every operand and output, on-chip ones included)"),
        ("HBM bytes / step / device", f"unknown ({why})" if s["bytes_per_step"] is None
         else f"{s['hbm_bytes_per_step'] / 1e9:,.2f} GB (those in "
              "device memory only, each array once per reader)"),
        ("FLOP-bound step", _ms(s["flop_bound_ms"], why)),
        ("memory-bound step", _ms(s["memory_bound_ms"], why) + " (XLA's bytes); "
         + _ms(s["hbm_bound_ms"], why) + " (HBM bytes)"),
        ("tokens/s", "unknown" if s["tokens_per_s"] is None
         else f"{s['tokens_per_s']:,.0f} (all devices, from the larger bound, XLA's bytes)"),
    ]
    if loops:
        rows.append(("loops", f"bodies counted once by XLA, here times their runs: "
                              f"+{progs[0].loop_flops / 1e9:,.1f} GFLOP (matmuls), "
                              f"+{progs[0].loop_bytes / 1e9:,.2f} GB"
                     + ("" if progs[0].trip_counts_known
                        else "; a trip count was not found: lower bounds")))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines + ["", "XLA's static estimates for the target, not measurements."])


def breakdown(program, top: int = 20, by: str = "xla") -> str:
    """The operations of `program` that move the most bytes (XLA's count, or
    `by='hbm'` those that cross HBM), and how their sum compares with XLA's
    own total."""
    from smallgpt_jax.analysis import hlo_breakdown  # With aot, after main()'s settings.
    groups = hlo_breakdown.contributors(program.hlo)
    total = sum(g["bytes"] for g in groups)
    padded = sum(g["padded_bytes"] for g in groups)
    ranked = groups if by == "xla" else sorted(groups, key=lambda g: -g["hbm_bytes"])
    largest = "the largest" if by == "xla" else "those crossing HBM most"
    lines = [f"Bytes per step of the {program.name}, by operation ({largest} {top}):", "",
             "| GB | share | HBM GB | runs | op | instruction | output | largest array | padded x |",
             "|---:|---:|---:|---:|---|---|---|---|---:|"]
    for g in ranked[:top]:
        lines.append(f"| {g['bytes'] / 1e9:,.3f} | {g['bytes'] / total:.1%} | "
                     f"{g['hbm_bytes'] / 1e9:,.3f} | {g['count']} | "
                     f"`{g['op'] or '-'}` | {g['kind']} | {g['shape']} | {g['largest']} | "
                     f"{g['padded_bytes'] / g['bytes']:.2f} |")
    copies = sum(g["bytes"] for g in groups if g["kind"].split("-")[0] in ("copy", "slice"))
    by_dtype: dict[str, float] = {}
    for g in groups:
        by_dtype[g["dtype"]] = by_dtype.get(g["dtype"], 0.0) + g["bytes"]
    xla = ("unknown (a kernel declares no cost)" if program.bytes is None else
           f"{program.bytes / 1e9:,.2f} GB (the sum is {total / program.bytes:.0%} of it)")
    lines += ["", f"Sum over all {len(groups)} groups: {total / 1e9:,.2f} GB "
              f"({padded / 1e9:,.2f} GB with layouts padded to their tiles); XLA's "
              f"bytes accessed: {xla}. Copies (on TPU most between HBM and "
              f"on-chip VMEM, counted at their start and end as XLA does): "
              f"{copies / 1e9:,.2f} GB. Crossing HBM (each array once per reader or "
              f"writer, a copy at its HBM end): {program.hbm_bytes / 1e9:,.2f} GB.",
              "By output dtype: " + ", ".join(
                  f"{d} {b / 1e9:,.2f} GB" for d, b in sorted(by_dtype.items(),
                                                             key=lambda x: -x[1]))]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    FLAGS = flags.FLAGS
    # The host runs no step: its own accelerator (or libtpu's search for one)
    # is not needed, and TPU targets are compile-only devices anyway.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    runtime.setup_process()
    with cli.user_errors():
        if FLAGS.target is None:
            raise UserError("--target is required: tpu:v5e-1, tpu:v5e-8, tpu:v4-8, "
                            "tpu:v5p-8, tpu:v6e-8, cpu:N or gpu.")
        if FLAGS.json and FLAGS.breakdown:
            raise UserError("--breakdown adds to the table; it does not go with --json.")
        if FLAGS.breakdown_by != "xla" and not FLAGS.breakdown:
            raise UserError("--breakdown_by ranks --breakdown's operations: add --breakdown.")
        import jax  # After setup_process, as every command (docs/architecture.md).
        from smallgpt_jax.analysis import aot
        from smallgpt_jax.cli import shapes
        t = aot.target(FLAGS.target)
        if t.platform == "cpu":
            jax.config.update("jax_num_cpu_devices", t.devices)
        config = FLAGS.config
        validate(config, machine=False)  # The target's memory is what counts, not this host's.
        try:
            result = aot.compile_steps(config, shapes.vocab_size(config.data, FLAGS.vocab_size),
                                       t)
        except aot.OutOfMemory as e:  # An answer, not an error: it does not fit.
            no = aot.refused(e, config, t)
            print(json.dumps(no) if FLAGS.json
                  else f"{t.name}, parallel {config.parallel}, remat {no['remat']}: "
                       f"does NOT fit; XLA: {e}")
            return
        s = aot.summary(result, t)
    if FLAGS.json:
        print(json.dumps(s))
        return
    print(table(s, result, t))
    if FLAGS.breakdown:
        print()
        print(breakdown(result["programs"][0], by=FLAGS.breakdown_by))


def run() -> None:
    _define_flags()
    flags.mark_flag_as_required("config")
    cli.run_app(main)


if __name__ == "__main__":
    cli.quiet_ctrl_c()
    run()
