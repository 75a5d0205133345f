"""The compile check (analysis/aot.py, analysis/hlo_cost.py, `python -m smallgpt_jax.compile`):
the real steps compiled for a TPU topology on this CPU, with libtpu's
compile-only devices. Those tests skip where libtpu is not installed; the
one-line errors are checked everywhere."""

import importlib.util
import json
import re

import pytest

from conftest import run_cli, tiny_config
from smallgpt_jax.analysis import aot, hlo_breakdown, hlo_cost, hlo_text
from smallgpt_jax.system.errors import UserError

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason='no libtpu: pip install -e ".[tpu]" to compile for TPU targets')
KEYS = {"target", "devices", "fits", "device_memory_bytes", "state_bytes", "temp_bytes",
        "flops_per_step", "bytes_per_step", "flop_bound_ms", "memory_bound_ms",
        "tokens_per_s", "programs", "compile_s", "parallel", "compiled_as", "remat",
        "hbm_bytes_per_step", "hbm_bound_ms", "compile_cpu_s", "xla_effort"}
V5E = aot.target("tpu:v5e-1")
TINY = ["--config=configs/char_cpu.py", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.model.embed_dim=32",
        "--config.model.block_size=16", "--config.train.batch_size=8",
        "--config.train.eval_steps=2"]


def compile_cli(*args):
    return run_cli([*TINY, *args], module="smallgpt_jax.compile")


def analytic_flops(c, n_params: int) -> float:
    """6 N per token for the weights (forward and backward), and 12 L T D per
    token for the attention scores and their use."""
    m, tokens = c.model, c.train.batch_size * c.model.block_size
    return tokens * (6 * n_params + 12 * m.num_layers * m.block_size * m.embed_dim)


@pytest.fixture(scope="module")
def unrolled():
    return aot.compile_steps(tiny_config(), 65, V5E)


@needs_libtpu
def test_a_tiny_model_compiles_for_a_v5e_and_fits(unrolled):
    s = aot.summary(unrolled, V5E)
    assert set(s) == KEYS and s["programs"] == 2 and s["compile_s"] > 0
    assert s["compile_cpu_s"] > 0
    assert s["fits"] and s["devices"] == 1 and s["device_memory_bytes"] == 16e9
    # bfloat16 compute and the plain kernels: 'auto' resolved for the TPU, not this CPU.
    assert unrolled["model"].dtype == "bfloat16"
    assert unrolled["model"].fast_backward == "off"
    # Parameters and AdamW's two moments, float32.
    assert s["state_bytes"] >= 3 * 4 * unrolled["params"]
    analytic = analytic_flops(unrolled["config"], unrolled["params"])
    assert analytic / 2 < s["flops_per_step"] < 2 * analytic
    assert s["bytes_per_step"] > 0 and s["memory_bound_ms"] > 0
    # What crosses HBM is part of what XLA counts (which adds VMEM and both ends of copies).
    assert 0 < s["hbm_bytes_per_step"] < s["bytes_per_step"]
    assert s["hbm_bound_ms"] == pytest.approx(s["hbm_bytes_per_step"] / 819e9 * 1e3)
    assert s["tokens_per_s"] == pytest.approx(
        8 * 16 / max(s["flop_bound_ms"], s["memory_bound_ms"]) * 1e3)


@needs_libtpu
def test_scanned_layers_are_counted_once_per_layer(unrolled):
    """XLA's cost analysis counts a loop body once; the figures times the trip
    count come close to the same model compiled unrolled."""
    scanned = aot.compile_steps(tiny_config(**{"model.scan_layers": True}), 65, V5E,
                                eval_step=False)["programs"][0]
    flat = unrolled["programs"][0]
    assert scanned.trip_counts_known and scanned.loop_flops > 0
    raw = scanned.cost["flops"]
    assert raw < 0.8 * flat.flops  # What the correction is for.
    assert scanned.flops == pytest.approx(flat.flops, rel=0.15)
    assert scanned.bytes == pytest.approx(flat.bytes, rel=0.3)


@needs_libtpu
def test_the_breakdown_adds_up_to_about_xla_bytes(unrolled):
    from smallgpt_jax.cli.compile import breakdown
    program = unrolled["programs"][0]
    groups = hlo_breakdown.contributors(program.hlo)
    assert groups and groups[0]["bytes"] >= groups[-1]["bytes"] > 0
    assert any("attn" in g["op"] for g in groups)
    padded = sum(g["padded_bytes"] for g in groups)
    assert 0.3 < padded / program.bytes < 3
    text = breakdown(program)
    assert "XLA's bytes accessed" in text and text.count("\n| ") >= 10


