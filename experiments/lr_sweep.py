"""Which peak learning rate trains the CPU character model best in 500 steps?

    ./launch.sh experiments/lr_sweep.py --parallel=2
    ./launch.sh tensorboard runs/lr_sweep

Four trials of configs/char_cpu.py, shortened to 500 steps (with warmup and
evaluation scaled to match) so the whole sweep fits in minutes on a laptop.
"""

from smallgpt_jax import sweep

CONFIG = "configs/char_cpu.py"
# Set in every trial (not part of the trial names).
FIXED = {"train.num_steps": 500, "train.warmup_steps": 50, "train.eval_every": 100,
         "train.checkpoint_every": 100}


def get_sweep():
    # min_learning_rate (1e-4) must stay below the peak, so the sweep starts at 3e-4.
    return sweep.values("train.learning_rate", [3e-4, 1e-3, 3e-3, 1e-2])
