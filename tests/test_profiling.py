"""Watching a run: the time_to_loss benchmark, the profiler switch, and
evaluation as one program."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import needs_shakespeare, run_cli, tiny_config
from smallgpt_jax import data, parallel, train
from smallgpt_jax.config import parse_steps, validate
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.training import evaluation, setup

TINY = ["--config.model.num_layers=1", "--config.model.embed_dim=32",
        "--config.model.num_heads=2", "--config.model.block_size=16",
        "--config.train.batch_size=8", "--config.train.num_steps=40",
        "--config.train.eval_every=10", "--config.train.eval_steps=2",
        "--config.train.log_every=2", "--config.train.sample_tokens=4"]


@needs_shakespeare
def test_time_to_loss_reports_consistent_figures_and_the_profile_switch_writes_a_trace(
        tmp_path):
    # A target every model meets at its first evaluation: the run stops there.
    proc = run_cli(["--config=configs/char_cpu.py", "--target_val_loss=100", "--cache=warm",
                    "--warmup=1", "--repeats=3", f"--workdir={tmp_path}",
                    "--config.train.profile_steps=3:4", *TINY],
                   module="benchmarks.time_to_loss")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("JSON ")
    r = json.loads(last[len("JSON "):])
    assert r["device"].startswith("cpu") and r["dtype"] == "float32"
    assert r["reached_target"] and r["steps"] == 10  # Stopped at the first evaluation.
    assert r["evaluations"][0]["step"] == 10
    assert 0 < r["first_step_s"] < r["time_to_target_s"] <= r["run_s"]
    assert r["time_to_target_s"] == pytest.approx(r["evaluations"][0]["t_s"])
    # At least the init and the train step compile before step 1 ends; the
    # evaluation program after it.
    assert 2 <= r["programs_before_first_step"] < r["compiled_programs"]
    assert sum(p["count"] for p in r["programs"]) == r["compiled_programs"]
    assert 0 < r["compile_s"]
    assert 0 < r["bare_step_s"] < r["run_s"] and 0 < r["loop_step_s"] < r["run_s"]
    assert r["loop_over_bare"] == pytest.approx(r["loop_step_s"] / r["bare_step_s"])
    assert 0 < r["eval_s"] < r["time_to_target_s"]
    # 'auto' is recorded as the dtype used.
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["dtype"] == "float32"
    # The trace, where TensorBoard's profile tab looks: <logdir>/plugins/profile/<run>/.
    runs = glob.glob(str(tmp_path / "plugins" / "profile" / "*"))
    assert len(runs) == 1
    assert glob.glob(os.path.join(runs[0], "*.xplane.pb"))
    perfetto = glob.glob(os.path.join(runs[0], "*.trace.json.gz"))
    assert perfetto and os.path.getsize(perfetto[0]) > 0


def test_profile_steps_are_checked():
    assert parse_steps("") is None
    assert parse_steps("3:5") == (3, 5) and parse_steps("4") == (4, 4)
    for bad in ("0:2", "5:3", "a:b", "3-5"):
        with pytest.raises(UserError, match="profile_steps"):
            validate(tiny_config(**{"train.profile_steps": bad}))


def test_evaluation_in_one_program_gives_the_per_batch_mean():
    c = tiny_config(**{"train.eval_steps": 3})
    cfg = model_config(c.model, 13)
    tx, schedule = train.make_optimizer(c.train)
    state = train.init_state(cfg, tx, 0)
    par = parallel.data_parallel(c.parallel, cfg, tx, schedule, c.seed)
    tokens = np.random.default_rng(0).integers(0, 13, 500).astype(np.int32)
    splits = data.Splits(tokens[:400], tokens[400:])
    got = evaluation.evaluate(par, par.put_state(state).params,
                              evaluation.eval_batches(par, splits, setup.eval_settings(c)),
                              c.train.eval_steps)
    loss_fn = jax.jit(train.loss_fn, static_argnums=1)
    # What the loop computed before: one batch at a time, the mean of the losses.
    for stream, name, split in ((1, "train", splits.train), (2, "val", splits.val)):
        losses = [loss_fn(state.params, cfg, jnp.asarray(data.sample_batch(
            split, c.seed, i, c.train.batch_size, cfg.block_size, stream)))
            for i in range(c.train.eval_steps)]
        assert got[name] == pytest.approx(float(np.mean(losses)), rel=1e-6)
    assert got["train"] != got["val"]
