"""Multi-host data parallelism, for real on one machine: two processes on
loopback, 2 simulated CPU devices each (CPU collectives across processes go
through gloo), against one process with 4 devices."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT
from smallgpt_jax.system import distributed
from smallgpt_jax.system.errors import UserError
from test_cli import read_events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_corpus(path) -> str:
    """~20 kB of made-up text: every character occurs early, so a character
    vocabulary built on the train split covers the validation split."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs"]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 10)) for _ in range(400)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_together(commands, timeout=420, while_running=None):
    """Starts [(argv, env), ...] at once; returns their (status, stdout, stderr).

    `while_running(procs)`, if given, runs once they have started (to signal
    one, say). Processes of one job wait for each other, so all are killed if
    the time runs out (instead of one hanging on a peer that died)."""
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv, env in commands]
    try:
        if while_running is not None:
            while_running(procs)
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def cpu_env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                "SMALLGPT_DISTRIBUTED"))}
    return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
                JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)


# --- When to join a job -------------------------------------------------------

def test_explicit_settings_need_all_three():
    assert distributed.explicit_settings({}) is None
    full = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
            "JAX_PROCESS_ID": "3"}
    assert distributed.explicit_settings(full) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID not"):
        distributed.explicit_settings({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    with pytest.raises(UserError, match="host:port"):
        distributed.explicit_settings({**full, "JAX_COORDINATOR_ADDRESS": "10.0.0.1"})
    with pytest.raises(UserError, match="must be integers"):
        distributed.explicit_settings({**full, "JAX_NUM_PROCESSES": "four"})
    with pytest.raises(UserError, match=r"JAX_PROCESS_ID=4 must be in \[0, JAX_NUM_PROCESSES=4\)"):
        distributed.explicit_settings({**full, "JAX_PROCESS_ID": "4"})


def test_clusters_that_jax_detects_on_its_own():
    assert not distributed.cluster_detected({})
    assert not distributed.cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
    assert distributed.cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
    assert distributed.cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"})


def test_single_process_environment_does_not_initialize():
    import jax
    assert distributed.maybe_initialize({}) is False
    assert distributed.maybe_initialize({"SMALLGPT_DISTRIBUTED": "off",
                                         "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is False
    assert not jax.distributed.is_initialized()
    with pytest.raises(UserError, match="must be 'auto', 'off' or unset"):
        distributed.maybe_initialize({"SMALLGPT_DISTRIBUTED": "yes"})


# --- Two processes x 2 devices == one process x 4 devices --------------------

WORKER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    n_proc, proc_id, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if n_proc > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", n_proc, proc_id)
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.model import model_config
    assert jax.device_count() == 4 and jax.process_count() == n_proc, jax.devices()
    # Dropout on: each device's dropout key depends on its index on the data
    # axis, so this also checks that every layout numbers the devices alike.
    c = tiny_config(**{"model.dropout": 0.1, "train.grad_accum_steps": 2,
                       "model.num_layers": 1})  # One block: compiles faster.
    cfg = model_config(c.model, 13)
    tx, schedule = train.make_optimizer(c.train)
    tokens = np.random.default_rng(0).integers(0, 13, 800).astype(np.int32)
    out = {}
    for kind in ("pmap", "shard_map", "fsdp"):
        par = parallel.data_parallel(kind, cfg, tx, schedule, c.seed)
        state = par.put_state(train.init_state(cfg, tx, c.seed))
        losses = []
        for step in range(3):
            batch = data.sample_batch(tokens, 0, step, 16, cfg.block_size)
            state, m = par.train_step(state, par.put_batch(parallel.process_rows(batch), 2))
            losses.append(float(par.unreplicate(m["loss"])))
        batch = data.sample_batch(tokens, 0, 99, 16, cfg.block_size)
        val = par.eval_step(state.params, par.put_batch(parallel.process_rows(batch), 1))
        params = par.unreplicate(state.params)
        out[kind] = {"losses": losses, "eval": float(par.unreplicate(val)[0]),
                     "param_abs_sum": float(sum(np.abs(np.asarray(p)).sum()
                                                for p in jax.tree.leaves(params)))}
    print("RESULT" + json.dumps(out))
""")


def test_two_processes_give_the_losses_of_one_process_with_four_devices():
    port = str(free_port())
    results = run_together([
        ([sys.executable, "-c", WORKER, "2", "0", port], cpu_env(2)),
        ([sys.executable, "-c", WORKER, "2", "1", port], cpu_env(2)),
        ([sys.executable, "-c", WORKER, "1", "0", port], cpu_env(4)),
    ])
    for status, out, err in results:
        assert status == 0, err[-3000:]
    proc0, proc1, single = (json.loads(out.split("RESULT")[1]) for _, out, _ in results)
    assert proc0 == proc1  # Both processes see the same (global) losses and params.
    for kind in ("pmap", "shard_map"):
        for got in (proc0[kind], single["shard_map"]):
            np.testing.assert_allclose(got["losses"], single["pmap"]["losses"], rtol=1e-5)
            assert got["eval"] == pytest.approx(single["pmap"]["eval"], rel=1e-5)
            assert got["param_abs_sum"] == pytest.approx(single["pmap"]["param_abs_sum"],
                                                         rel=1e-6)
    # fsdp draws its dropout masks for the global batch, not per device: other
    # masks than pmap's, but the same in one process as in two.
    np.testing.assert_allclose(proc0["fsdp"]["losses"], single["fsdp"]["losses"], rtol=1e-5)
    assert proc0["fsdp"]["param_abs_sum"] == pytest.approx(single["fsdp"]["param_abs_sum"],
                                                           rel=1e-6)
    assert single["pmap"]["losses"][-1] < single["pmap"]["losses"][0]  # It trained.


def test_main_as_a_two_process_job_matches_one_process(tmp_path):
    """The whole command line: only process 0 writes logs and prints the
    sample, and the logged losses equal a one-process, four-device run."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    args = ["-m", "smallgpt_jax.main", "--config=configs/char_cpu.py",
            f"--config.data.path={corpus}", "--config.model.num_layers=1",
            "--config.model.embed_dim=32", "--config.model.num_heads=2",
            "--config.model.block_size=16", "--config.model.dropout=0.1",
            "--config.train.batch_size=8", "--config.train.num_steps=4",
            "--config.train.warmup_steps=2", "--config.train.log_every=1",
            "--config.train.eval_every=2", "--config.train.eval_steps=2",
            "--config.train.sample_tokens=8"]
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    job = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2")
    results = run_together([
        ([sys.executable, *args, f"--workdir={one}"], cpu_env(4)),
        ([sys.executable, *args, f"--workdir={two}", "--config.parallel=shard_map"],
         cpu_env(2, JAX_PROCESS_ID="0", **job)),
        ([sys.executable, *args, f"--workdir={two}", "--config.parallel=shard_map"],
         cpu_env(2, JAX_PROCESS_ID="1", **job)),
    ])
    for status, out, err in results:
        assert status == 0, err[-3000:]
    (_, out_one, _), (_, out_p0, err_p0), (_, out_p1, err_p1) = results
    assert "process 0 of 2" in err_p0 and "process 1 of 2" in err_p1
    assert "--- sample from the final model ---" in out_p0
    assert "--- sample" not in out_p1 and "val loss" not in err_p1  # Process 1 is quiet.
    assert len([f for f in os.listdir(two) if f.startswith("events.out")]) == 1
    assert json.loads((two / "summary.json").read_text())["steps"] == 4
    scalars_one, _ = read_events(str(one))
    scalars_two, _ = read_events(str(two))
    for tag in ("train/loss", "eval/val_loss", "eval/train_loss"):
        steps_one, values_one = zip(*scalars_one[tag])
        steps_two, values_two = zip(*scalars_two[tag])
        assert steps_one == steps_two
        np.testing.assert_allclose(values_two, values_one, rtol=1e-5, err_msg=tag)

    # Process 0 wrote the checkpoints; both processes resume from them. Then a
    # SIGTERM that reaches one process only (a scheduler's signals do not
    # arrive everywhere at once) still stops the whole job, after a save.
    assert sorted(os.listdir(two / "checkpoints")) == ["2", "4"]
    job = dict(job, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}")
    more = [a.replace("num_steps=4", "num_steps=100000") for a in args]
    more.append("--config.train.checkpoint_every=2")
    steps = lambda: [int(e) for e in os.listdir(two / "checkpoints") if e.isdigit()]

    def term_process_1_once_training(procs):
        deadline = time.time() + 300
        while max(steps()) < 8:  # Resumed, and training.
            assert time.time() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)

    results = run_together([
        ([sys.executable, *more, f"--workdir={two}", "--config.parallel=shard_map"],
         cpu_env(2, JAX_PROCESS_ID=str(i), **job)) for i in (0, 1)],
        timeout=180, while_running=term_process_1_once_training)
    for status, _, err in results:
        assert status == 128 + signal.SIGTERM, err[-3000:]
    err_p0 = results[0][2]
    assert "resuming from checkpoint step 4" in err_p0
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", err_p0).group(1))
    assert stopped == max(steps()) and stopped >= 8


@pytest.mark.parametrize("kind", ["pmap", "shard_map", "fsdp"])
def test_train_step_compiles_once(kind):
    """The state a step returns is laid out like the state it was given, so
    later steps reuse the first step's program instead of compiling again."""
    import jax
    from conftest import tiny_config
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.model import model_config
    c = tiny_config(**{"model.num_layers": 1})
    cfg = model_config(c.model, 13)
    tx, schedule = train.make_optimizer(c.train)
    par = parallel.data_parallel(kind, cfg, tx, schedule, c.seed)
    state = par.put_state(train.init_state(cfg, tx, c.seed))
    tokens = np.arange(400, dtype=np.int32) % 13
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for step in range(3):
            batch = par.put_batch(parallel.process_rows(data.sample_batch(tokens, 0, step, 8, 16)), 1)
            state, metrics = par.train_step(state, batch)
            jax.block_until_ready(metrics)
            if step == 0:
                assert compiles, "the first step should compile"
                compiles.clear()
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []
