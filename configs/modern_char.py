"""char_cpu.py's model with the choices most recent GPTs (LLaMA and after)
make: rotary position embeddings, RMSNorm, a SwiGLU feed-forward layer (with
2/3 the hidden width, so the parameter count stays comparable) and no biases."""

import os

from smallgpt_jax.cli.config_files import load_config


def get_config():
    # Same scale, data and training as char_cpu.py (configs/ is not a package).
    config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "char_cpu.py"))
    config.name = "modern_char"
    config.model.pos_encoding = "rope"
    config.model.norm = "rmsnorm"
    config.model.activation = "swiglu"
    config.model.use_bias = False
    return config
