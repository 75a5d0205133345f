"""docs/make_pictures.py: the pictures draw, stay small, say what the code
does, and are not stale (each one's record still matches its config and
drawing code)."""

import json
import os
import re
import shutil
import types

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_file
from smallgpt_jax import generation
from smallgpt_jax.cli.config_files import load_config

IMAGES = os.path.join(ROOT, "docs", "images")


@pytest.fixture(scope="module")
def pictures():
    return load_file("docs/make_pictures.py", "make_pictures")


def _pages() -> str:
    docs = os.path.join(ROOT, "docs")
    return "".join(open(os.path.join(docs, p), encoding="utf-8").read()
                   for p in sorted(os.listdir(docs)) if p.endswith(".md"))


def test_pictures_of_the_ideas_draw_small_pngs_that_the_docs_show(pictures, tmp_path):
    config = load_config(os.path.join(ROOT, pictures.CHAR_CPU))
    figures = pictures.draw_ideas(config)
    assert set(figures) == {n for n, p in pictures.PICTURES.items() if p.part == "ideas"}
    pictures.save(figures, str(tmp_path), pictures.config_values(config))
    shown = _pages()
    for name in pictures.PICTURES:
        if name in figures:
            size = os.path.getsize(tmp_path / f"{name}.png")
            assert 5_000 < size < 100_000, (name, size)
            assert pictures.stale(name, str(tmp_path)) == [], name  # What was just drawn.
        assert f"(images/{name}.png)" in shown, f"no page shows images/{name}.png"


def test_no_picture_is_stale(pictures):
    """Every PNG in docs/images is one make_pictures.py draws, and its record
    NAME.json still matches: the same PNG, the same config values, the same
    drawing code. Fix a failure by running the command the record names."""
    on_disk = {f[:-4] for f in os.listdir(IMAGES) if f.endswith(".png")}
    assert on_disk == set(pictures.PICTURES), "docs/images holds pictures nothing draws"
    stale = {}
    for name in sorted(pictures.PICTURES):
        assert os.path.exists(os.path.join(IMAGES, f"{name}.json")), f"{name}.png has no record"
        why = pictures.stale(name)
        if why:
            part = pictures.PICTURES[name].part
            stale[name] = f"{'; '.join(why)} (redraw: python docs/make_pictures.py --what={part})"
    assert not stale, "stale pictures:\n" + "\n".join(f"{k}: {v}" for k, v in stale.items())


def test_a_changed_config_or_drawing_makes_a_picture_stale(pictures, tmp_path, monkeypatch):
    for name in ("schedule", "causal_mask"):
        for ext in ("png", "json"):
            shutil.copy(os.path.join(IMAGES, f"{name}.{ext}"), tmp_path)
    path = tmp_path / "schedule.json"
    rec = json.loads(path.read_text())
    rec["config_values"]["train.num_steps"] += 1  # As if char_cpu's steps had changed since.
    path.write_text(json.dumps(rec))
    assert any("train.num_steps" in why for why in pictures.stale("schedule", str(tmp_path)))
    rec["config_values"]["train.num_steps"] -= 1
    rec["config_values"]["parallel"] = "pmap"  # How, not what: the same numbers.
    path.write_text(json.dumps(rec))
    assert pictures.stale("schedule", str(tmp_path)) == []
    # Drawn with 'explicit': 'auto' is that on a CPU, 'fused' another model.
    for attention, is_stale in (("explicit", False), ("fused", True)):
        rec["config_values"]["model.attention"] = attention
        path.write_text(json.dumps(rec))
        assert bool(pictures.stale("schedule", str(tmp_path))) == is_stale, attention
    rec["config_values"]["model.attention"] = "explicit"
    rec["config_values"]["model.dropout_rng"] = "rbg"  # Other masks: redraw.
    path.write_text(json.dumps(rec))
    assert any("dropout_rng" in why for why in pictures.stale("schedule", str(tmp_path)))
    monkeypatch.setattr(pictures, "code_sha256", lambda picture: "another drawing")
    assert pictures.stale("causal_mask", str(tmp_path)) == [
        "its drawing code changed (pictures_of_ideas.causal_mask_figure)"]


def test_the_attention_picture_shows_the_prompt_of_make_pictures(pictures):
    with open(os.path.join(IMAGES, "attention.json"), encoding="utf-8") as f:
        assert json.load(f)["facts"]["prompt"] == pictures.PROMPT


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) else []


def test_the_overfitting_page_runs_the_pictures_runs_and_quotes_their_numbers(pictures):
    """docs/16's commands are make_pictures' OVERFIT runs, and each number it
    quotes with two or more decimals is, to its rounding, one recorded by
    the runs that drew curves.png and overfit.png."""
    with open(os.path.join(ROOT, "docs", "16-overfitting.md"), encoding="utf-8") as f:
        page = f.read()
    for override in pictures.OVERFIT:
        assert f"--config.{override}" in page, override
    assert f"for rate in {' '.join(map(str, pictures.OVERFIT_DROPOUT))}; do" in page
    recorded = []
    for name in ("curves", "overfit"):
        with open(os.path.join(IMAGES, f"{name}.json"), encoding="utf-8") as f:
            recorded += _numbers(json.load(f)["facts"])
    quoted = re.findall(r"\d+\.\d{2,}", page)
    assert len(quoted) > 10
    unmeasured = [q for q in quoted if not any(
        abs(float(q) - x) <= 0.5001 * 10.0 ** -len(q.split(".")[1]) for x in recorded)]
    assert not unmeasured, f"numbers no picture's record holds: {unmeasured}"


@pytest.mark.parametrize("prompt,slide_step", [(3, 4), (8, 1), (8, 3), (1, 8)])
def test_kv_cache_picture_follows_generate(pictures, monkeypatch, prompt, slide_step):
    """The picture's steps are the calls generation.generate makes (its model
    steps replaced by stand-ins that record which one ran and on which window)."""
    import pictures_of_ideas  # make_pictures put docs/ on sys.path.
    W, new, calls = 8, 14, []

    def stand_in(kind):
        def step(model_config, params, *args):
            w = args[-2]  # (The cache before it, for a decode step; the Sampling after it.)
            calls.append((kind, [int(t) for t in np.asarray(w.tokens_BW)[0, :w.n]]))
            next_B = jnp.full((1,), 100 + len(calls), jnp.int32)  # Distinct tokens.
            out = (next_B, jnp.zeros((1, 5)), generation._push(w.tokens_BW, w.n, w.drop, next_B))
            return out + (("cache",) if kind != "full" else ())
        return step

    for name, kind in (("_full_step", "full"), ("_prefill", "prefill"), ("_decode_step", "decode")):
        monkeypatch.setattr(generation, name, stand_in(kind))
    config = types.SimpleNamespace(block_size=W, vocab_size=5)
    generation.generate({}, config, np.arange(prompt), new, key=None, slide_step=slide_step)
    rows = pictures_of_ideas.kv_cache_steps(W, prompt, new, slide_step)
    # Token numbers: the prompt is 0..prompt-1, generated token i is number prompt + i.
    as_numbers = lambda ids: [t if t < 100 else prompt + t - 101 for t in ids]
    assert [(kind.split(":")[0].split(" ")[0], window) for kind, window, _ in rows] == [
        ({"prefill": "prefill", "decode": "cached"}[k], as_numbers(w))
        for k, w in calls]
