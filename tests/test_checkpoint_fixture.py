"""A checkpoint written by an earlier version of this code still restores.

tests/fixtures/checkpoint_format1 was made once by make_checkpoint.py (read
its docstring before touching it), with expected.json computed from the
trained parameters in memory. Every test works on a copy in tmp_path, laid
out as a run's workdir: the checkpoint must restore from any folder, and the
restore paths must never write into tests/fixtures.
"""

import json
import os
import shutil

import jax
import pytest

from conftest import ROOT, load_file, needs_shakespeare
from smallgpt_jax import train
from smallgpt_jax.checkpoint import writer as checkpoint, checksum, reader as loading
from smallgpt_jax.model import model_config
from smallgpt_jax.training import loop
from test_checkpoint import assert_trees_identical

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "checkpoint_format1")
make = load_file(os.path.join("tests", "fixtures", "make_checkpoint.py"), "make_checkpoint")
with open(os.path.join(FIXTURE, "expected.json"), encoding="utf-8") as _f:
    EXPECTED = json.load(_f)


@pytest.fixture
def workdir(tmp_path):
    """A copy of the fixture as a training run's workdir: <workdir>/checkpoints/<step>."""
    step = str(EXPECTED["step"])
    shutil.copytree(os.path.join(FIXTURE, step), tmp_path / "run" / "checkpoints" / step)
    return str(tmp_path / "run")


def test_fixture_loads_for_sampling(workdir):
    params, mc, tok, step = loading.load_checkpoint(workdir)
    assert step == EXPECTED["step"]
    assert tok.vocab_size == EXPECTED["vocab_size"]
    assert make.param_shapes(params) == EXPECTED["param_shapes"]
    assert make.params_sum(params) == pytest.approx(EXPECTED["params_sum"], rel=1e-12)
    assert make.greedy(params, mc, tok)[0] == EXPECTED["greedy_ids"]
    # The step was evaluated, so it is also the best one.
    assert_trees_identical(loading.load_params(workdir, step="best")[0], params)


def test_fixture_restores_for_resuming(workdir):
    """The training restore path, as a resumed run takes it (training/setup.py)."""
    config = make.get_config()
    with checkpoint.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
        resume = ckpt.resume_point(config.to_dict())
        assert resume.step == EXPECTED["step"]
        model_cfg = model_config(config.model, resume.tokenizer.vocab_size)
        tx, _ = train.make_optimizer(config.train)
        shapes = jax.eval_shape(lambda: train.init_state(model_cfg, tx, config.seed))
        state = ckpt.restore_state(resume, shapes)
    assert int(state.step) == EXPECTED["step"]
    # Every array of the state (optimizer included) has its saved checksum, and matches it.
    assert checksum.checksums(state) == resume.meta.checksums
    assert_trees_identical(state.params, loading.load_params(workdir)[0])


@needs_shakespeare
def test_fixture_resumes_training(workdir, tmp_path, capfd):
    """One more step through the training entry, on the same text (its fingerprint is checked)."""
    text = tmp_path / "shakespeare_3000.txt"
    text.write_text(make.corpus_text(os.environ["SMALLGPT_DATA_DIR"]), encoding="utf-8")
    config = make.get_config()
    config.data.path, config.data.cache_dir = str(text), str(tmp_path / "stores")
    config.train.num_steps = EXPECTED["step"] + 1
    result = loop.train_and_evaluate(config, workdir)
    assert f"resuming from checkpoint step {EXPECTED['step']}" in capfd.readouterr().err
    assert result.steps == EXPECTED["step"] + 1
    assert loading.load_checkpoint(workdir)[3] == EXPECTED["step"] + 1
