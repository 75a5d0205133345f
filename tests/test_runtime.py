"""The process settings of smallgpt_jax/system/runtime.py do what they claim, the
command line applies them before NumPy and JAX start, and importing the
package applies none of them."""

import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

# Fill a block, free it, fill a block of the same size again, and count the
# minor page faults of the second fill. A block kept by the heap is refilled
# without faults; one given back to the kernel faults in every page again.
_MEASURE_REFILL = textwrap.dedent("""
    def refill_faults(n):
        import ctypes, resource
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        block = libc.malloc(n); ctypes.memset(block, 1, n); libc.free(block)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(n); ctypes.memset(block, 1, n)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, n // 4096
""")

# In a fresh interpreter (the allocator must be tuned before NumPy starts):
# the allocator setting every command line applies first, then the measurement.
_REFILL = _MEASURE_REFILL + textwrap.dedent("""
    import sys
    from smallgpt_jax.system import runtime
    runtime.tune_host_allocator()  # SMALLGPT_RUNTIME_TWEAKS=0: no allocator change.
    print(*refill_faults(int(sys.argv[1])))
""")


def _refill_faults(nbytes: int, tweaks: bool) -> tuple[int, int]:
    env = {"SMALLGPT_RUNTIME_TWEAKS": "1" if tweaks else "0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _REFILL, str(nbytes)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc allocator only")


@linux_only
@pytest.mark.parametrize("nbytes", [64 << 20, (2 << 30) + (256 << 20)])
def test_freed_step_buffers_stay_mapped(nbytes):
    # 64 MiB is a small model's step; 2.25 GiB is more than the 2 GiB trim
    # threshold that used to give a big step's memory back to the kernel.
    faults, pages = _refill_faults(nbytes, tweaks=True)
    assert faults < pages // 100


@linux_only
def test_without_the_tweak_the_refill_faults():
    # What the test above guards against: glibc's defaults unmap the block.
    faults, pages = _refill_faults(64 << 20, tweaks=False)
    assert faults > pages // 2


# `python -m smallgpt_jax.main` up to the training run, which a stand-in
# replaces: it reports which of NumPy and JAX were imported when the
# allocator was tuned, and whether the tuning holds.
_MAIN_UNTIL_THE_RUN = _MEASURE_REFILL + textwrap.dedent("""
    import json, runpy, sys, types
    from smallgpt_jax.system import runtime
    seen = {}
    tune = runtime.tune_host_allocator
    def spy():
        seen["imported_first"] = [m for m in ("numpy", "jax") if m in sys.modules]
        return tune()
    runtime.tune_host_allocator = spy
    def train_and_evaluate(config, workdir, **settings):  # As the real one's keywords.
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
        rule = mlir._platform_specific_lowerings["cpu"][tf.threefry2x32_p].rule
        seen.update(faults=refill_faults(64 << 20),
                    unrolled_threefry=rule is tf._threefry2x32_lowering_rule,
                    hook=sys.unraisablehook is runtime._quiet_unraisable)
        print(json.dumps(seen), flush=True)
        raise SystemExit(0)
    sys.modules["smallgpt_jax.training.loop"] = types.ModuleType("smallgpt_jax.training.loop")
    sys.modules["smallgpt_jax.training.loop"].train_and_evaluate = train_and_evaluate
    sys.argv = ["main", "--config=configs/char_cpu.py", "--workdir=" + sys.argv[1]]
    runpy.run_module("smallgpt_jax.main", run_name="__main__", alter_sys=True)
""")


