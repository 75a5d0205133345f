"""GPT-2 medium: configs/gpt2_small.py's recipe at 24 blocks, 1024 wide, 16 heads: 354,871,296 parameters
(that file's docstring says how they are counted)."""

import os

from smallgpt_jax.cli.config_files import load_module


def get_config():
    here = os.path.dirname(__file__)
    return load_module(os.path.join(here, "gpt2_small.py")).get_config("medium")
