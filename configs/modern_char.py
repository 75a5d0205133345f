"""char_cpu.py's model with the choices most recent GPTs (LLaMA and after)
make: rotary position embeddings, RMSNorm, a SwiGLU feed-forward layer (with
2/3 the hidden width, so the parameter count stays comparable) and no biases."""

import importlib.util
import os


def _char_cpu():
    # Load the sibling config file (configs/ is not a package).
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "char_cpu.py")
    spec = importlib.util.spec_from_file_location("char_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _char_cpu()  # Same scale, data and training as char_cpu.py.
    config.name = "modern_char"
    config.model.pos_encoding = "rope"
    config.model.norm = "rmsnorm"
    config.model.activation = "swiglu"
    config.model.use_bias = False
    return config
