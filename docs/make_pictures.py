"""Regenerates the pictures in docs/images/, each with a record of what drew it.

    python docs/make_pictures.py [--what=all|ideas|run|overfit] [--workdir=runs/char_cpu_pictures]
        [--config.x.y=v ...]

`--what=ideas` draws the ideas from their definitions and char_cpu's config
(no training, seconds): the causal mask, the heads, the residual stream and
the KV cache, Muon's Newton-Schulz iteration (docs/pictures_of_ideas.py); the whole model, the learning-rate
schedule, the sinusoidal table and a RoPE rotation (docs/pictures_of_model.py).

`--what=run` trains configs/char_cpu.py in --workdir (minutes; a finished
run there is reused, not retrained) and draws its loss curves, every
layer's and head's attention on PROMPT, and the 2-D PCA of the embeddings.

`--what=notebook` runs docs/build_a_gpt.ipynb at full size (minutes) and
saves it with its outputs.

`--what=overfit` trains char_cpu on the first 1% of Tiny Shakespeare,
without and with dropout (OVERFIT; docs/16-overfitting.md gives the same
commands), in --overfit_dir, and draws both runs' curves.

Beside each docs/images/NAME.png goes NAME.json: the config it shows (every
value), the functions that drew it (with a hash of their source), the
commit it was drawn at, and the numbers read off the run. tests/test_pictures.py
fails when a picture's config or drawing code has changed since (`stale`).
Run it from the repository root.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import subprocess
import sys
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # Works without `pip install -e .`; finds pictures_of_*.py.

from smallgpt_jax.cli.config_files import load_config  # noqa: E402
from smallgpt_jax.config import flatten  # noqa: E402

PROMPT = "ROMEO:\nO, she doth teach"  # Short enough for readable axis labels.
CHAR_CPU = "configs/char_cpu.py"
SMALL_TEXT = "shakespeare_1pct.txt"  # The first 1% of Tiny Shakespeare (OVERFIT).
# The overfitting runs: char_cpu on SMALL_TEXT for 1,000 steps (about 100
# passes over its 10,037 training characters), evaluated every 100 steps.
OVERFIT = (f"data.path={SMALL_TEXT}", "train.num_steps=1000", "train.eval_every=100",
           "train.sample_every=1000", "train.checkpoint_every=500")
OVERFIT_DROPOUT = (0.0, 0.2)


class Picture(NamedTuple):
    part: str  # Which --what draws it.
    code: tuple[str, ...]  # The functions that draw it: "module.function".
    config: str | None = None  # The config file whose values it shows.
    overrides: tuple[str, ...] = ()


_IDEAS, _MODEL, _VIZ = "pictures_of_ideas.", "pictures_of_model.", "smallgpt_jax.analysis.pictures."
PICTURES = {
    "causal_mask": Picture("ideas", (_IDEAS + "causal_mask_figure",)),
    "heads": Picture("ideas", (_IDEAS + "heads_figure",), CHAR_CPU),
    "residual_stream": Picture("ideas", (_IDEAS + "residual_stream_figure",)),
    "kv_cache": Picture("ideas", (_IDEAS + "kv_cache_figure", _IDEAS + "kv_cache_steps")),
    "newton_schulz": Picture("ideas", (_IDEAS + "newton_schulz_figure",
                                       "smallgpt_jax.muon.newton_schulz")),
    "model": Picture("ideas", (_MODEL + "model_figure", _MODEL + "param_counts"), CHAR_CPU),
    "schedule": Picture("ideas", (_MODEL + "schedule_figure",
                                  "smallgpt_jax.train.learning_rate_schedule"), CHAR_CPU),
    "sinusoidal": Picture("ideas", (_MODEL + "sinusoidal_figure",
                                    "smallgpt_jax.positions.sinusoidal_table"), CHAR_CPU),
    "rope": Picture("ideas", (_MODEL + "rope_figure", "smallgpt_jax.positions.apply_rope"),
                    CHAR_CPU),
    "curves": Picture("run", (_VIZ + "plot_curves", _VIZ + "read_scalars"), CHAR_CPU),
    "attention": Picture("run", (_VIZ + "plot_attention", _VIZ + "attention_figure",
                                 _VIZ + "attention_maps"), CHAR_CPU),
    "embeddings": Picture("run", (_VIZ + "plot_embeddings", _VIZ + "embedding_pca"), CHAR_CPU),
    "overfit": Picture("overfit", ("pictures_of_runs.overfit_figure",), CHAR_CPU, OVERFIT),
}


# ------------------------------------------------------------------ records

def _function(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def code_sha256(picture: Picture) -> str:
    """A hash of the source of the functions that draw `picture`."""
    source = "".join(inspect.getsource(_function(name)) for name in picture.code)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def config_values(config) -> dict:
    """Every field of a config, dotted, as JSON values."""
    return json.loads(json.dumps(flatten(config.to_dict())))


def with_overrides(config, overrides: tuple[str, ...]):
    """A copy of `config` with "KEY=VALUE" overrides, parsed as --config.KEY=VALUE would be."""
    parsed = flatten(load_config(os.path.join(ROOT, CHAR_CPU), overrides).to_dict())
    out = config.copy_and_resolve_references()
    for override in overrides:
        section, field = override.partition("=")[0].split(".")
        out[section][field] = parsed[f"{section}.{field}"]
    return out


def current_config(picture: Picture) -> dict:
    return config_values(load_config(os.path.join(ROOT, picture.config), picture.overrides))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(name: str, png: str, values: dict | None = None, facts: dict | None = None) -> None:
    """Writes docs/images/NAME.json beside the picture just drawn at `png`."""
    picture = PICTURES[name]
    with open(png, "rb") as f:
        png_sha = hashlib.sha256(f.read()).hexdigest()[:16]
    out = {"picture": f"docs/images/{name}.png", "png_sha256": png_sha,
           "command": f"python docs/make_pictures.py --what={picture.part}",
           "drawn_by": list(picture.code), "code_sha256": code_sha256(picture),
           "commit": _git("rev-parse", "HEAD"),
           "uncommitted_changes": _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                        ":!docs/images") != ""}
    if picture.config:
        values = values if values is not None else current_config(picture)
        out.update(config=picture.config, overrides=list(picture.overrides),
                   config_sha256=hashlib.sha256(json.dumps(values, sort_keys=True).encode())
                   .hexdigest()[:16], config_values=values)
    out["facts"] = facts or {}
    path = os.path.join(os.path.dirname(png), f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


# Config fields that change how a run is computed, not what: not a reason to redraw.
SAME_NUMBERS = frozenset({"parallel"})


def as_drawn(values: dict) -> dict:
    """Config values with the per-platform 'auto' settings resolved as on a
    CPU, where the pictures are drawn: there 'auto' attention is the explicit
    one, 'auto' dropout masks are Threefry's and 'auto' remat is none: the
    same numbers."""
    from smallgpt_jax import dropout, flash_attention, model
    out = dict(values)
    if "model.attention" in out:
        heads, width = out.get("model.num_heads", 1), out.get("model.embed_dim", 1)
        out["model.attention"] = flash_attention.resolve(
            out["model.attention"], "cpu", out.get("model.block_size", 0), heads,
            width // heads)
    if "model.dropout_rng" in out:
        out["model.dropout_rng"] = dropout.resolve(out["model.dropout_rng"], "cpu")
    if "model.remat" in out:
        out["model.remat"] = model.resolve_remat(out["model.remat"], "cpu",
                                                 out.get("model.scan_layers", False))
    return out


def stale(name: str, images: str = os.path.join(HERE, "images")) -> list[str]:
    """Why docs/images/NAME.png no longer shows what it claims ([] if it does).

    A config field added since the picture was drawn is not counted: a new
    switch keeps the old behaviour by default (base_config's rule). Nor is
    `parallel`: how the step is spread over devices, the same numbers on one
    device either way (tests/test_train.py compares pmap and shard_map). Nor
    a setting whose value resolves on a CPU as it did (`as_drawn`)."""
    picture = PICTURES[name]
    with open(os.path.join(images, f"{name}.json"), encoding="utf-8") as f:
        rec = json.load(f)
    with open(os.path.join(images, f"{name}.png"), "rb") as f:
        why = ([] if hashlib.sha256(f.read()).hexdigest()[:16] == rec["png_sha256"] else
               ["the PNG is not the one its record describes"])
    if rec["drawn_by"] != list(picture.code) or rec["code_sha256"] != code_sha256(picture):
        why.append(f"its drawing code changed ({', '.join(picture.code)})")
    if picture.config:
        now = as_drawn(current_config(picture))
        then = as_drawn(rec.get("config_values", {}))
        changed = [f"{k}: {then[k]!r} -> {now.get(k, '(gone)')!r}" for k in then
                   if now.get(k, "(gone)") != then[k] and k not in SAME_NUMBERS]
        if changed or rec.get("overrides") != list(picture.overrides):
            why.append(f"{picture.config} changed since: {'; '.join(changed) or 'overrides'}")
    return why


def save(figures: dict, folder: str, values: dict | None = None,
         facts: dict | None = None) -> None:
    """Writes each figure as NAME.png into `folder`, and its record NAME.json."""
    from smallgpt_jax.analysis import pictures as viz
    for name, fig in figures.items():
        path = viz.save_figure(fig, os.path.join(folder, f"{name}.png"), dpi=100)
        record(name, path, values, (facts or {}).get(name))
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KB) and its record {name}.json")


# ----------------------------------------------------------------- notebook

NOTEBOOK = os.path.join(HERE, "build_a_gpt.ipynb")


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def execute_notebook(path: str = NOTEBOOK) -> None:
    """Runs the notebook top to bottom at full size and saves it with its
    outputs. Each code cell keeps a hash of the source that made its outputs,
    so tests/test_notebook.py can tell outputs that no longer match their cell."""
    import resource
    import time

    import nbclient
    import nbformat
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("NOTEBOOK_SMALL", None)  # The kernel inherits the environment.
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": HERE}}).execute()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # The kernel's, once it has exited.
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata = {"source_sha256": source_sha256(cell.source)}
    nb.metadata["executed"] = {
        "command": "python docs/make_pictures.py --what=notebook", "commit": _git("rev-parse", "HEAD"),
        "wall_seconds": round(time.perf_counter() - start), "kernel_cpu_seconds":
        round(cpu.ru_utime + cpu.ru_stime)}
    nbformat.write(nb, path)
    print(f"ran {path}: {nb.metadata['executed']}")


# ------------------------------------------------------------------ command

def draw_ideas(config) -> dict:
    import pictures_of_ideas as ideas
    import pictures_of_model as model
    m = config.model
    return {"causal_mask": ideas.causal_mask_figure(),
            "heads": ideas.heads_figure(m.embed_dim, m.num_heads),
            "residual_stream": ideas.residual_stream_figure(),
            "kv_cache": ideas.kv_cache_figure(),
            "newton_schulz": ideas.newton_schulz_figure(),
            "model": model.model_figure(config),
            "schedule": model.schedule_figure(config),
            "sinusoidal": model.sinusoidal_figure(config),
            "rope": model.rope_figure(config)}


def _define_flags() -> None:
    """Only when run as a script: importing this file (tests do) defines no flags."""
    from absl import flags

    from smallgpt_jax.cli.config_files import define_config_flag
    define_config_flag("The config the pictures show.", os.path.join(ROOT, CHAR_CPU))
    flags.DEFINE_string("workdir", "runs/char_cpu_pictures", "Where the char_cpu run goes.")
    flags.DEFINE_string("overfit_dir", "runs/overfit_pictures",
                        "Where the overfitting runs and their 1% text go.")
    flags.DEFINE_string("images", os.path.join(HERE, "images"), "Folder the PNGs go to.")
    flags.DEFINE_enum("what", "all", ["all", "ideas", "run", "overfit", "notebook"],
                      "ideas: drawn from definitions; run, overfit: from trained runs; "
                      "notebook: docs/build_a_gpt.ipynb run and saved with its outputs.")


def main(argv: list[str]) -> None:
    from absl import flags

    from smallgpt_jax.cli import app as cli
    from smallgpt_jax.system import runtime
    runtime.setup_process()
    FLAGS = flags.FLAGS
    config, values = FLAGS.config, config_values(FLAGS.config)
    with cli.user_errors():
        if FLAGS.what in ("all", "ideas"):
            save(draw_ideas(config), FLAGS.images, values)
        if FLAGS.what in ("all", "run", "overfit"):
            import pictures_of_runs as runs
            if FLAGS.what in ("all", "run"):
                figures, facts = runs.draw_run(config, FLAGS.workdir, PROMPT)
                save(figures, FLAGS.images, values, facts)
            if FLAGS.what in ("all", "overfit"):
                over = with_overrides(config, OVERFIT)
                figures, facts = runs.draw_overfit(over, FLAGS.overfit_dir, OVERFIT_DROPOUT)
                save(figures, FLAGS.images, config_values(over), facts)
        if FLAGS.what in ("all", "notebook"):
            execute_notebook()

if __name__ == "__main__":
    _define_flags()
    from smallgpt_jax.cli import app as cli
    cli.run_app(main)