@linux_only
def test_the_command_line_applies_the_settings_before_numpy_and_jax_start(tmp_path):
    env = {"PATH": "", "JAX_PLATFORMS": "cpu", "SMALLGPT_DISTRIBUTED": "off"}
    out = subprocess.run([sys.executable, "-c", _MAIN_UNTIL_THE_RUN, str(tmp_path / "run")],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = __import__("json").loads(out.stdout.splitlines()[-1])
    assert seen["imported_first"] == []
    faults, pages = seen["faults"]
    assert faults < pages // 100
    assert seen["unrolled_threefry"] and seen["hook"]


# A fresh interpreter imports the libraries smallgpt_jax uses (their own
# import-time effects are theirs), notes the process state, imports every
# module of the package, and compares. (The command lines after the first
# define flags that clash with its own, --config or --workdir: each of them is
# imported up to its first flag definition.)
_IMPORT_CHANGES_NOTHING = _MEASURE_REFILL + textwrap.dedent("""
    import importlib, logging, os, pkgutil, signal, sys, warnings
    import flax.linen, jax, matplotlib, matplotlib.figure, ml_collections, numpy, optax
    import orbax.checkpoint, tensorboardX, tokenizers
    from absl import flags, logging as absl_logging
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf

    def state():
        loggers = ("", "jax", "absl", "orbax", "tensorboardX", "etils", "asyncio",
                   "smallgpt_jax")
        return {
            "unraisable hook": sys.unraisablehook,
            "matplotlib backend": dict.__getitem__(matplotlib.rcParams, "backend"),
            "pyplot imported": "matplotlib.pyplot" in sys.modules,
            "threefry lowering on cpu":
                mlir._platform_specific_lowerings["cpu"][tf.threefry2x32_p].rule,
            "loggers": [(logging.getLogger(n).level, list(logging.getLogger(n).filters))
                        for n in loggers],
            "absl verbosity": absl_logging.get_verbosity(),
            "environment": dict(os.environ),
            "signal handlers": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
            "jax config": dict(jax.config.values),
            "warning filters": list(warnings.filters),
        }

    before = state()
    import smallgpt_jax
    for m in pkgutil.walk_packages(smallgpt_jax.__path__, "smallgpt_jax."):
        try:
            importlib.import_module(m.name)
        except flags.DuplicateFlagError:  # See above: another command line's flag.
            pass
    after = state()
    for key in before:
        if before[key] != after[key]:
            print("changed:", key)
    faults, pages = refill_faults(64 << 20)
    if faults < pages // 2:
        print("changed: the allocator keeps freed blocks")
    if sys.modules["smallgpt_jax.system.runtime"]._allocator_tuned:
        print("changed: runtime says the allocator is tuned")
""")


def test_importing_the_package_changes_nothing_in_the_process():
    env = {"PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _IMPORT_CHANGES_NOTHING], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------- GPU defaults, tested on CPU

def test_xla_flags_default_only_on_a_gpu_and_never_over_the_users():
    from smallgpt_jax.system import runtime
    default = runtime.GPU_XLA_FLAGS
    assert runtime.xla_flags_for({}, gpu=True) == (default, "smallgpt_jax's GPU default")
    assert runtime.xla_flags_for({"XLA_FLAGS": " "}, gpu=True)[0] == default
    assert "triton_gemm=false" in default
    assert runtime.xla_flags_for({}, gpu=False) == ("", "none")
    users = "--xla_dump_to=/tmp/d --xla_gpu_autotune_level=0"
    assert runtime.xla_flags_for({"XLA_FLAGS": users}, gpu=False) == (users, "set by the user")
    # Added to the default, not replacing it (a dump alone once brought the
    # slow Triton GEMM autotuning back).
    merged, source = runtime.xla_flags_for({"XLA_FLAGS": users}, gpu=True)
    assert merged.split() == default.split() + users.split(), merged
    assert source == "smallgpt_jax's GPU default, then the user's"
    # A flag the user names too is theirs alone, whatever its value.
    for theirs in ("--xla_gpu_enable_triton_gemm=true", "--xla_gpu_enable_triton_gemm"):
        flags = runtime.xla_flags_for({"XLA_FLAGS": f"--xla_dump_to=/d {theirs}"}, gpu=True)
        assert flags == (f"--xla_dump_to=/d {theirs}", "set by the user")


def test_a_run_on_a_gpu_sets_the_merged_flags_before_jax_starts():
    code = ("import os, smallgpt_jax.system.runtime as r; r.may_use_cuda = lambda e: True; "
            "print(r.use_default_xla_flags()[0] == os.environ['XLA_FLAGS'], "
            "os.environ['XLA_FLAGS'])")
    env = {"PATH": "", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    from smallgpt_jax.system import runtime
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", *runtime.GPU_XLA_FLAGS.split(), "--xla_dump_to=/tmp/d"]


def test_cuda_is_ruled_out_by_jax_platforms():
    from smallgpt_jax.system import runtime
    assert not runtime.may_use_cuda({"JAX_PLATFORMS": "cpu"})
    assert not runtime.may_use_cuda({"JAX_PLATFORMS": "tpu,cpu"})


def test_on_this_cpu_machine_a_run_leaves_xla_flags_alone():
    # A fresh process without XLA_FLAGS (the tests set some): nothing is added.
    code = ("import os, smallgpt_jax.system.runtime as r; print(r.use_default_xla_flags(), "
            "'XLA_FLAGS' in os.environ)")
    env = {"PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('', 'none') False"


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
    from smallgpt_jax.system import runtime
    assert runtime.resolve_dtype("auto", "gpu") == "bfloat16"
    assert runtime.resolve_dtype("auto", "tpu") == "bfloat16"
    assert runtime.resolve_dtype("auto", "cpu") == "float32"
    assert runtime.resolve_dtype("float32", "gpu") == "float32"  # Asked for: kept.
    assert runtime.resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_auto_dtype_is_the_default_and_resolves_in_the_model_config():
    from smallgpt_jax.config import base_config
    from smallgpt_jax.model import model_config
    assert base_config().model.dtype == "auto"
    assert model_config(base_config().model, 65).dtype == "float32"  # This is a CPU.


_DROPPED_STOP = textwrap.dedent("""
    import signal, sys, time
    from smallgpt_jax.cli import app as cli
    from smallgpt_jax.system import runtime
    from smallgpt_jax.training import stopping
    runtime.quiet_library_logs()  # The command lines' unraisable hook, as setup_process sets it.
    cli.quiet_stop_signals()
    class Dropped:  # Where Python drops exceptions, as in a gc callback (JAX has one).
        def __del__(self):
            if sys.argv[1] == "stop_now":
                raise stopping.StopNow(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # Its handler runs here, in __del__.
    Dropped()
    time.sleep(10)
    print("went on as if no signal came")
""")


@pytest.mark.parametrize("where,message", [
    ("stop_now", "stopped by SIGTERM before training started; nothing new to save"),
    ("loading", "stopped by SIGTERM; run the same command again"),
])
def test_a_stop_raised_where_python_drops_exceptions_still_ends_the_process(where, message):
    # (A SIGTERM while JAX was imported was dropped this way, and the run trained on.)
    out = subprocess.run([sys.executable, "-c", _DROPPED_STOP, where], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 143 and out.stdout == "", out
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr


def test_setup_run_takes_the_one_field_it_uses(monkeypatch, tmp_path):
    """The compilation cache setting, not the whole config: 'auto' is the
    user's cache folder, '' is off."""
    from smallgpt_jax.system import runtime
    asked = []
    monkeypatch.setattr(runtime, "use_default_xla_flags", lambda: ("", "kept"))
    monkeypatch.setattr(runtime, "default_compilation_cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(runtime, "enable_compilation_cache", lambda d: asked.append(d) or d)
    assert runtime.setup_run("auto")["compilation_cache"] == str(tmp_path)
    assert runtime.setup_run("")["compilation_cache"] == ""
    assert asked == [str(tmp_path), ""]
