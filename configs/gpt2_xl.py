"""GPT-2 xl: configs/gpt2_small.py's recipe at 48 blocks, 1600 wide, 25 heads: 1,557,686,400 parameters
(that file's docstring says how they are counted)."""

import os

from smallgpt_jax.cli.config_files import load_module


def get_config():
    here = os.path.dirname(__file__)
    return load_module(os.path.join(here, "gpt2_small.py")).get_config("xl")
