"""GPT-2 large: configs/gpt2_small.py's recipe at 36 blocks, 1280 wide, 20 heads: 774,090,240 parameters
(that file's docstring says how they are counted)."""

import os

from smallgpt_jax.cli.config_files import load_module


def get_config():
    here = os.path.dirname(__file__)
    return load_module(os.path.join(here, "gpt2_small.py")).get_config("large")
