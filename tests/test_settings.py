"""Each setting is worked out once, at the top of a run, and the caller's
config is left as it was (training/loop.py, model.model_config)."""

import copy
import json
import os

from conftest import tiny_config
from smallgpt_jax.training import loop, setup as run_setup
from test_checkpoint import write_corpus


def test_a_run_leaves_its_config_alone(tmp_path):
    """'auto' is resolved in the run's own copy: config.json and the
    checkpoint record the dtype used, the caller still holds 'auto'."""
    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    config = tiny_config(**{"data.path": corpus, "train.sample_tokens": 0,
                            "model.num_layers": 1, "model.embed_dim": 16,
                            "model.block_size": 8, "train.batch_size": 4,
                            "train.num_steps": 2, "train.eval_every": 2,
                            "model.dtype": "auto"})
    before = copy.deepcopy(config)
    result = loop.train_and_evaluate(config, workdir)
    # The result keeps the model apart from summary.json's metrics.
    assert isinstance(result, loop.RunResult) and "params" not in result.metrics
    assert config == before and config.model.dtype == "auto"
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = json.load(f)
    assert recorded["model"]["dtype"] == result.model_config.dtype != "auto"
    assert {**recorded["model"], "dtype": "auto"} == before.model.to_dict()


def test_the_initial_state_is_not_kept_for_the_run(tmp_path, monkeypatch):
    """Once setup has put the state on the devices, the fresh TrainState and
    its Adam moments are gone; its parameters live until the warm-up has run
    on them, so by the first evaluation nothing of it is left."""
    import gc
    import weakref

    import jax

    from smallgpt_jax import train
    from smallgpt_jax.training import profiling

    corpus, workdir = write_corpus(tmp_path / "text.txt"), str(tmp_path / "run")
    config = tiny_config(**{"data.path": corpus, "model.num_layers": 1, "model.embed_dim": 16,
                            "model.block_size": 8, "train.batch_size": 4,
                            "train.num_steps": 2, "train.eval_every": 2,
                            "train.sample_tokens": 4})
    refs, alive = {}, {}

    def live(name):
        gc.collect()
        return any(r() is not None for r in refs[name])

    def init_state(*args, **kwargs):
        state = real_init(*args, **kwargs)
        refs["state"] = [weakref.ref(state)]
        refs["moments"] = [weakref.ref(x) for x in jax.tree.leaves(state.opt_state)]
        refs["params"] = [weakref.ref(x) for x in jax.tree.leaves(state.params)]
        return state

    def setup(*args, **kwargs):
        run = real_setup(*args, **kwargs)
        alive["setup"] = live("state") or live("moments")
        return run

    class Evaluated(profiling.Hooks):
        def evaluated(self, step, losses, seconds):
            alive["evaluation"] = live("params")

    real_init, real_setup = train.init_state, run_setup.setup
    monkeypatch.setattr(train, "init_state", init_state)
    monkeypatch.setattr(run_setup, "setup", setup)
    loop.train_and_evaluate(config, workdir, hooks=Evaluated())
    assert refs["moments"] and alive == {"setup": False, "evaluation": False}
