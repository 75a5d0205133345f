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
    cfg = model_config(c.model, V)
    tx, schedule = train.make_optimizer(c.train)
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


def test_adam_steps_follow_the_schedule_make_optimizer_returns():
    """The optimizer steps with the schedule it hands back: with no decay, no
    clipping and a gradient of +1 everywhere, each of Adam's first updates is
    -lr(step) (its normalised moment is 1), so the returned schedule is the
    one in use, not a second one built alongside."""
    c = tiny_config(**{"train.num_steps": 10, "train.warmup_steps": 4,
                       "train.learning_rate": 1e-2, "train.weight_decay": 0.0,
                       "train.grad_clip": 0.0})
    tx, schedule = train.make_optimizer(c.train)
    params = {"w": jnp.zeros((3,))}
    opt_state = tx.init(params)
    for step in range(3):
        updates, opt_state = tx.update({"w": jnp.ones((3,))}, opt_state, params)
        np.testing.assert_allclose(updates["w"], -float(schedule(step)), rtol=1e-4)
    assert float(schedule(1)) > 0


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


def test_one_device_axis_name_and_one_device_steps_need_none():
    """pmap, the shard_map mesh and the per-process batch placement all use
    parallel.AXIS; the steps average over no axis unless given one."""
    assert not hasattr(train, "AXIS")
    assert parallel.data_mesh().axis_names == (parallel.AXIS,)
    placed = parallel.shard_batch(np.zeros((jax.local_device_count(), 3), np.int32))
    assert placed.sharding.mesh.axis_names == (parallel.AXIS,)
    c, cfg, tx, schedule, state = setup()
    batch = jnp.zeros((1, 2, cfg.block_size + 1), jnp.int32)
    # One device, no axis: the defaults need no pmap around them.
    jax.eval_shape(lambda s, b: train.train_step(s, b, model_config=cfg, tx=tx,
                                                 schedule=schedule, seed=0), state, batch)
    jax.eval_shape(lambda p, b: train.eval_step(p, b, model_config=cfg), state.params, batch)


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


# One optimizer step on the same global batch, on one device and data-parallel
# (pmap, shard_map) over the devices this process has; saves what each gives.
# The gradient itself is compared, not only the loss and new parameters: after
# one step AdamW's update is about -lr * sign(gradient), the same for a gradient
# N times too large. opt_state's first moment is (1 - beta1) x the gradient after
# clipping, so it shows the gradient that the update used, clipped or not.
STEP_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    sys.path.insert(0, "tests")
    from conftest import tiny_config
    from smallgpt_jax import data, parallel, train
    from smallgpt_jax.model import model_config
    devices, out_path = int(sys.argv[1]), sys.argv[2]
    assert jax.device_count() == devices, jax.devices()
    tokens = np.random.default_rng(0).integers(0, 13, 800).astype(np.int32)
    A = 2  # Two accumulated micro-batches: the gradient is summed over them too.
    saved, norm = {}, None
    # grad_clip so small that every gradient is clipped; then 1.5x the true
    # gradient norm: a gradient summed over 2 or more devices would be
    # clipped, the true one is not.
    for clip in ("tiny", "between"):
        grad_clip = 1e-3 if clip == "tiny" else 1.5 * norm
        c = tiny_config(**{"model.num_layers": 1, "train.grad_clip": grad_clip})
        cfg = model_config(c.model, 13)
        tx, schedule = train.make_optimizer(c.train)
        batch = data.sample_batch(tokens, 0, 0, 8, cfg.block_size)
        if norm is None:  # grad_clip is stateless: one initial state serves both.
            state0 = jax.device_get(train.init_state(cfg, tx, 0))
        single = jax.jit(lambda s, b: train.train_step(
            s, b, model_config=cfg, tx=tx, schedule=schedule, seed=0, axis_name=None))
        results = {"single": single(state0, batch.reshape(A, -1, batch.shape[-1]))}
        for kind in ("pmap", "shard_map"):
            par = parallel.data_parallel(kind, cfg, tx, schedule, 0)
            state, m = par.train_step(par.put_state(state0), par.put_batch(batch, A))
            results[kind] = par.unreplicate((state, m))
            if clip == "tiny":  # Evaluation has no gradient: once is enough.
                saved[f"eval/{kind}"] = np.asarray(par.unreplicate(
                    par.eval_step(state.params, par.put_batch(batch, 1))))
        if clip == "tiny":
            saved["eval/single"] = np.asarray(train.eval_step(
                results["single"][0].params, jnp.asarray(batch[None]), model_config=cfg,
                axis_name=None))
        for mode, (state, m) in results.items():
            grads = jax.tree.map(lambda mu: mu / (1 - c.train.beta1),
                                 optax.tree_utils.tree_get(state.opt_state, "mu"))
            for name, tree in (("grads", grads), ("params", state.params)):
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                    saved[f"{clip}/{mode}/{name}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
            saved[f"{clip}/{mode}/grad_norm"] = np.asarray(m["grad_norm"])
            saved[f"{clip}/{mode}/loss"] = np.asarray(m["loss"])
        norm = float(results["single"][1]["grad_norm"])
    np.savez(out_path, **saved)
""")


def one_step_on(devices: int, out_path) -> dict:
    """STEP_SCRIPT's arrays from a process with `devices` CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    proc = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(devices), str(out_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out_path) as saved:
        return dict(saved)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_data_parallel_gradients_equal_one_device(devices, tmp_path):
    """pmap and shard_map average the devices' gradients: the same gradient
    (raw and clipped), gradient norm, loss, new parameters and evaluation as
    one device on the whole batch, whether grad_clip acts or not."""
    saved = one_step_on(devices, tmp_path / "step.npz")
    for clip in ("tiny", "between"):
        single = {k.split("/", 2)[2]: v for k, v in saved.items()
                  if k.startswith(f"{clip}/single/")}
        assert len([k for k in single if k.startswith("grads")]) > 5
        for kind in ("pmap", "shard_map"):
            for key, want in single.items():
                got = saved[f"{clip}/{kind}/{key}"]
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(),
                                           err_msg=f"{kind}, grad_clip {clip}: {key}")
    for kind in ("pmap", "shard_map"):
        np.testing.assert_allclose(saved[f"eval/{kind}"], saved["eval/single"], rtol=1e-5)
    # The cases are what they claim: the tiny grad_clip scaled the gradient
    # down to its norm; 1.5x the norm left it alone (the two runs' gradients
    # are of the same parameters and batch).
    norm = float(saved["tiny/single/grad_norm"])
    assert float(saved["between/single/grad_norm"]) == pytest.approx(norm, rel=1e-6)
    for key in [k.split("/", 2)[2] for k in saved if k.startswith("tiny/single/grads")]:
        np.testing.assert_allclose(saved[f"tiny/single/{key}"] * norm / 1e-3,
                                   saved[f"between/single/{key}"], rtol=1e-4, atol=1e-9)


def test_batch_that_does_not_split_over_devices_is_refused():
    from smallgpt_jax.system.errors import UserError
    with pytest.raises(UserError, match="does not split evenly"):
        parallel.per_device_batch(global_batch=7, grad_accum=2)
    assert parallel.per_device_batch(global_batch=8, grad_accum=2) == 4 // jax.device_count()


def test_bits_per_char():
    assert train.bits_per_char(np.log(2), 1.0) == pytest.approx(1.0)
    assert train.bits_per_char(np.log(4), 0.25) == pytest.approx(0.5)
