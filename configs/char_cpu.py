"""The README's default: a character GPT trained on a laptop CPU in ~3 minutes."""

from smallgpt_jax.config import base_config


def get_config():
    config = base_config()
    config.name = "char_cpu"
    return config
