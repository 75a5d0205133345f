r"""Command line: train a config.

    python -m smallgpt_jax.main --config=configs/char_cpu.py \
        [--workdir=runs/char_cpu] [--config.train.num_steps=500 ...]

Every field of the config can be set with --config.SECTION.FIELD=VALUE;
smallgpt_jax/config.py lists them all. A sweep file (experiments/*.py) runs
with ./launch.sh or python -m smallgpt_jax.sweep instead.

This file only parses flags and calls library code (`loop.train_and_evaluate`).
"""

from __future__ import annotations

import os

from smallgpt_jax.cli import app as cli
from smallgpt_jax.system import runtime

if __name__ == "__main__":  # Before the slower imports below.
    cli.quiet_ctrl_c()
    cli.quiet_stop_signals()

from absl import flags  # noqa: E402

from smallgpt_jax.cli.config_files import define_config_flag  # noqa: E402

_CONFIG = define_config_flag("Path to a config file, e.g. configs/char_cpu.py.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and samples go (default runs/<config name>).")


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join(
        "runs", os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0])
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    runtime.use_default_xla_flags()  # Before anything (joining a job, too) starts JAX.
    import jax
    from smallgpt_jax.system import distributed  # After flags: fast --help.
    from smallgpt_jax.training import evaluation, loop, run_summary
    with cli.user_errors():
        # Joins a multi-host job when the environment describes one; before
        # anything touches JAX devices.
        distributed.maybe_initialize()
        # Its wall time counts from this process's start: imports included.
        result = loop.train_and_evaluate(config, workdir, started=run_summary.process_started())
        if jax.process_index() != 0:  # In a multi-host job only process 0 prints.
            return
        print("\n--- sample from the final model ---")
        print(evaluation.sample_text(result.params, result.model_config, result.tokenizer,
                                     config.train.sample_tokens * 2, config.seed + 1))
        print("\n" + run_summary.end_of_run(result.metrics, workdir))


def run() -> None:
    flags.mark_flag_as_required("config")
    cli.run_app(main)


if __name__ == "__main__":
    run()
