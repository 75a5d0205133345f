"""GPT-2 large: configs/gpt2_small.py's recipe at 36 blocks, 1280 wide, 20 heads
(about 774M parameters; that file's docstring says how they are counted)."""

import os

from smallgpt_jax.cli.config_files import load_module


def get_config():
    small = load_module(os.path.join(os.path.dirname(__file__), "gpt2_small.py"))
    config = small.get_config()
    config.name = "gpt2_large"
    config.model.num_layers, config.model.embed_dim, config.model.num_heads = 36, 1280, 20
    return config
