"""A checkpoint's metadata: its FORMAT is read, older layouts are upgraded,
a newer one is one clear line."""

import json
import os

import pytest

from conftest import tiny_config
from smallgpt_jax.checkpoint import meta as meta_lib, writer as checkpoint, reader as loading
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.training import run_summary
from test_checkpoint import save_steps, small_tree


def edit_meta(workdir, step, change):
    path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    change(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


@pytest.fixture
def saved(tmp_path):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), 1.5), 2: (small_tree(2), None)})
    return config, workdir


def test_meta_without_format_is_upgraded(saved):
    # Written before "format" and the newest evaluation were kept: the losses make `eval`.
    config, workdir = saved
    edit_meta(workdir, 2, lambda m: [m.pop("format"), m.pop("eval")])
    with checkpoint.Checkpointer(workdir, 2) as ckpt:
        resume = ckpt.resume_point(config.to_dict())
        assert resume.meta.eval == {"eval/best_val_loss": 1.5}
        assert run_summary.finished_summary(resume.meta)["eval/best_val_loss"] == 1.5
    assert loading.load_params(workdir)[0]["w"].tolist() == [2.0] * 3
    # A saved Meta reads back as itself.
    assert meta_lib.read_meta(resume.meta.to_json(), "ck") == resume.meta


def test_meta_from_a_newer_format_is_one_line(saved):
    config, workdir = saved
    edit_meta(workdir, 2, lambda m: m.update(format=meta_lib.FORMAT + 1))
    newer = r"checkpoints/2 was written by a newer smallgpt_jax \(meta format 2; .*\): update"
    with pytest.raises(UserError, match=newer):
        loading.load_params(workdir)
    with checkpoint.Checkpointer(workdir, 2) as ckpt, pytest.raises(UserError, match=newer):
        ckpt.resume_point(config.to_dict())
