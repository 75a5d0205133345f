"""Every program compiled once: the steps' placement, and a short run's compiles."""

import jax
import numpy as np
import pytest

from compile_log import CompileLog
from conftest import tiny_config
from smallgpt_jax import data, parallel, train
from smallgpt_jax.model import model_config


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_state_goes_on_and_off_the_devices_without_compiling(kind):
    """Placing the state, two steps, and taking one copy back compile the
    train step alone (flax's replicate compiled a `stack` per array shape,
    its unreplicate a `squeeze`), and the copy taken back is placed as
    `on_first_device` places values, so a program compiled for one (the
    sampler in the warm-up) serves the other."""
    c = tiny_config()
    cfg = model_config(c.model, 65)
    tx, schedule = train.make_optimizer(c.train)
    state = train.init_state(cfg, tx, c.seed)
    par = parallel.data_parallel(kind, cfg, tx, schedule, c.seed)
    tokens = np.arange(1000, dtype=np.int32) % 65
    batch = par.put_batch(data.sample_batch(tokens, 0, 0, c.train.batch_size, 16), 1)
    with CompileLog() as log:
        rstate = par.put_state(state)
        for _ in range(2):
            rstate, metrics = par.train_step(rstate, batch)
        params = par.unreplicate(rstate.params)
        jax.block_until_ready(params)
    assert len(log.compiles) == 1, log.compiles  # The train step (pmap's is named _fun).
    first = parallel.on_first_device(state.params)
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(first)):
        assert got.sharding == want.sharding and got.committed and want.committed
    assert int(par.unreplicate(rstate).step) == 2


_SHORT_RUN = """
import json, sys
sys.path.insert(0, "tests")
from conftest import tiny_config
from compile_log import CompileLog
from smallgpt_jax.training import loop, profiling

class Phases(profiling.Hooks):
    def step_launched(self, step, metrics):
        if step == 1:
            log.phase = "after step 1"

c = tiny_config(**{"data.path": sys.argv[1], "train.num_steps": 20, "train.eval_every": 10,
                   "train.sample_every": 10, "train.checkpoint_every": 10,
                   "compilation_cache": "", "parallel": sys.argv[3]})
with CompileLog() as log:
    log.phase = "before step 1"
    loop.train_and_evaluate(c, sys.argv[2], hooks=Phases())
print("COMPILES " + json.dumps(log.compiles))
"""


@pytest.mark.parametrize("kind", ["shard_map", "pmap", "fsdp"])
def test_a_short_run_compiles_each_program_once_and_none_on_the_main_thread_after_step_1(
        kind, tmp_path):
    """A tiny run with two evaluations, samples, pictures and saves, in a
    fresh process (no program compiled before): shard_map (the default) and
    pmap compile at most 4 programs before step 1 (fsdp 5) (the init, the train step and
    what placing the state and the first batch needs), the first evaluation's
    programs on the warm-up thread while the first steps run, and nothing
    twice; after step 1 the main thread compiles nothing."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    out = subprocess.run([sys.executable, "-c", _SHORT_RUN, str(corpus), str(tmp_path / "run"),
                          kind],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    compiles = [tuple(c) for c in json.loads(out.stdout.split("COMPILES ", 1)[1])]
    log = CompileLog()
    log.compiles = compiles
    before = log.names(thread="MainThread", phase="before step 1")
    # fsdp makes the state in its shards and copies it (one program) before
    # the first step donates it: the warm-up keeps the initial parameters.
    assert len(before) <= (5 if kind == "fsdp" else 4), before
    assert log.names(thread="MainThread", phase="after step 1") == [], compiles
    assert log.twice() == [], log.twice()
    assert len(log.names(thread="smallgpt-warmup")) >= 4, compiles  # Eval, checksum, sampler.


def test_the_first_evaluation_waits_for_its_own_program_not_the_samplers():
    """warm.wait('eval') returns once the evaluation program is compiled,
    while the sampler's task still runs; wait() waits for every task."""
    import threading

    from smallgpt_jax.training import warmup
    release, ran = threading.Event(), []
    warm = warmup.Warmup()
    warm.start({"eval": lambda: ran.append("eval"),
                "sample": lambda: release.wait(60) and ran.append("sample")})
    warm.wait("eval")
    assert ran == ["eval"] and warm.thread.is_alive()  # The sampler is still compiling.
    warm.wait("no such task")  # Returns at once.
    release.set()
    warm.wait()
    assert ran == ["eval", "sample"] and not warm.thread.is_alive()
