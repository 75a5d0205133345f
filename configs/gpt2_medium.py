"""GPT-2 medium: configs/gpt2_small.py's recipe at 24 blocks, 1024 wide, 16 heads
(about 355M parameters; that file's docstring says how they are counted)."""

import os

from smallgpt_jax.cli.config_files import load_module


def get_config():
    small = load_module(os.path.join(os.path.dirname(__file__), "gpt2_small.py"))
    config = small.get_config()
    config.name = "gpt2_medium"
    config.model.num_layers, config.model.embed_dim, config.model.num_heads = 24, 1024, 16
    return config
