"""The workdir checks before training: another program's files, a file in
the way, no write permission, and the run's own damaged copies."""

import os

import pytest

from conftest import tiny_config
from smallgpt_jax.checkpoint.workdir import prepare_workdir
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.training import loop
from test_checkpoint import save_steps, small_tree


@pytest.mark.parametrize("setup,message", [
    (lambda d: (os.makedirs(d), open(os.path.join(d, "notes.txt"), "w").close()),
     "not from a smallgpt_jax run (notes.txt)"),
    (lambda d: open(d, "w").close(), "is a file, not a directory"),
    (lambda d: (os.makedirs(os.path.dirname(d), exist_ok=True),
                open(os.path.join(os.path.dirname(d), "blocker"), "w").close()),
     "cannot write to --workdir"),
    (lambda d: (os.makedirs(os.path.join(d, "checkpoints", "backup")),),
     "holds backup, which are not smallgpt_jax checkpoints"),
    # Names we also write, but another program's files (a Hugging Face model folder).
    (lambda d: (os.makedirs(d), open(os.path.join(d, "config.json"), "w").write(
        '{"model_type": "gpt2"}')), "holds a config.json that smallgpt_jax did not write"),
    (lambda d: (os.makedirs(d), open(os.path.join(d, "tokenizer.json"), "w").write(
        '{"version": "1.0", "model": {}}')), "holds a tokenizer.json that smallgpt_jax did"),
])
def test_a_foreign_or_unwritable_workdir_is_refused_before_training(tmp_path, setup, message):
    workdir = str(tmp_path / "w")
    setup(workdir)
    if message.startswith("cannot write"):
        workdir = str(tmp_path / "blocker" / "run")  # Its parent is a file.
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loop.train_and_evaluate(tiny_config(), workdir)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_runs_own_damaged_json_says_damaged_and_how_to_recover(tmp_path, name):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {1: (small_tree(1), None)})
    with open(os.path.join(workdir, name), "w") as f:
        f.write('{"model": {"num_la')  # Cut off.
    with pytest.raises(UserError, match=rf"run/{name} is damaged .*delete it and run the same "
                                        "command again"):
        loop.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("tokenizer", [{"kind": "char", "chars": "ab"}, {"kind": "byte"},
                                       {"kind": "word", "pieces": ["a", "b"]}])
def test_a_workdir_with_any_of_our_tokenizers_may_be_resumed(tmp_path, tokenizer):
    # A word-tokenizer run's workdir used to be refused as another program's.
    import json
    workdir = tmp_path / "run"
    os.makedirs(workdir / "checkpoints")
    (workdir / "tokenizer.json").write_text(json.dumps(tokenizer))
    prepare_workdir(str(workdir))
