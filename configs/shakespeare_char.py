"""The well-known "baby GPT" recipe for Tiny Shakespeare characters
(6 layers, 6 heads, 384 wide, context 256), for comparison with published
numbers (about 1.47 validation loss after 5,000 steps)."""

from smallgpt_jax.config import base_config


def get_config():
    config = base_config()
    config.name = "shakespeare_char"
    config.model.num_layers = 6
    config.model.num_heads = 6
    config.model.embed_dim = 384
    config.model.block_size = 256
    config.model.dropout = 0.2
    config.train.batch_size = 64
    config.train.learning_rate = 1e-3
    config.train.min_learning_rate = 1e-4
    config.train.warmup_steps = 100
    config.train.beta2 = 0.99
    config.train.num_steps = 5000
    config.train.eval_every = 250
    config.train.eval_steps = 100
    config.train.checkpoint_every = 500
    return config
