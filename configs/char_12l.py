"""A 12-layer character GPT: GPU-sized (on a CPU it starts and trains, slowly)."""

from smallgpt_jax.config import base_config


def get_config():
    config = base_config()
    config.name = "char_12l"
    config.model.num_layers = 12
    config.model.num_heads = 8
    config.model.embed_dim = 384
    config.model.block_size = 64
    config.model.dropout = 0.2
    config.model.scan_layers = True  # Compile one block, not twelve.
    config.train.batch_size = 256
    config.train.learning_rate = 3e-4
    config.train.min_learning_rate = 3e-5
    config.train.num_steps = 10_000
    config.train.eval_every = 500
    config.train.eval_steps = 100
    config.train.checkpoint_every = 1000
    return config
