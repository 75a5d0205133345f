"""Depth against positional encoding: does RoPE help more as the model gets deeper?

    ./launch.sh experiments/depth_sweep.py --parallel=2
    ./launch.sh tensorboard runs/depth_sweep

A 3 x 2 grid over configs/char_cpu.py: 1, 2 or 4 blocks, each with learned
absolute position embeddings or rotary embeddings (RoPE), 500 steps each.
"""

from smallgpt_jax import sweep

CONFIG = "configs/char_cpu.py"
# Set in every trial (not part of the trial names).
FIXED = {"train.num_steps": 500, "train.warmup_steps": 50, "train.eval_every": 100,
         "train.checkpoint_every": 100}


def get_sweep():
    return sweep.product(sweep.values("model.num_layers", [1, 2, 4]),
                         sweep.values("model.pos_encoding", ["learned", "rope"]))
