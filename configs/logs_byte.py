"""A byte-level GPT that learns what normal system logs look like.

Used by docs/14-scoring-and-representations.md: trained on the normal logs
that experiments/make_logs.py writes, it then scores a log with injected
anomalies (python -m smallgpt_jax.score) and the unusual lines stand out.
Bytes, not characters: a log can hold any character, and a byte vocabulary
has no unknown ones. The context (192 bytes) holds about two log lines,
so a line is judged with the line before it (a request's 'done' line
expects its 'start' line). Logs are repetitive: a small model (2 layers, 64
wide, 0.13M parameters) learns them in 600 steps, a few minutes on a CPU.
"""

from smallgpt_jax.config import base_config


def get_config():
    config = base_config()
    config.name = "logs_byte"
    config.data.path = "runs/logs/train.log"  # Written by experiments/make_logs.py.
    config.data.tokenizer = "byte"
    config.model.num_layers = 2
    config.model.embed_dim = 64
    config.model.block_size = 192
    config.train.batch_size = 16
    config.train.num_steps = 600
    config.train.learning_rate = 2e-3
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    config.train.sample_tokens = 0  # Samples of log lines teach little; scoring is the test.
    return config
