"""The config is checked up front and every problem names its field."""

import pytest

from conftest import tiny_config
from smallgpt_jax.config import validate
from smallgpt_jax.system.errors import UserError


def test_default_and_shipped_configs_are_valid():
    import glob, os
    from conftest import ROOT
    from smallgpt_jax.cli.config_files import load_config
    validate(tiny_config())
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        # Whether each fits this machine's memory is not the point here (gpt1.py
        # is for a GPU: on a CPU it needs more than 20 GB).
        validate(load_config(path), machine=False)


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
    from smallgpt_jax.cli.config_files import load_config
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


# --- Hostile sizes: refused by validate, with one line, before any work ---

HUGE = 2**70  # Past 64 bits.


@pytest.mark.parametrize("field,value,message", [
    ("seed", -1, "config.seed=-1 must be an integer from 0 to 4,294,967,295"),
    ("seed", 2**32, "config.seed=4294967296 must be an integer from 0 to 4,294,967,295"),
    ("seed", HUGE, f"config.seed={HUGE} must be an integer from 0"),
    ("train.num_steps", 2**31, "config.train.num_steps=2147483648 is too large: at most "
                               "2,147,483,647 (the step counter is a 32-bit integer)"),
    ("train.warmup_steps", HUGE, f"config.train.warmup_steps={HUGE} is too large"),
    ("train.eval_every", HUGE, f"config.train.eval_every={HUGE} is too large"),
    ("train.resume_step", HUGE, f"config.train.resume_step={HUGE} is too large"),
    ("train.sample_tokens", 10**9, "config.train.sample_tokens=1000000000 is too large: at "
                                   "most 100,000"),
    ("data.vocab_size", HUGE, f"config.data.vocab_size={HUGE} is too large"),
    # Sizes that only memory limits: the line names the largest part and its fields.
    ("train.batch_size", 10**9, "activations (train.batch_size=1000000000"),
    ("train.batch_size", HUGE, f"activations (train.batch_size={HUGE}"),
    ("train.eval_steps", 10**9, "the evaluation batches (train.eval_steps=1000000000"),
    ("train.eval_steps", HUGE, f"the evaluation batches (train.eval_steps={HUGE}"),
    ("model.block_size", 10**8, "model.block_size=100000000"),
    ("model.embed_dim", 10**6, "the parameters and AdamW state (model.num_layers=2, "
                               "model.embed_dim=1000000"),
    ("model.embed_dim", HUGE, "the parameters and AdamW state"),
    ("model.num_layers", 10**9, "model.num_layers=1000000000"),
    ("model.mlp_ratio", 10**8, "model.mlp_ratio=100000000"),
])
def test_hostile_values_are_refused_in_one_line(field, value, message):
    with pytest.raises(UserError) as e:
        validate(tiny_config(**{field: value}), machine=True)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_vocabulary_too_large_for_memory_is_refused_before_it_is_learned():
    config = tiny_config(**{"data.tokenizer": "bpe", "data.vocab_size": 10**9})
    with pytest.raises(UserError, match=r"data.vocab_size=1000000000\).*; "
                                        r"config.data.vocab_size fits up to [\d,]+ here"):
        validate(config)


def sections(config):
    """The sections system/footprint.py reads."""
    return config.model, config.train, config.data


def test_the_memory_line_says_how_far_each_size_can_go():
    """With 1 GB: the need of the largest part's field at the value the line
    gives fits, one more does not; on a GPU the activations do not count."""
    from smallgpt_jax.system import footprint
    cpu, gb = {"JAX_PLATFORMS": "cpu"}, 10**9
    config = tiny_config(**{"train.eval_steps": 10**6})
    with pytest.raises(UserError) as e:
        footprint.check(*sections(config), cpu, available=gb)
    fits = int(str(e.value).split("train.eval_steps fits up to ")[1].split(" ")[0]
               .replace(",", ""))
    footprint.check(*sections(tiny_config(**{"train.eval_steps": fits})), cpu, available=gb)
    with pytest.raises(UserError):
        footprint.check(*sections(tiny_config(**{"train.eval_steps": fits + 1})), cpu,
                        available=gb)
    attention = tiny_config(**{"model.block_size": 4096})  # [8, 2, 4096, 4096] per layer.
    with pytest.raises(UserError, match="activations"):
        footprint.check(*sections(attention), cpu, available=gb)
    footprint.check(*sections(attention), {"JAX_PLATFORMS": "cuda"}, available=gb)


@pytest.mark.parametrize("overrides", [
    {}, {"model.activation": "swiglu", "model.tie_embeddings": False},
    {"model.pos_encoding": "rope", "model.use_bias": False, "data.tokenizer": "bpe",
     "data.vocab_size": 300},
])
def test_the_parameter_count_it_uses_is_a_close_lower_bound(overrides):
    import jax
    from smallgpt_jax import train
    from smallgpt_jax.model import model_config
    from smallgpt_jax.system import footprint
    config = tiny_config(**overrides)
    vocab = footprint.vocabulary_floor(config.data) or 13
    shapes = jax.eval_shape(lambda: train.init_state(model_config(config.model, vocab),
                                                     train.make_optimizer(config.train)[0], 0))
    actual = sum(p.size for p in jax.tree_util.tree_leaves(shapes.params))
    floor = footprint.parameter_floor(config.model, config.data) + (
        vocab * 32 if config.data.tokenizer == "char" else 0)
    assert 0.9 * actual <= floor <= actual


@pytest.mark.parametrize("override,message", [
    ("--config.train.eval_steps=1000000000", "for the evaluation batches"),
    (f"--config.seed={HUGE}", f"config.seed={HUGE} must be an integer from 0"),
])
def test_hostile_values_on_the_command_line_write_nothing(override, message, tmp_path):
    from conftest import run_cli
    workdir = tmp_path / "run"
    proc = run_cli(["--config=configs/char_cpu.py", f"--workdir={workdir}", override])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
    assert message in proc.stderr
    assert not workdir.exists()
