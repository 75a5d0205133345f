"""What Muon costs per step: the same config's compiled train step with
AdamW and with Muon, timed in alternating blocks in one process.

    python -m benchmarks.muon_overhead --config=configs/speedrun_char.py [--repeats=20] [--rounds=4]

Both steps are `benchmarks.train_step.JaxStep` (the loop's data-parallel step,
compiled ahead of time, on a fixed batch); only config.train.optimizer
differs. Blocks of --repeats steps alternate between the two, --rounds
times, so a change of machine load hits both. Prints the median wall and
CPU seconds per step of each (over the blocks' means) and Muon's overhead in % of the AdamW step.
"""

from __future__ import annotations

import statistics

from absl import app, flags

# Its flags serve here: --config, --warmup, --repeats (per block), --rounds.
from benchmarks.train_step import JaxStep, vocab_size_for
from smallgpt_jax.system import runtime

FLAGS = flags.FLAGS


def main(_) -> None:
    runtime.setup_process()
    runtime.setup_run("")  # No persistent cache: both compile alike.
    steps = {}
    for opt in ("adamw", "muon"):
        config = FLAGS.config.copy_and_resolve_references()
        config.train.optimizer = opt
        config.model.dtype = runtime.resolve_dtype(config.model.dtype, "cpu")
        steps[opt] = JaxStep(config, vocab_size_for(config))
        steps[opt].run(FLAGS.warmup, timed=False)
        steps[opt].cpu_times.clear()  # The warm-up's is not a timed block.
    wall = {opt: [] for opt in steps}
    for _ in range(FLAGS.rounds):
        for opt, step in steps.items():
            wall[opt] += step.run(FLAGS.repeats)
    # JaxStep.run gives one figure per block: its mean seconds per step.
    med = {opt: statistics.median(w) for opt, w in wall.items()}
    cpu = {opt: statistics.median(s.cpu_times) for opt, s in steps.items()}
    for opt in steps:
        print(f"{opt:6s} median {1e3 * med[opt]:7.2f} ms/step wall, "
              f"{1e3 * cpu[opt]:7.2f} ms/step CPU (median of {len(wall[opt])} blocks of "
              f"{FLAGS.repeats} steps)")
    print(f"Muon overhead: {100 * (med['muon'] / med['adamw'] - 1):+.1f}% wall, "
          f"{100 * (cpu['muon'] / cpu['adamw'] - 1):+.1f}% CPU per step")


if __name__ == "__main__":
    app.run(main)
