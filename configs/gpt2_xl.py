"""GPT-2 xl: configs/gpt2_small.py's recipe at 48 blocks, 1600 wide, 25 heads
(about 1.56B parameters; that file's docstring says how they are counted)."""

import os

from smallgpt_jax.cli.config_files import load_module


def get_config():
    small = load_module(os.path.join(os.path.dirname(__file__), "gpt2_small.py"))
    config = small.get_config()
    config.name = "gpt2_xl"
    config.model.num_layers, config.model.embed_dim, config.model.num_heads = 48, 1600, 25
    return config