@needs_libtpu
def test_the_breakdown_ranks_by_hbm_bytes_when_asked(unrolled):
    from smallgpt_jax.cli.compile import breakdown
    program = unrolled["programs"][0]
    groups = hlo_breakdown.contributors(program.hlo)
    by_hbm = sorted(groups, key=lambda g: -g["hbm_bytes"])[:8]
    assert by_hbm[0]["hbm_bytes"] > 0 and by_hbm[:3] != groups[:3]  # Another order.
    text = breakdown(program, top=8, by="hbm")
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")][1:]
    assert [(r[5].strip(" `"), r[6].strip()) for r in rows] == [
        (g["op"], g["kind"]) for g in by_hbm]
    assert "those crossing HBM most 8" in text


@needs_libtpu
def test_less_xla_effort_counts_fewer_bytes_but_moves_more_through_hbm(unrolled):
    """JAX_OPTIMIZATION_LEVEL=O1 (as JAX_EXEC_TIME_OPTIMIZATION_EFFORT=-1)
    compiles a TPU step without keeping arrays in on-chip memory: XLA's bytes
    accessed (which count that memory's traffic too) go down while the bytes
    through HBM, which the bandwidth limits, go up. The figures say the
    setting was not the default."""
    import jax
    from smallgpt_jax.cli.compile import table
    jax.config.update("jax_optimization_level", "O1")
    try:
        low = aot.compile_steps(tiny_config(), 65, V5E, eval_step=False)
        s_low = aot.summary(low, V5E)
    finally:
        jax.config.update("jax_optimization_level", "UNKNOWN")
    s = aot.summary(unrolled, V5E)
    assert s["xla_effort"] == {} and s_low["xla_effort"] == {"optimization_level": "O1"}
    assert s_low["bytes_per_step"] < s["bytes_per_step"]
    assert s_low["hbm_bytes_per_step"] > 2 * s["hbm_bytes_per_step"]
    assert "XLA optimization level O1 (not the default: another program)" in table(
        s_low, low, V5E)
    assert "XLA optimization level" not in table(s, unrolled, V5E)


