"""Pictures of trained runs (docs/make_pictures.py --what=run and --what=overfit).

Each run trains in this process (a finished run in the same workdir is
reused: the loop finds nothing to train and returns its parameters), and
its pictures are drawn from the parameters it returns and its TensorBoard
scalars. The numbers the pages quote are returned as `facts`, which
make_pictures.py writes into each picture's record.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from smallgpt_jax import data
from smallgpt_jax.analysis import pictures as viz
from smallgpt_jax.training import loop


def eval_losses(workdir: str) -> dict:
    """The run's evaluations: steps, train and validation loss, and their gap."""
    scalars = viz.read_scalars(workdir)
    steps, train = scalars["eval/train_loss"]
    val = scalars["eval/val_loss"][1]
    return {"steps": steps.tolist(), "train_loss": np.round(train, 4).tolist(),
            "val_loss": np.round(val, 4).tolist(), "gap": np.round(val - train, 4).tolist()}


def draw_run(config: ml_collections.ConfigDict, workdir: str, prompt: str
             ) -> tuple[dict[str, Figure], dict]:
    """Trains `config` in `workdir` (or reuses it); its curves, attention and embeddings."""
    result = loop.train_and_evaluate(config.copy_and_resolve_references(), workdir)
    params, model_config, tok = result.params, result.model_config, result.tokenizer
    losses = eval_losses(workdir)
    steps = losses["steps"][-1]
    figures = {
        "curves": viz.plot_curves(workdir, title=f"configs/char_cpu.py, {steps} steps "
                                  f"(final val loss {losses['val_loss'][-1]:.3f})"),
        "attention": viz.plot_attention(params, model_config, tok, prompt,
                                        panel_inches=2.2)[0],
        "embeddings": viz.plot_embeddings(
            params, tok, title=f"char_cpu after {steps} steps: character embeddings, PCA"),
    }
    facts = {"curves": losses, "attention": {"prompt": prompt, "step": steps},
             "embeddings": {"step": steps}}
    return figures, facts


def small_text(folder: str, name: str) -> str:
    """Writes the first 1% of Tiny Shakespeare to folder/name (once); returns its path."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        with open(data.find_dataset("tinyshakespeare"), encoding="utf-8") as f:
            text = f.read()
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text[:len(text) // 100])
    return path


def draw_overfit(config: ml_collections.ConfigDict, folder: str, dropouts: tuple[float, ...]
                 ) -> tuple[dict[str, Figure], dict]:
    """Trains `config` (its data.path is a file name in `folder`, written
    here) once per dropout rate, in folder/dropout_R; both runs' curves."""
    path = small_text(folder, config.data.path)
    runs = {}
    for rate in dropouts:
        c = config.copy_and_resolve_references()
        c.data.path, c.model.dropout = path, rate
        workdir = os.path.join(folder, f"dropout_{rate}")
        loop.train_and_evaluate(c, workdir)
        runs[rate] = eval_losses(workdir)
    return {"overfit": overfit_figure(runs, config)}, {
        "overfit": {f"dropout {rate}": losses for rate, losses in runs.items()}}


def overfit_figure(runs: dict[float, dict], config: ml_collections.ConfigDict) -> Figure:
    """Train and validation loss at each evaluation, one panel per dropout rate."""
    fig = Figure(figsize=(7.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(runs), sharey=True)
    for ax, (rate, losses) in zip(np.atleast_1d(axes), runs.items()):
        steps = losses["steps"]
        ax.plot(steps, losses["train_loss"], "o-", ms=3, label="train loss (eval)")
        ax.plot(steps, losses["val_loss"], "o-", ms=3, label="val loss (eval)")
        best = int(np.argmin(losses["val_loss"]))
        ax.annotate(f"lowest val {losses['val_loss'][best]:.2f}\nat step {steps[best]}",
                    (steps[best], losses["val_loss"][best]), fontsize=7, xytext=(0, 12),
                    textcoords="offset points", ha="center")
        ax.set_title(f"model.dropout = {rate}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("cross-entropy (nats per character)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"char_cpu on the first 1% of Tiny Shakespeare, {config.train.num_steps} steps",
                 fontsize=9)
    return fig
