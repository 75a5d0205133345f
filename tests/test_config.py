"""The config is checked up front and every problem names its field."""

import pytest

from conftest import tiny_config
from smallgpt_jax.config import validate
from smallgpt_jax.errors import UserError


def test_default_and_shipped_configs_are_valid():
    import glob, os
    from conftest import ROOT
    from smallgpt_jax.config_files import load_config
    validate(tiny_config())
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        validate(load_config(path))


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


@pytest.mark.parametrize("field", ["train.learning_rate", "train.weight_decay"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_infinite_rates_are_refused_before_training(field, value):
    with pytest.raises(UserError, match=rf"config.{field}={value} must not be negative, nor NaN"):
        validate(tiny_config(**{field: value}))


def test_a_config_missing_fields_or_numbers_or_not_a_config_dict_is_one_error():
    config = tiny_config()
    del config.train["weight_decay"]
    with pytest.raises(UserError, match="no field train.weight_decay; every field of "
                                        "base_config"):
        validate(config)
    with pytest.raises(UserError, match=r"config.train.learning_rate=None must be a number"):
        validate(tiny_config(**{"train.learning_rate": None}))
    with pytest.raises(UserError, match="the config is a dict, not an ml_collections ConfigDict"):
        validate(tiny_config().to_dict())


@pytest.mark.parametrize("folder,body,message", [
    ("", "X = 1\n", "config file {path} has no get_config() function"),
    ("", "def get_config():\n    return {'train': {'num_steps': 1}}\n",
     "a dict, not an ml_collections ConfigDict"),
    ("a:b", "from configs.char_cpu import get_config\n",
     "config file {path}: its path contains ':', which ml-collections reads as 'FILE:ARGUMENT'"),
])
def test_config_files_that_cannot_be_used_are_one_line_naming_the_file(
        tmp_path, folder, body, message):
    from conftest import run_cli
    path = tmp_path / folder / "my_config.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    proc = run_cli([f"--config={path}", f"--workdir={tmp_path / 'run'}",
                    "--config.train.num_steps=1"])
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and message.format(path=path) in err, err


def test_load_config_reads_overrides_as_the_command_line_does(tmp_path):
    import os
    from conftest import ROOT
    from smallgpt_jax.config_files import load_config
    path = os.path.join(ROOT, "configs", "char_cpu.py")
    base = load_config(path)
    c = load_config(path, ["model.num_layers=2", "model.use_bias=false",
                           "train.learning_rate=3e-4", "model.pos_encoding=rope"])
    assert (c.model.num_layers, c.model.use_bias, c.train.learning_rate,
            c.model.pos_encoding) == (2, False, 3e-4, "rope")
    assert base.model.num_layers != 2 and base.model.use_bias  # A fresh config each time.
    with pytest.raises(UserError, match=r"--config.model.num_layer: the config has no field "
                                        r"model.num_layer \(did you mean model.num_layers\?\)"):
        load_config(path, ["model.num_layer=2"])
    with pytest.raises(UserError, match=r"--config.model.num_layers='x' is not a valid int"):
        load_config(path, ["model.num_layers=x"])
    with pytest.raises(UserError, match="config file .*nope.py does not exist"):
        load_config(str(tmp_path / "nope.py"))
