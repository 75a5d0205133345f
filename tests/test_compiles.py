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
