"""The optimizer, the pure train step, and data parallelism."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, tiny_config
from smallgpt_jax import data, parallel, train
from smallgpt_jax.model import model_config

V = 13


def setup(overrides=None):
    c = tiny_config(**(overrides or {}))
    cfg = model_config(c, V)
    tx, schedule = train.make_optimizer(c.train), train.learning_rate_schedule(c.train)
    return c, cfg, tx, schedule, train.init_state(cfg, tx, c.seed)


def test_schedule_warms_up_then_decays_to_minimum():
    c = tiny_config(**{"train.num_steps": 100, "train.warmup_steps": 10,
                       "train.learning_rate": 1e-3, "train.min_learning_rate": 1e-4})
    s = train.learning_rate_schedule(c.train)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(5e-4)
    assert float(s(10)) == pytest.approx(1e-3)
    assert float(s(55)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-3)
    assert float(s(100)) == pytest.approx(1e-4)


def test_weight_decay_only_on_matrices():
    _, _, _, _, state = setup()
    mask = train.decay_mask(state.params)
    assert mask["block_0"]["attn"]["qkv"]["kernel"] is True
    assert mask["block_0"]["mlp"]["fc"]["kernel"] is True
    assert mask["token_embed"]["embedding"] is True
    assert mask["block_0"]["attn"]["qkv"]["bias"] is False
    assert mask["block_0"]["norm1"]["scale"] is False
    assert mask["pos_embed"] is False


def test_loss_decreases_on_a_tiny_corpus():
    c, cfg, tx, schedule, state = setup({"train.num_steps": 60, "train.learning_rate": 3e-3})
    tokens = np.tile(np.arange(V, dtype=np.int32), 40)  # A very learnable pattern.
    step = jax.jit(lambda s, b: train.train_step(
        s, b, model_config=cfg, tx=tx, schedule=schedule, seed=0, axis_name=None))
    losses = []
    for i in range(60):
        batch = data.sample_batch(tokens, 0, i, 8, cfg.block_size)[None]
        state, metrics = step(state, jnp.asarray(batch))
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(np.log(V), abs=0.3)
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    assert int(state.step) == 60


def test_gradient_accumulation_equals_one_big_batch():
    c, cfg, tx, schedule, state = setup()
    tokens = np.random.default_rng(0).integers(0, V, 500).astype(np.int32)
    batch = data.sample_batch(tokens, 0, 0, 8, cfg.block_size)
    # Jitted, as in training (op by op, the step takes 20 s to run here).
    step = jax.jit(lambda s, b: train.train_step(
        s, b, model_config=cfg, tx=tx, schedule=schedule, seed=0, axis_name=None))
    s1, m1 = step(state, jnp.asarray(batch[None]))
    s2, m2 = step(state, jnp.asarray(batch.reshape(2, 4, -1)))
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


PMAP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax.jax_utils import replicate, unreplicate
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.model import model_config
    assert jax.local_device_count() == 4, jax.devices()
    c = tiny_config()
    cfg = model_config(c, 13)
    tx, schedule = train.make_optimizer(c.train), train.learning_rate_schedule(c.train)
    state = train.init_state(cfg, tx, 0)
    tokens = np.random.default_rng(0).integers(0, 13, 800).astype(np.int32)
    p_train, p_eval = parallel.make_parallel_steps(cfg, tx, schedule, 0)
    single = jax.jit(lambda s, b: train.train_step(
        s, b, model_config=cfg, tx=tx, schedule=schedule, seed=0, axis_name=None))
    rstate, out = replicate(state), {"pmap": [], "single": [], "eval": []}
    for step in range(3):
        batch = data.sample_batch(tokens, 0, step, 8, cfg.block_size)
        rstate, m = p_train(rstate, parallel.shard_batch(batch, 1))
        state, m1 = single(state, jnp.asarray(batch[None]))
        out["pmap"].append(float(m["loss"][0]))
        out["single"].append(float(m1["loss"]))
    out["eval_pmap"] = float(p_eval(rstate.params, parallel.shard_batch(batch, 1))[0, 0])
    out["eval_single"] = float(train.eval_step(state.params, jnp.asarray(batch[None]),
                                               model_config=cfg, axis_name=None)[0])
    diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                   unreplicate(rstate.params), state.params)
    out["max_param_diff"] = max(jax.tree_util.tree_leaves(diffs))
    print("RESULT" + json.dumps(out))
""")


def test_pmap_on_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 " + FAST_COMPILE,
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", PMAP_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT")[1])
    np.testing.assert_allclose(out["pmap"], out["single"], rtol=1e-5)
    assert out["eval_pmap"] == pytest.approx(out["eval_single"], rel=1e-5)
    assert out["max_param_diff"] < 1e-5
    assert out["pmap"][-1] < out["pmap"][0]  # It did train.


def test_batch_that_does_not_split_over_devices_is_refused():
    from smallgpt_jax.errors import UserError
    with pytest.raises(UserError, match="does not split evenly"):
        parallel.per_device_batch(global_batch=7, grad_accum=2)
    assert parallel.per_device_batch(global_batch=8, grad_accum=2) == 4 // jax.device_count()


def test_bits_per_char():
    assert train.bits_per_char(np.log(2), 1.0) == pytest.approx(1.0)
    assert train.bits_per_char(np.log(4), 0.25) == pytest.approx(0.5)
