"""FSDP (config.parallel='fsdp'): the train state split over 8 simulated CPU
devices trains exactly as replicated data parallelism does, in 1/8 of the memory."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT
from smallgpt_jax import sharding

P = jax.sharding.PartitionSpec


def test_each_array_is_cut_along_its_largest_axis_the_devices_divide():
    assert sharding.spec_for((768, 3072), 8, "data") == P(None, "data")
    assert sharding.spec_for((50304, 768), 8, "data") == P("data")
    # 12 is not a multiple of 8: the next largest axis that is.
    assert sharding.spec_for((12, 64, 40), 8, "data") == P(None, "data")
    assert sharding.spec_for((768, 1000), 16, "data") == P("data")  # The first of equals.
    assert sharding.spec_for((128, 128), 8, "data") == P("data")
    # Nothing divides, too small to be worth a collective, one device: whole.
    assert sharding.spec_for((65, 33), 8, "data") == P()
    assert sharding.spec_for((128,), 8, "data") == P()
    assert sharding.spec_for((), 8, "data") == P()
    assert sharding.spec_for((768, 3072), 1, "data") == P()


# 20 steps of a small float32 config with two accumulated micro-batches, once
# under shard_map (the state replicated) and once under fsdp, from the same
# initial state; what each gives is printed as JSON.
COMPARE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from smallgpt_jax import data, parallel, sharding, train
    from smallgpt_jax.model import model_config
    assert jax.device_count() == 8, jax.devices()
    c = tiny_config(**{"model.embed_dim": 128, "model.num_heads": 4, "model.dtype": "float32",
                       "train.batch_size": 16, "train.grad_accum_steps": 2})
    cfg = model_config(c.model, 65)
    tx, schedule = train.make_optimizer(c.train)
    tokens = np.random.default_rng(0).integers(0, 65, 4000).astype(np.int32)
    state0 = jax.device_get(train.init_state(cfg, tx, c.seed))
    out = {}
    for kind in ("shard_map", "fsdp"):
        par = parallel.data_parallel(kind, cfg, tx, schedule, c.seed)
        state = par.put_state(state0)
        placed = sharding.per_device_bytes(state)
        losses = []
        for step in range(20):
            batch = data.sample_batch(tokens, c.seed, step, 16, cfg.block_size)
            state, m = par.train_step(state, par.put_batch(batch, 2))
            losses.append(float(parallel.host_values(m["loss"])))
        batch = data.sample_batch(tokens, c.seed, 99, 16, cfg.block_size)
        val = parallel.host_values(par.eval_step(state.params, par.put_batch(batch, 1)))
        params = par.unreplicate(state.params)
        # What a checkpoint writes: fsdp's shards as they are, not gathered.
        to_save = jax.tree.leaves(par.saved(state))
        out[kind + "_saves_shards"] = sum(isinstance(x, jax.Array) and not
                                          x.sharding.is_fully_replicated for x in to_save)
        out[kind] = {"losses": losses, "eval": float(val[0]), "bytes": placed,
                     "bytes_after": sharding.per_device_bytes(state),
                     "params": [np.asarray(p).ravel()[:50].tolist()
                                for p in jax.tree.leaves(params)],
                     "shapes": [list(np.shape(p)) for p in jax.tree.leaves(params)]}
    print("RESULT" + json.dumps(out))
""")


def run_on(devices: int, script: str, *args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT")[1])


def test_fsdp_trains_as_shard_map_in_an_eighth_of_the_memory():
    out = run_on(8, COMPARE)
    dp, fsdp = out["shard_map"], out["fsdp"]
    np.testing.assert_allclose(fsdp["losses"], dp["losses"], rtol=0, atol=1e-5)
    assert fsdp["eval"] == pytest.approx(dp["eval"], abs=1e-5)
    assert dp["losses"][-1] < dp["losses"][0]  # It trained.
    # Gathered back, the parameters are whole and equal to the replicated run's.
    assert fsdp["shapes"] == dp["shapes"]
    for got, want in zip(fsdp["params"], dp["params"]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Parameters + both AdamW moments, per device, from the arrays' shards:
    # at most 1/8 of the replicated state + 5%, and still so after the steps.
    assert fsdp["bytes"] <= dp["bytes"] / 8 * 1.05, (fsdp["bytes"], dp["bytes"])
    assert fsdp["bytes_after"] == fsdp["bytes"] and dp["bytes_after"] == dp["bytes"]
    assert out["fsdp_saves_shards"] > 10 and out["shard_map_saves_shards"] == 0


def write_corpus(path) -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs"]
    rng = np.random.default_rng(0)
    path.write_text("\n".join(" ".join(rng.choice(words, 10)) for _ in range(300)) + "\n")
    return str(path)


def test_a_sharded_checkpoint_resumes_on_8_4_1_then_8_devices_as_one_run(tmp_path):
    """An fsdp run saved on 8 devices, resumed on 4, then 1, then 8 again,
    logs the losses of an uninterrupted 8-device run at every step and ends
    with its parameters; the checkpoint samples on one device."""
    from smallgpt_jax.checkpoint.reader import load_params
    from test_cli import read_events
    corpus = write_corpus(tmp_path / "text.txt")
    # A constant learning rate after 2 warmup steps: the same schedule whatever
    # num_steps each resumed part is given.
    args = ["-m", "smallgpt_jax.main", "--config=configs/char_cpu.py",
            f"--config.data.path={corpus}", "--config.parallel=fsdp",
            "--config.model.num_layers=1", "--config.model.embed_dim=64",
            "--config.model.num_heads=2", "--config.model.block_size=16",
            "--config.model.dtype=float32", "--config.train.batch_size=8",
            "--config.train.warmup_steps=2", "--config.train.learning_rate=1e-3",
            "--config.train.min_learning_rate=1e-3",
            "--config.train.log_every=1", "--config.train.eval_every=100",
            "--config.train.eval_steps=1", "--config.train.sample_tokens=0"]

    def run(workdir, devices, steps):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                             f"{FAST_COMPILE}")
        proc = subprocess.run([sys.executable, *args, f"--workdir={workdir}",
                               f"--config.train.num_steps={steps}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(whole, 8, 8)
    for devices, steps in ((8, 2), (4, 4), (1, 6), (8, 8)):
        log = run(parts, devices, steps)
        if steps > 2:
            assert f"resuming from checkpoint step {steps - 2}" in log, log[-2000:]
    want, got = read_events(str(whole))[0]["train/loss"], read_events(str(parts))[0]["train/loss"]
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(load_params(str(parts))[0]),
                    jax.tree.leaves(load_params(str(whole))[0])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    sample = subprocess.run(
        [sys.executable, "-m", "smallgpt_jax.sample", f"--workdir={parts}", "--prompt=the",
         "--max_new_tokens=5", "--num_samples=1"], cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert sample.returncode == 0 and "sample 1 of 1 ---\nthe" in sample.stdout, sample.stderr
