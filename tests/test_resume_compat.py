"""What a resumed run may change: settings yes, the model's or tokenizer's shape no."""

import pytest

from conftest import tiny_config
from smallgpt_jax.checkpoint.compat import check_resumable, config_changes, continues_branch
from smallgpt_jax.checkpoint.meta import Meta
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.training import loop
from test_checkpoint import fresh_state, save_steps


def test_config_changes_split_refused_from_allowed():
    old = tiny_config().to_dict()
    new = tiny_config(**{"model.num_layers": 3, "model.embed_dim": 64, "model.dropout": 0.1,
                         "data.tokenizer": "byte", "train.num_steps": 99,
                         "train.eval_every": 7, "train.resume_step": 5}).to_dict()
    refused, allowed = config_changes(old, new)
    assert refused == ["data.tokenizer: 'char' -> 'byte'", "model.embed_dim: 32 -> 64",
                       "model.num_layers: 2 -> 3"]
    assert allowed == ["model.dropout: 0.0 -> 0.1", "train.eval_every: 10 -> 7",
                       "train.num_steps: 20 -> 99"]


def test_the_parallel_mode_and_remat_may_change():
    # Neither changes a parameter: an fsdp run may continue under shard_map on
    # one device, or with remat to fit a bigger batch.
    old = tiny_config().to_dict()
    new = tiny_config(**{"parallel": "fsdp", "model.remat": "block"}).to_dict()
    assert config_changes(old, new) == (
        [], ["model.remat: 'auto' -> 'block'", f"parallel: {old['parallel']!r} -> 'fsdp'"])


def test_switching_the_end_of_text_token_is_refused():
    # It adds or removes a token: the vocabulary, and so the embedding, change.
    old = tiny_config(**{"data.tokenizer": "bpe"}).to_dict()
    new = tiny_config(**{"data.tokenizer": "bpe", "data.end_of_text": True}).to_dict()
    refused, allowed = config_changes(old, new)
    assert refused == ["data.end_of_text: False -> True"] and allowed == []


def test_resuming_says_the_allowed_changes_and_another_device_count():
    meta = Meta.from_json({"config": tiny_config().to_dict(), "device_count": 8})
    new = tiny_config(**{"train.num_steps": 99}).to_dict()
    changed, devices = check_resumable(meta, new, "ck/5", devices=1)
    assert changed == "resuming with changed settings: train.num_steps: 20 -> 99"
    assert devices.startswith("note: the checkpoint was written with 8 device(s), this run has 1")
    assert check_resumable(meta, meta.config, "ck/5", devices=8) == []
    with pytest.raises(UserError, match=r"cannot resume from ck/5: .*model.num_heads: 2 -> 4"):
        check_resumable(meta, tiny_config(**{"model.num_heads": 4}).to_dict(), "ck/5", 8)


def test_resume_step_goes_back_once_along_a_line_of_checkpoints():
    # (The whole story, with real runs: test_checkpoint.py.)
    config = tiny_config(**{"train.resume_step": 4}).to_dict()
    newest = lambda points, **changes: (30, Meta.from_json({"branch_points": points, "config":
        tiny_config(**{"train.resume_step": 8, **changes}).to_dict()}))
    assert not continues_branch(None, 4, config, "ck")  # Nothing after step 4.
    assert not continues_branch(newest([]), 4, config, "ck")  # Another run's: go back.
    assert not continues_branch(newest([8]), 4, config, "ck")
    assert not continues_branch((30, Meta.from_json({"branch_points": "4", "config": config})), 4, config, "ck")
    # Went back to 4, then (another command) to 8: the first command again goes on too.
    assert continues_branch(newest([4, 8]), 4, config, "ck")
    with pytest.raises(UserError, match=r"resume_step=4: the checkpoints after step 4 in ck "
                                        r"\(the newest is 30\) were trained from step 4 already, "
                                        r"with other settings \(train.num_steps: 20 -> 99\)"):
        continues_branch(newest([4], **{"train.num_steps": 20}), 4,
                         tiny_config(**{"train.num_steps": 99}).to_dict(), "ck")


def test_resuming_with_a_different_model_shape_is_refused(tmp_path):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {5: (fresh_state(config), None)})
    changed = tiny_config(**{"model.num_heads": 4, "model.block_size": 32})
    with pytest.raises(UserError) as e:
        loop.train_and_evaluate(changed, workdir)
    assert ("model.block_size: 16 -> 32; model.num_heads: 2 -> 4" in str(e.value)
            and "checkpoints/5" in str(e.value)), str(e.value)