@needs_libtpu
def test_the_command_prints_one_json_object():
    proc = compile_cli("--target=tpu:v5e-1", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    assert set(s) == KEYS and s["target"] == "tpu:v5e-1" and s["fits"] is True


@needs_libtpu
def test_an_older_commits_step_is_counted_with_todays_counter():
    """benchmarks/compile_at_commit.py runs a commit's own compile check and
    counts its train step again; for HEAD the count is the check's own."""
    proc = run_cli(["--commit=HEAD", "--", *TINY, "--target=tpu:v5e-1", "--json"],
                   module="benchmarks.compile_at_commit")
    assert proc.returncode == 0, proc.stderr[-2000:]
    own, counted = proc.stdout.strip().splitlines()[-3], proc.stdout.strip().splitlines()[-1]
    hbm = float(re.search(r"([\d.e-]+) GB crossing HBM", counted).group(1))
    assert "train step of HEAD" in counted
    assert hbm == pytest.approx(json.loads(own)["hbm_bytes_per_step"] / 1e9, rel=1e-3)


def test_fsdp_compiles_with_an_eighth_of_the_state_per_device():
    """On 8 CPU devices (no libtpu needed): the state XLA is given per device
    under fsdp is about 1/8 of the replicated one."""
    out = {}
    for parallel in ("shard_map", "fsdp"):
        proc = compile_cli("--target=cpu:8", "--json", f"--config.parallel={parallel}",
                           "--config.model.embed_dim=64")
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[parallel] = json.loads(proc.stdout)
    assert out["fsdp"]["parallel"] == "fsdp" and out["fsdp"]["remat"] == "none"
    ratio = out["fsdp"]["state_bytes"] / out["shard_map"]["state_bytes"]
    assert 1 / 8 <= ratio < 1.1 / 8, ratio


def test_pmap_says_it_was_compiled_as_shard_map():
    """pmap cannot be lowered for devices that are not here: its step is
    compiled as shard_map's, and the JSON and the table say so."""
    from smallgpt_jax.cli.compile import table
    t = aot.target("cpu:1")
    result = aot.compile_steps(tiny_config(parallel="pmap"), 65, t, eval_step=False)
    s = aot.summary(result, t)
    assert s["parallel"] == "pmap" and s["compiled_as"] == "shard_map"
    assert "parallel pmap (compiled as shard_map)" in table(s, result, t)
    assert aot.compiled_as("shard_map") == "shard_map" and aot.compiled_as("fsdp") == "fsdp"


def test_trip_counts_are_read_from_a_loop_condition():
    text = """HloModule m
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  ROOT %t = (s32[], f32[4]) tuple(%i, %x)
}
%cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(6)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %w = (s32[], f32[4]) while(%init), condition=%cond, body=%body
  ROOT %e = f32[4]{0} exponential(%a)
}
"""
    comps = hlo_text.parse(text)
    runs, known = hlo_cost.multiplicities(comps)
    assert known and runs == {"main": 1, "body": 6, "cond": 6}
    main = comps["main"]
    assert hlo_cost.instruction_bytes(main.by_name["e"], main, comps) == 32


def test_a_scan_step_reads_and_writes_one_row_of_its_stacked_arrays():
    """In a loop body, a fusion that writes row i of a stacked [L, ...] result
    in place, or reads row i of stacked weights, moves that row, not the stack."""
    text = """HloModule m
%put (p0: f32[6,4], p1: f32[1,4], p2: s32[]) -> (f32[6,4], f32[1,4]) {
  %p0 = f32[6,4]{1,0} parameter(0)
  %p1 = f32[1,4]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %d = f32[6,4]{1,0} dynamic-update-slice(%p0, %p1, %p2, %z)
  %n = f32[1,4]{1,0} negate(%p1)
  ROOT %t = (f32[6,4]{1,0}, f32[1,4]{1,0}) tuple(%d, %n)
}
%take (p0: f32[6,4], p1: s32[]) -> f32[1,4] {
  %p0 = f32[6,4]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %v = f32[6,4]{1,0} bitcast(%p0)
  ROOT %s = f32[1,4]{1,0} dynamic-slice(%v, %p1, %z), dynamic_slice_sizes={1,4}
}
ENTRY %main (a: f32[6,4], b: f32[1,4], i: s32[]) -> f32[6,4] {
  %a = f32[6,4]{1,0} parameter(0)
  %b = f32[1,4]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %row = f32[1,4]{1,0} fusion(%a, %i), kind=kLoop, calls=%take
  ROOT %new = (f32[6,4]{1,0}, f32[1,4]{1,0}) fusion(%a, %b, %i), kind=kLoop, calls=%put
}
"""
    comps = hlo_text.parse(text)
    main = comps["main"]
    # Row (16 bytes) and index (4) read, row written: not the 96-byte stack.
    assert hlo_cost.instruction_bytes(main.by_name["row"], main, comps) == 16 + 4 + 16
    # Beside its in-place row, this fusion writes a second output of 16 bytes.
    assert hlo_cost.instruction_bytes(main.by_name["new"], main, comps) == 16 + 4 + 16 + 16


def test_a_group_names_the_largest_array_it_reads_or_writes():
    """A softmax's row sums come out small; the breakdown names the [.., T, S]
    array the fusion reads, the one that sets its bytes."""
    text = """HloModule m
%sums (p0: f32[2,8,8]) -> f32[2,8] {
  %p0 = f32[2,8,8]{2,1,0} parameter(0)
  %z = f32[] constant(0)
  ROOT %r = f32[2,8]{1,0} reduce(%p0, %z), dimensions={2}, to_apply=%add
}
ENTRY %main (a: f32[2,8,8]) -> f32[2,8] {
  %a = f32[2,8,8]{2,1,0} parameter(0)
  ROOT %s = f32[2,8]{1,0} fusion(%a), kind=kInput, calls=%sums, metadata={op_name="jit(f)/reduce_sum"}
}
"""
    (group,) = hlo_breakdown.contributors(text)
    assert group["shape"] == "f32[2,8]" and group["largest"] == "in f32[2,8,8]"
    assert group["bytes"] == 4 * (2 * 8 * 8 + 2 * 8)


def test_an_async_copy_counts_at_its_start_and_its_end_as_xla_does():
    """XLA's total counts an async copy's bytes twice (start and done); the
    breakdown names both by the operation whose output they copy."""
    text = """HloModule m
ENTRY %main (a: bf16[64,128]) -> bf16[64,128] {
  %a = bf16[64,128]{1,0} parameter(0)
  %e = bf16[64,128]{1,0} exponential(%a), metadata={op_name="jit(f)/exp"}
  %copy-start.1 = (bf16[64,128]{1,0:S(1)}, bf16[64,128]{1,0}, u32[]) copy-start(%e)
  ROOT %copy-done.1 = bf16[64,128]{1,0:S(1)} copy-done(%copy-start.1)
}
"""
    groups = {g["kind"]: g for g in hlo_breakdown.contributors(text)}
    size = 64 * 128 * 2
    assert groups["copy-start"]["bytes"] == groups["copy-done"]["bytes"] == 2 * size
    assert groups["copy-done"]["op"] == groups["copy-start"]["op"] == "jit(f)/exp"


def test_errors_are_one_line(tmp_path):
    for args, message in [(["--target=tpu:v9-1"], "known: tpu:v5e-1"),
                          (["--target=gpu"], "a GPU without one is not supported"),
                          (["--target=tpu:v4-8", "--config.train.batch_size=6"],
                           "does not split evenly over the target's 4 device(s)"),
                          (["--target=cpu:1", "--breakdown_by=hbm"], "add --breakdown")]:
        proc = compile_cli(*args)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and message in err and len(err.splitlines()) == 1, err


def test_targets():
    assert aot.target("tpu:v4-8").devices == 4  # Four chips, one device each (megacore).
    cpu = aot.target("cpu:4")
    assert cpu.devices == 4 and cpu.peak_flops is None and cpu.memory_bytes > 0
    with pytest.raises(UserError, match="known: tpu:v5e-1, tpu:v5e-8, tpu:v4-8"):
        aot.target("cpu:0")


def test_a_missing_libtpu_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    with pytest.raises(UserError, match=r'pip install -e "\.\[tpu\]"'):
        aot.devices(V5E)


@needs_libtpu
def test_a_step_too_big_for_the_chip_is_a_no_with_xlas_figures():
    """libtpu refuses to compile a program that does not fit the chip; that is
    the answer (exit 0), with XLA's own figures, not a traceback."""
    # The explicit attention: its [B, H, T, T] arrays do not fit (the flash
    # kernel, the default on a TPU, keeps them on chip and would fit).
    proc = compile_cli("--target=tpu:v5e-1", "--json", "--config.model.attention=explicit",
                       "--config.model.block_size=1024",
                       "--config.model.embed_dim=128", "--config.model.num_heads=4",
                       "--config.model.num_layers=4", "--config.train.batch_size=512",
                       "--config.train.eval_steps=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    assert s["fits"] is False and s["remat"] == "none"
    assert s["out_of_memory"].startswith("the train step does not fit: ")
    assert "exceeds available HBM" in s["out_of_memory"], s


def test_a_kernel_counts_what_it_declares_and_one_that_declares_nothing_is_unknown():
    """A Pallas call is a custom call XLA cannot look into: its declared
    cost (pl.CostEstimate) is what counts, read from either way XLA prints
    it (the program before optimisation spreads it over lines); a kernel
    without one makes the step's FLOPs and bytes unknown, not 0."""
    call = ('%k = f32[8,128]{1,0} custom-call(%a), custom_call_target="tpu_custom_call", '
            'backend_config={"custom_call_config":{"body":"TUzv",')
    optimised = call + ('"cost_estimate":{"flops":"5000","transcendentals":"7",'
                        '"bytes_accessed":"9000","remote_bytes_transferred":"0"}}}')
    before = call + ('"cost_estimate": {\n"bytes_accessed":9000,\n"flops":5000,\n'
                     '"transcendentals":7\n}, "serialization_format": 1}}')
    silent = call + '"serialization_format": 1}}'
    text = lambda body: ("HloModule m\nENTRY %main (a: f32[8,128]) -> f32[8,128] {\n"
                         "  %a = f32[8,128]{1,0} parameter(0)\n  ROOT " + body + "\n}\n")
    for body in (optimised, before):
        comps = hlo_text.parse(text(body))
        main = comps["main"]
        k = main.by_name["k"]
        assert hlo_cost.declared_cost(k) == {"flops": 5000, "transcendentals": 7,
                                             "bytes_accessed": 9000}
        assert hlo_cost.kernel_flops(k) == 5000
        assert hlo_cost.instruction_bytes(k, main, comps) == 9000
        assert hlo_cost.undeclared_kernels(comps) == 0
    comps = hlo_text.parse(text(silent))
    assert hlo_cost.declared_cost(comps["main"].by_name["k"]) is None
    assert hlo_cost.undeclared_kernels(comps) == 1
    program = aot.Program("train step", 1.0, {"flops": 0.0, "bytes accessed": 8192.0}, None,
                          text(silent), 0.0, 0.0, True, 8192.0, undeclared_kernels=1)
    assert program.flops is None and program.bytes is None


def test_the_breakdown_names_what_remat_recomputes():
    path = "jit(train_body)/transpose(jvp(GPT))/block_3/jvp(GPT)/block_3/checkpoint/{}mlp/fc/dot_general"
    assert hlo_breakdown._short(path.format("rematted_computation/")) == (
        "recomputed/block_*/mlp/fc/dot_general")
    assert hlo_breakdown._short(path.format("")) == "backward/block_*/mlp/fc/dot_general"
    assert hlo_breakdown._short("jit(train_body)/jvp(GPT)/block_0/mlp/fc/dot_general") == (
        "forward/block_*/mlp/fc/dot_general")
