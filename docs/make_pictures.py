"""Regenerates the pictures in docs/images/ from a real configs/char_cpu.py run.

    python docs/make_pictures.py [--workdir=runs/char_cpu_pictures] [--config.x.y=v ...]

Trains configs/char_cpu.py in --workdir (about three minutes on a laptop CPU;
any --config.* override is passed on, e.g. fewer steps on a slow machine),
then draws, with `smallgpt_jax.viz`:

- docs/images/curves.png: the run's train/val loss curves;
- docs/images/attention.png: every layer's and head's attention on a prompt;
- docs/images/embeddings.png: the 2-D PCA of the 65 character embeddings.

It trains in this process and draws from the parameters it gets back, so
it needs no checkpoint. Run it from the repository root.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # Works without `pip install -e .`.

from smallgpt_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "char_cpu.py"), "The run's config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/char_cpu_pictures", "Where the run goes.")
_IMAGES = flags.DEFINE_string("images", os.path.join(ROOT, "docs", "images"),
                              "Folder the PNGs are written to.")
PROMPT = "ROMEO:\nO, she doth teach"  # Short enough for readable axis labels.


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {' '.join(argv[1:])!r}")
    cli.setup_logging()
    from smallgpt_jax import loop, viz
    config = _CONFIG.value
    with cli.user_errors():
        result = loop.train_and_evaluate(config, _WORKDIR.value)
        params, model_config, tok = result["params"], result["model_config"], result["tokenizer"]
        steps = config.train.num_steps
        val = result.get("eval/val_loss", float("nan"))
        figures = {
            "curves": viz.plot_curves(
                _WORKDIR.value, title=f"configs/char_cpu.py, {steps} steps "
                f"(final val loss {val:.3f})"),
            "attention": viz.plot_attention(params, model_config, tok, PROMPT,
                                            panel_inches=2.2)[0],
            "embeddings": viz.plot_embeddings(
                params, tok, title=f"char_cpu after {steps} steps: character embeddings, PCA"),
        }
        for name, fig in figures.items():
            path = viz.save_figure(fig, os.path.join(_IMAGES.value, f"{name}.png"), dpi=100)
            print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")


if __name__ == "__main__":
    cli.run_app(main)
