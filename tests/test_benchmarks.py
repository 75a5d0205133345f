"""The train-step benchmark: its FLOP count, its PyTorch twin, and one tiny run."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import run_cli, tiny_config

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # benchmarks/ is a top-level folder, not part of the package.
    sys.path.insert(0, _ROOT)

from benchmarks import train_step  # noqa: E402
from smallgpt_jax.model import GPT, count_params, model_config  # noqa: E402

V = 65


def params_of(config):
    cfg = model_config(config.model, V)
    return cfg, GPT(cfg).init(jax.random.key(0), jax.numpy.zeros((1, cfg.block_size), int))["params"]


def test_flops_per_token_is_6n_plus_attention():
    c = tiny_config()
    cfg, params = params_of(c)
    n = train_step.matmul_params(params, cfg)
    L, D, T = cfg.num_layers, cfg.embed_dim, cfg.block_size
    assert n == count_params(params) - T * D  # All but the position table.
    assert train_step.flops_per_token(n, cfg) == 6 * n + 12 * L * D * T
    c.model.tie_embeddings = False  # The input table then does no matmul work.
    cfg, params = params_of(c)
    assert train_step.matmul_params(params, cfg) == count_params(params) - T * D - V * D


@pytest.mark.parametrize("bias", [True, False])
def test_torch_reference_is_the_same_model(bias):
    """Same parameter count as our GPT with the same switches, and the same FLOPs."""
    torch_reference = pytest.importorskip("benchmarks.torch_reference")
    c = tiny_config(**{"model.use_bias": bias})
    cfg, params = params_of(c)
    m = c.model
    ref = torch_reference.GPT(torch_reference.GPTConfig(
        m.num_layers, m.num_heads, m.embed_dim, m.block_size, V, bias=bias))
    assert ref.num_params() == count_params(params)
    if not bias:  # torch_reference's own formula counts the bias-free model.
        _, info = torch_reference.make_torch_train_step(
            m.num_layers, m.num_heads, m.embed_dim, m.block_size, V, 4, bias=bias,
            num_threads=1)
        per_token = train_step.flops_per_token(train_step.matmul_params(params, cfg), cfg)
        assert info["flops_per_step"] == per_token * 4 * m.block_size


def test_configs_the_reference_cannot_mirror_are_named():
    assert train_step.torch_mismatch(tiny_config()) is None
    assert "activation" in train_step.torch_mismatch(tiny_config(**{"model.activation": "relu"}))
    assert "norm_position" in train_step.torch_mismatch(
        tiny_config(**{"model.norm_position": "post"}))
    assert "grad_accum" in train_step.torch_mismatch(tiny_config(**{"train.grad_accum_steps": 2}))


def test_benchmark_runs_and_reports(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    proc = run_cli(["--config=configs/char_cpu.py", "--config.model.num_layers=1",
                    "--config.model.embed_dim=32", "--config.model.num_heads=2",
                    "--config.model.block_size=16", "--config.train.batch_size=4",
                    "--warmup=1", "--repeats=2", "--rounds=2", "--peak_flops=1e11",
                    f"--json_out={out}"], module="benchmarks.train_step")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step time, median (ms)" in proc.stdout
    record = json.loads(out.read_text())
    assert record == json.loads(proc.stdout.split("JSON ", 1)[1])
    j, t = record["jax"], record["torch"]
    assert len(j["times_s"]) == len(t["times_s"]) == 2
    assert j["compile_s"] > 0 and j["median_s"] > 0 and t["median_s"] > 0
    assert j["tokens_per_s"] == pytest.approx(4 * 16 / j["median_s"])
    assert j["mfu"] == pytest.approx(record["flops_per_token"] * j["tokens_per_s"] / 1e11)
    assert record["speedup"] == pytest.approx(t["median_s"] / j["median_s"])
    assert t["num_params"] == record["num_params"] + 16 * 32  # Plus its position table.
    assert j["peak_host_bytes"] > 0 and t["peak_host_bytes"] > 0


def test_the_bare_step_waits_once_per_round_not_after_every_step():
    """A wait (or a read of the loss) after every step added a dispatch and a
    sync to each, which the loop does not pay: n steps go out back to back."""
    events = []

    class Loss:  # Stands for a device value: records how it is waited for.
        def block_until_ready(self):
            events.append("wait")
            return self

        def __array__(self, *args, **kwargs):
            events.append("read")
            return np.zeros(1, np.float32)

    def step(state, batch):
        events.append("dispatch")
        return state + 1, {"loss": Loss()}

    bare = train_step.JaxStep.__new__(train_step.JaxStep)  # No compile: the step is a stand-in.
    bare.state, bare.batch, bare.compiled = 0, None, step
    bare.cpu_times, bare.faults, bare.timed_steps = [], 0, 0
    times = bare.run(5)
    assert events == ["dispatch"] * 5 + ["wait"] and bare.state == 5
    assert len(times) == 1 and times[0] > 0 and bare.timed_steps == 5
    assert "no per-step sync" in train_step.TIMING


def test_bad_config_value_is_one_line():
    proc = run_cli(["--config=configs/char_cpu.py", "--config.model.norm=batchnorm",
                    "--skip_torch", "--repeats=1"], module="benchmarks.train_step")
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: config.model.norm")
    assert "Traceback" not in proc.stderr


def test_device_peaks_come_from_the_device_kind():
    from types import SimpleNamespace as Dev
    from benchmarks.peak import device_peak_flops
    h100 = Dev(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    assert device_peak_flops(h100, "bfloat16") == 989.5e12
    assert device_peak_flops(h100, "float32") == 494.5e12  # TF32 tensor cores
    assert device_peak_flops(h100, "float32", fast_f32_matmul=False) == 67e12
    assert device_peak_flops(Dev(platform="gpu", device_kind="Unknown GPU"), "float32") is None
    tpu = Dev(platform="tpu", device_kind="TPU v5 lite")
    assert device_peak_flops(tpu, "bfloat16") == 197e12
    assert device_peak_flops(tpu, "float32", fast_f32_matmul=False) is None


def test_cpu_peak_is_the_fastest_call(monkeypatch):
    # Every timed call of the second library takes 1 s and of the first 2 s:
    # the peak is 2 n^3 FLOPs over the fastest call.
    from benchmarks import peak
    clock = iter(x for i in range(100) for x in (10.0 * i, 10.0 * i + (2.0 if i < 3 else 1.0)))
    monkeypatch.setattr(peak.time, "perf_counter", lambda: next(clock))
    assert peak.measure_cpu_matmul_peak(n=8, repeats=3) == 2 * 8 ** 3 / 1.0


def test_profile_categories_come_from_the_source_of_each_operation():
    from benchmarks import profile_step
    hlo = "\n".join([
        '  %fusion.1 = f32[8,512]{1,0} fusion(%a, %b), kind=kCustom, '
        'metadata={op_name="jit(_fun)/jvp(GPT)/block_0/mlp/fc/dot_general"}',
        '  %dot.2 = f32[2,4,8,8]{3,2,1,0} dot(%q, %k), '
        'metadata={op_name="jit(_fun)/jvp(GPT)/block_0/attn/bthk,bshk->bhts/dot_general"}',
        '  %fusion.3 = f32[2,4,8,8]{3,2,1,0} fusion(%s), kind=kLoop, '
        'metadata={op_name="jit(_fun)/jvp(GPT)/block_0/attn/exp"}',
        '  %fusion.4 = f32[2,8,32]{2,1,0} fusion(%x), kind=kLoop, '
        'metadata={op_name="jit(_fun)/jvp(GPT)/block_0/attn/Dropout_0/select_n"}',
        '  %copy.5 = f32[32,8]{1,0} copy(%p)',
        '  %fusion.6 = f32[32]{0} fusion(%m, %v), kind=kLoop, '
        'metadata={op_name="jit(_fun)/add"}',
    ])
    sources = profile_step.op_sources(hlo)
    got = {name: profile_step.category(name, sources) for name in sources}
    assert got == {"fusion.1": "dense-layer matmuls", "dot.2": "attention matmuls",
                   "fusion.3": "attention softmax and mask",
                   "fusion.4": "dropout (random bits, masks)",
                   "copy.5": "LayerNorm, MLP element-wise, layout copies",
                   "fusion.6": "optimizer and clipping"}
    assert set(got.values()) <= set(profile_step.CATEGORIES)


def test_profile_reads_operations_with_tuple_results():
    # A multi-output fusion's type is a tuple; its time must not be dropped.
    from benchmarks import profile_step
    lines = ('  %fusion.7 = (f32[4,128]{1,0}, f32[128]{0}) fusion(%a), kind=kLoop, '
             'metadata={op_name="jit(_fun)/jvp(GPT)/block_0/norm1/reduce_sum"}\n'
             # A loop's body operations are timed on their own: not the loop too.
             '  %while.8 = (s32[], u32[4]{0}) while(%tuple.1), condition=%c, body=%b')
    assert profile_step.op_sources(lines) == {
        "fusion.7": (False, "jit(_fun)/jvp(GPT)/block_0/norm1/reduce_sum")}


def test_time_to_loss_keeps_its_record_and_cleans_up_when_stopped(tmp_path):
    """SIGTERM (what `timeout` sends) mid-run: the loop saves and ends, the
    table and JSON say what was measured and by which signal, the cold
    compilation cache is removed, and the exit status says the signal."""
    import os
    import signal
    import subprocess
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    out = tmp_path / "ttl.json"
    args = ["--config=configs/char_cpu.py", f"--config.data.path={corpus}",
            "--config.model.num_layers=1", "--config.model.embed_dim=32",
            "--config.model.num_heads=2", "--config.model.block_size=16",
            "--config.train.batch_size=4", "--config.train.eval_steps=1",
            "--config.train.eval_every=5", "--config.train.log_every=5",
            "--config.train.sample_every=1000", "--config.train.num_steps=100000",
            "--target_val_loss=0", "--keep_going", "--warmup=1", "--repeats=2",
            f"--workdir={tmp_path / 'run'}", f"--json_out={out}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.time_to_loss", *args],
                            cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # The first evaluation's line: training is under way.
            if line.startswith("step 5:"):
                break
        assert json.loads(out.read_text())["evaluations"], "written at each evaluation"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    record = json.loads(out.read_text())
    assert record == json.loads(stdout.split("JSON ", 1)[1])
    assert record["stopped_by"] == "SIGTERM" and record["bare_step_s"] is None
    assert record["evaluations"][0]["step"] == 5 and record["first_step_s"] > 0
    assert "stopped by SIGTERM" in stdout
    assert not list(tmp_path.glob("smallgpt_cold_cache_*"))  # The cold cache is gone.
