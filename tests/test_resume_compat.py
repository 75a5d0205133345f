"""What a resumed run may change: settings yes, the model's or tokenizer's shape no."""

import pytest

from conftest import tiny_config
from smallgpt_jax import loop
from smallgpt_jax.errors import UserError
from smallgpt_jax.resume_compat import config_changes
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


def test_switching_the_end_of_text_token_is_refused():
    # It adds or removes a token: the vocabulary, and so the embedding, change.
    old = tiny_config(**{"data.tokenizer": "bpe"}).to_dict()
    new = tiny_config(**{"data.tokenizer": "bpe", "data.end_of_text": True}).to_dict()
    refused, allowed = config_changes(old, new)
    assert refused == ["data.end_of_text: False -> True"] and allowed == []


def test_resuming_with_a_different_model_shape_is_refused(tmp_path):
    config, workdir = tiny_config(), str(tmp_path / "run")
    save_steps(workdir, config, {5: (fresh_state(config), None)})
    changed = tiny_config(**{"model.num_heads": 4, "model.block_size": 32})
    with pytest.raises(UserError) as e:
        loop.train_and_evaluate(changed, workdir)
    assert ("model.block_size: 16 -> 32; model.num_heads: 2 -> 4" in str(e.value)
            and "checkpoints/5" in str(e.value)), str(e.value)
