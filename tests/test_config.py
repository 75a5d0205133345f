"""The config is checked up front and every problem names its field."""

import pytest

from conftest import tiny_config
from smallgpt_jax.config import validate
from smallgpt_jax.errors import UserError


def test_default_and_shipped_configs_are_valid():
    import importlib.util, glob, os
    from conftest import ROOT
    validate(tiny_config())
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        spec = importlib.util.spec_from_file_location("cfg", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        validate(module.get_config())


@pytest.mark.parametrize("field,value,message", [
    ("model.num_heads", 3, "embed_dim=32 is not divisible by config.model.num_heads=3"),
    ("model.num_layers", 0, "config.model.num_layers=0 must be a positive integer"),
    ("model.embed_dim", -8, "config.model.embed_dim=-8 must be a positive integer"),
    ("model.dropout", 1.0, "config.model.dropout=1.0 must be in [0, 1)"),
    ("model.dropout", -0.1, "config.model.dropout=-0.1 must be in [0, 1)"),
    ("model.pos_encoding", "alibi", "config.model.pos_encoding='alibi' is not one of"),
    ("train.batch_size", 0, "config.train.batch_size=0 must be a positive integer"),
    ("train.learning_rate", -1.0, "config.train.learning_rate=-1.0 must not be negative"),
    ("data.train_fraction", 1.0, "config.data.train_fraction=1.0 must be strictly between"),
    ("train.grad_accum_steps", 3, "batch_size=8 is not divisible by config.train.grad_accum_steps=3"),
    ("train.resume_step", -5, "config.train.resume_step=-5 must be -1"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(UserError) as e:
        validate(tiny_config(**{field: value}))
    assert message in str(e.value)
