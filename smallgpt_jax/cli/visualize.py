r"""Command line: draw a picture of a trained run as a PNG.

    python -m smallgpt_jax.visualize --workdir=runs/char_cpu --what=attention \
        --prompt="ROMEO: " --output=attention.png
    python -m smallgpt_jax.visualize --workdir=runs/char_cpu --what=curves --output=curves.png
    python -m smallgpt_jax.visualize --workdir=runs/char_cpu --what=embeddings --output=emb.png

`attention` and `embeddings` read the parameters from a checkpoint
(`--step=latest|best|N`); `curves` reads only the TensorBoard event files.
The pictures themselves are drawn by `smallgpt_jax.analysis.pictures`.
"""

from __future__ import annotations

import os

from absl import flags

from smallgpt_jax.cli import app as cli
from smallgpt_jax.system import runtime

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir.")
_WHAT = flags.DEFINE_enum("what", "attention", ["attention", "curves", "embeddings"],
                          "Which picture to draw.")
_PROMPT = flags.DEFINE_string("prompt", "ROMEO:\nBut soft", "Text whose attention to draw.")
_OUTPUT = flags.DEFINE_string("output", None, "PNG file to write (default <workdir>/<what>.png).")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint: 'latest', 'best' or a step number.")
_DPI = flags.DEFINE_integer("dpi", 100, "Resolution of the PNG (dots per inch).")
MAX_DPI = 1000


def main(argv: list[str]) -> None:
    workdir = _WORKDIR.value
    if not os.path.isdir(workdir):
        cli.fail(f"--workdir={workdir} is not a directory; pass a training run's workdir.")
    if not 1 <= _DPI.value <= MAX_DPI:  # Past that, one picture takes gigabytes.
        cli.fail(f"--dpi={_DPI.value} must be between 1 and {MAX_DPI}.")
    output = _OUTPUT.value or os.path.join(workdir, f"{_WHAT.value}.png")
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    from smallgpt_jax.analysis import pictures as viz  # Imported after flags: keeps --help fast.
    with cli.user_errors():
        step = cli.parse_step(_STEP.value)
        name = os.path.basename(os.path.normpath(workdir))
        if _WHAT.value == "curves":
            fig = viz.plot_curves(workdir, title=name)
        else:
            # Only for the model's pictures: loads orbax.
            from smallgpt_jax.checkpoint import reader as loading
            params, model_config, tokenizer = loading.load_params(workdir, step)
            if _WHAT.value == "attention":
                fig, _ = viz.plot_attention(params, model_config, tokenizer, _PROMPT.value)
            else:
                fig = viz.plot_embeddings(params, tokenizer, title=f"{name}: token embeddings, PCA")
        viz.save_figure(fig, output, dpi=_DPI.value)
    print(f"wrote {output}")


def run() -> None:
    flags.mark_flag_as_required("workdir")
    cli.run_app(main)


if __name__ == "__main__":
    run()
