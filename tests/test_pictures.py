"""docs/make_pictures.py's pictures of the ideas draw, stay small, and say what the code does."""

import os
import types

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_file
from smallgpt_jax import generation


def _make_pictures():
    return load_file("docs/make_pictures.py", "make_pictures")


def test_pictures_of_the_ideas_draw_small_pngs_that_the_docs_show(tmp_path):
    pictures = _make_pictures()
    pictures.save({name: draw() for name, draw in pictures.CONCEPTS.items()}, str(tmp_path))
    shown = "".join(open(os.path.join(ROOT, "docs", p), encoding="utf-8").read()
                    for p in os.listdir(os.path.join(ROOT, "docs")) if p.endswith(".md"))
    for name in pictures.CONCEPTS:
        size = os.path.getsize(tmp_path / f"{name}.png")
        assert 5_000 < size < 100_000, (name, size)
        assert f"(images/{name}.png)" in shown, f"no page shows images/{name}.png"
        assert os.path.exists(os.path.join(ROOT, "docs", "images", f"{name}.png"))


@pytest.mark.parametrize("prompt,slide_step", [(3, 4), (8, 1), (8, 3), (1, 8)])
def test_kv_cache_picture_follows_generate(monkeypatch, prompt, slide_step):
    """The picture's steps are the calls generation.generate makes (its model
    steps replaced by stand-ins that record which one ran and on which window)."""
    W, new, calls = 8, 14, []

    def stand_in(kind):
        def step(model_config, params, *args):
            if kind == "decode":
                args = args[1:]  # The cache.
            window_BW, n, drop = args[:3]
            calls.append((kind, [int(t) for t in np.asarray(window_BW)[0, :n]]))
            next_B = jnp.full((1,), 100 + len(calls), jnp.int32)  # Distinct tokens.
            out = (next_B, jnp.zeros((1, 5)), generation._push(window_BW, n, drop, next_B))
            return out + (("cache",) if kind != "full" else ())
        return step

    for name, kind in (("_full_step", "full"), ("_prefill", "prefill"), ("_decode_step", "decode")):
        monkeypatch.setattr(generation, name, stand_in(kind))
    config = types.SimpleNamespace(block_size=W, vocab_size=5)
    generation.generate({}, config, np.arange(prompt), new, key=None, slide_step=slide_step)
    rows = _make_pictures().kv_cache_steps(W, prompt, new, slide_step)
    # Token numbers: the prompt is 0..prompt-1, generated token i is number prompt + i.
    as_numbers = lambda ids: [t if t < 100 else prompt + t - 101 for t in ids]
    assert [(kind.split(":")[0].split(" ")[0], window) for kind, window, _ in rows] == [
        ({"prefill": "prefill", "decode": "cached"}[k], as_numbers(w))
        for k, w in calls]
