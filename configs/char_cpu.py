"""The README's default: a character GPT trained on a laptop CPU in ~3 minutes.

0.8M parameters (4 layers, 4 heads, 128 wide, context 64, no dropout: too
small and too briefly trained to overfit much), batch 16, 2,200 steps: about
2.3M tokens, 2.2 passes over Tiny Shakespeare's training split. At this size
more steps beat a bigger model in a fixed time budget, and, for the same
tokens, more steps of a smaller batch beat fewer of a larger one; the higher
peak learning rate (2e-3) makes up for the short schedule. The model's shape,
dropout, warmup (100 steps), final learning rate (1e-4) and evaluation length
(20 batches) are base_config()'s defaults; this file sets only what differs.
"""

from smallgpt_jax.config import base_config


def get_config():
    config = base_config()
    config.name = "char_cpu"
    config.train.batch_size = 16
    config.train.num_steps = 2200
    config.train.learning_rate = 2e-3
    # A 10-point validation curve. A sample with its attention image costs
    # more than an evaluation's losses, a save about a third of them
    # (benchmarks/eval_cost.py): so the sample and the image at the middle
    # and the end only, and the periodic saves on evaluation steps, where a
    # new best validation loss saves anyway (one save, not two).
    config.train.eval_every = 220
    config.train.sample_every = 1100
    config.train.checkpoint_every = 440
    return config
