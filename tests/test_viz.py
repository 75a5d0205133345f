"""Pictures: attention maps (right numbers, one panel per layer and head),
loss curves read back from event files, and the embedding PCA."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli, tiny_config
from smallgpt_jax.analysis import attention_cards
from smallgpt_jax.analysis import pictures as viz
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.tokenizer import CharTokenizer
from smallgpt_jax.training import reporting

TEXT = "to be or not to be\nthat is the question"


def make(overrides=None, layers=2, heads=2):
    tok = CharTokenizer.from_text(TEXT)
    c = tiny_config(**{"model.num_layers": layers, "model.num_heads": heads,
                       **(overrides or {})})
    cfg = model_config(c.model, tok.vocab_size)
    params = GPT(cfg).init(jax.random.key(3), jnp.zeros((1, cfg.block_size), jnp.int32))
    return cfg, params["params"], tok


def first_layer_attention_by_hand(params_block0, params, cfg, ids):
    """Layer 0's attention recomputed from the weights with numpy (pre-norm,
    learned positions, LayerNorm): softmax(q k^T / sqrt(K)) under the mask."""
    p = jax.tree_util.tree_map(np.asarray, params_block0)
    x = np.asarray(params["token_embed"]["embedding"])[ids] + np.asarray(
        params["pos_embed"])[:len(ids)]
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    x = x * p["norm1"]["scale"] + p["norm1"]["bias"]
    qkv = np.einsum("td,dchk->tchk", x, p["attn"]["qkv"]["kernel"]) + p["attn"]["qkv"]["bias"]
    q, k = qkv[:, 0], qkv[:, 1]  # [T, H, K]
    scores = np.einsum("thk,shk->hts", q, k) / math.sqrt(q.shape[-1])
    T = len(ids)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("overrides", [{}, {"model.scan_layers": True},
                                       {"model.attention": "fused"}])
def test_attention_maps_are_causal_distributions_and_match_the_maths(overrides):
    cfg, params, tok = make(overrides, layers=3, heads=2)
    ids = tok.encode("to be or not")
    att = viz.attention_maps(params, cfg, ids)
    T = len(ids)
    assert att.shape == (3, 2, T, T)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)  # Each row is a distribution.
    above = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(att[..., above] == 0.0)  # Nothing attends to the future.
    assert np.all(att[..., ~above] > 0.0)  # ... and everything to its whole past.
    block0 = (jax.tree_util.tree_map(lambda p: p[0], params["blocks"]["block"])
              if cfg.scan_layers else params["block_0"])
    np.testing.assert_allclose(att[0], first_layer_attention_by_hand(block0, params, cfg, ids),
                               rtol=1e-4, atol=1e-6)
    # Layers differ (the stacked scan params were split per layer, not repeated).
    assert not np.allclose(att[0], att[1])


def test_attention_uses_only_the_last_block_size_tokens():
    cfg, params, tok = make()
    ids = tok.encode(TEXT)
    assert len(ids) > cfg.block_size
    att = viz.attention_maps(params, cfg, ids)
    assert att.shape[-1] == cfg.block_size
    np.testing.assert_allclose(att, viz.attention_maps(params, cfg, ids[-cfg.block_size:]))


def test_attention_grid_has_one_panel_per_layer_and_head_showing_the_weights():
    cfg, params, tok = make(layers=3, heads=2)
    fig, att = viz.plot_attention(params, cfg, tok, "not to be")
    *panels, colorbar = fig.axes
    assert len(panels) == 3 * 2 and colorbar.get_ylabel() == "attention weight"
    titles = sorted(ax.get_title() for ax in panels)
    assert titles == sorted(f"layer {l} head {h}" for l in range(3) for h in range(2))
    assert "query position" in fig.get_supylabel() and "key position" in fig.get_supxlabel()
    for ax in panels:
        l, h = (int(w) for w in ax.get_title().split()[1::2])
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), att[l, h])
        # Token labels on the outer panels: keys along the bottom row, queries
        # down the first column.
        chars = ["n", "o", "t", "␣", "t", "o", "␣", "b", "e"]
        assert [t.get_text() for t in ax.get_xticklabels()] == (chars if l == 2 else [])
        assert [t.get_text() for t in ax.get_yticklabels()] == (chars if h == 0 else [])


@pytest.mark.parametrize("heads,grid", [(1, (1, 1)), (3, (2, 2)), (4, (2, 2)), (8, (4, 2))])
def test_a_layers_picture_fits_a_tensorboard_card_with_its_labels_readable(heads, grid):
    """TensorBoard shrinks an image to its card (~330 px): the layer picture
    is drawn at most 420 px wide, heads two a row, one 16-token label a row
    at 6 points or more (8 pixels: a character one can read)."""
    att = np.full((heads, 16, 16), 1 / 16)
    labels = list("first␣citizen:") + ["\\n", "B"]
    fig = attention_cards.layer_attention_figure(att, labels, title="layer 0")
    img = viz.figure_to_array(fig)
    assert 300 <= img.shape[1] <= 420 and img.shape[2] == 3
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == [f"head {h}" for h in range(heads)]
    assert fig.axes[0].get_gridspec().get_geometry() == grid
    for h, ax in enumerate(shown):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), att[h])
        # Keys under the lowest panel of each column, queries down the first column.
        lowest = h + min(heads, 2) >= heads
        assert [t.get_text() for t in ax.get_xticklabels()] == (labels if lowest else [])
        assert [t.get_text() for t in ax.get_yticklabels()] == (labels if h % 2 == 0 else [])
        assert all(t.get_fontsize() >= 6 for t in ax.get_xticklabels() + ax.get_yticklabels())


def test_attention_pictures_are_tagged_to_sort_in_layer_order(monkeypatch):
    from smallgpt_jax.training import evaluation
    images = [np.full((4, 4, 3), l, np.uint8) for l in range(11)]
    monkeypatch.setattr(attention_cards, "attention_images", lambda *args: images)
    cfg, params, tok = make()
    splits = type("Splits", (), {"val": np.zeros(64, np.int32)})()
    pictures = evaluation.attention_pictures(params, cfg, tok, splits)
    # TensorBoard orders cards by tag: layer 10 after layer 9, not after layer 1.
    assert sorted(pictures) == list(pictures)
    assert [int(im[0, 0, 0]) for im in pictures.values()] == list(range(11))
    assert list(pictures)[:2] == ["views/attention/layer_00", "views/attention/layer_01"]


def test_figure_to_array_is_an_rgb_image_of_the_figure_size():
    cfg, params, tok = make()
    fig, _ = viz.plot_attention(params, cfg, tok, "that is")
    img = viz.figure_to_array(fig)
    w, h = fig.get_size_inches() * fig.dpi
    assert img.dtype == np.uint8 and img.shape == (round(h), round(w), 3)
    assert img.min() < 100 and img.max() == 255  # Dark panels on a white page.


def test_prompt_with_unknown_characters_is_a_user_error():
    cfg, params, tok = make()
    with pytest.raises(UserError, match="not in the vocabulary"):
        viz.plot_attention(params, cfg, tok, "XYZ")


def test_curves_read_back_the_scalars_and_the_resumed_value_wins(tmp_path):
    w = reporting.Writer(str(tmp_path))
    for step in (10, 20, 30):
        w.scalars(step, {"train/loss": 4.0 - step / 10, "eval/val_loss": 5.0 - step / 10})
    w.close()
    # A resumed run writes step 30 again, into a second event file (named
    # apart: tensorboardX names files by the second they were opened in).
    from tensorboardX import SummaryWriter
    w = SummaryWriter(str(tmp_path), filename_suffix=".resumed")
    for step, loss in ((30, 0.5), (40, 0.25)):
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("eval/val_loss", loss + 1.0, step)
    w.close()
    scalars = viz.read_scalars(str(tmp_path))
    steps, values = scalars["train/loss"]
    assert steps.tolist() == [10, 20, 30, 40]
    np.testing.assert_allclose(values, [3.0, 2.0, 0.5, 0.25])
    fig = viz.plot_curves(str(tmp_path))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"train loss (per step)", "val loss (eval)"}
    np.testing.assert_allclose(lines["val loss (eval)"].get_ydata(), [4.0, 3.0, 1.5, 1.25])


def test_curves_without_event_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no TensorBoard event files"):
        viz.read_scalars(str(tmp_path))


def test_embedding_pca_recovers_a_planar_table_and_labels_every_character():
    cfg, params, tok = make()
    V, D = params["token_embed"]["embedding"].shape
    # Points on a 2-D plane inside D dimensions: PCA keeps all their variance
    # and all their pairwise distances.
    rng = np.random.default_rng(0)
    plane_2D = np.linalg.qr(rng.normal(size=(D, 2)))[0].T
    xy_V2 = rng.normal(size=(V, 2)) * [3.0, 1.0]
    table = xy_V2 @ plane_2D + rng.normal(size=D)
    coords, ratio = viz.embedding_pca({"token_embed": {"embedding": table}})
    np.testing.assert_allclose(ratio.sum(), 1.0, atol=1e-9)
    assert ratio[0] > ratio[1]
    dist = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.testing.assert_allclose(dist(coords), dist(xy_V2), atol=1e-9)

    fig = viz.plot_embeddings(params, tok)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(viz.token_labels(tok, np.arange(V)))
    assert "\\n" in texts and "␣" in texts


@pytest.mark.parametrize("chars,table", [("a", "random"), ("abc", "equal")])
def test_embeddings_of_one_token_or_identical_rows_draw_without_warnings(chars, table):
    import warnings
    tok = CharTokenizer(chars)
    table_VD = (np.random.default_rng(0).normal(size=(len(chars), 8)) if table == "random"
                else np.ones((len(chars), 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A division by zero variance fails.
        coords, ratio = viz.embedding_pca({"token_embed": {"embedding": table_VD}})
        fig = viz.plot_embeddings({"token_embed": {"embedding": table_VD}}, tok)
        viz.figure_to_array(fig)
    assert coords.shape == (len(chars), 2) and (coords == 0).all() and (ratio == 0).all()
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(chars)


def test_save_figure_writes_a_small_png(tmp_path):
    cfg, params, tok = make()
    path = viz.save_figure(viz.plot_embeddings(params, tok), str(tmp_path / "a" / "e.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_visualize_cli_needs_a_workdir(tmp_path):
    proc = run_cli([f"--workdir={tmp_path / 'nope'}", "--what=curves"],
                   module="smallgpt_jax.visualize", timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --workdir=")


@pytest.mark.parametrize("dpi", [0, 100_000])
def test_visualize_cli_refuses_a_dpi_it_cannot_draw_at(tmp_path, dpi):
    proc = run_cli([f"--workdir={tmp_path}", "--what=curves", f"--dpi={dpi}"],
                   module="smallgpt_jax.visualize", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: --dpi={dpi} must be between 1 and 1000."


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 10-step run on a small text, trained in this process: its workdir."""
    from smallgpt_jax.training import loop
    root = tmp_path_factory.mktemp("viz_run")
    corpus = root / "corpus.txt"
    corpus.write_text((TEXT + "\n") * 60)
    config = tiny_config(**{"data.path": str(corpus), "train.num_steps": 10,
                            "train.eval_every": 5, "train.log_every": 5})
    loop.train_and_evaluate(config, str(root / "run"))
    return str(root / "run")


def test_training_logs_one_attention_picture_per_layer_at_each_eval(tiny_run):
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(tiny_run, size_guidance={ea.IMAGES: 0})
    acc.Reload()
    # tiny_config has 2 layers x 2 heads: one picture per layer, heads side by side.
    assert sorted(acc.Tags()["images"]) == ["views/attention/layer_0",
                                            "views/attention/layer_1"]
    for tag in acc.Tags()["images"]:
        images = acc.Images(tag)
        assert [im.step for im in images] == [5, 10]
        im = images[-1]
        # Narrow enough that TensorBoard's card (~330 px) shows it about as drawn.
        assert 300 <= im.width <= 420 and im.height < im.width
        assert im.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_visualize_curves_cli_plots_the_run(tiny_run, tmp_path):
    out = tmp_path / "curves.png"
    proc = run_cli([f"--workdir={tiny_run}", "--what=curves", f"--output={out}"],
                   module="smallgpt_jax.visualize", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in proc.stdout


@pytest.mark.parametrize("what", ["attention", "embeddings"])
def test_visualize_cli_draws_from_the_checkpoint(tiny_run, tmp_path, what):
    """Loads the params through smallgpt_jax.checkpoint.reader, as a user would."""
    out = tmp_path / f"{what}.png"
    proc = run_cli([f"--workdir={tiny_run}", f"--what={what}", "--prompt=to be",
                    f"--output={out}"], module="smallgpt_jax.visualize", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < out.stat().st_size < 150_000


def test_characters_the_font_lacks_are_labelled_by_escape_without_warnings():
    import warnings
    tok = CharTokenizer("\n 中文ab")  # matplotlib's default font has no Chinese glyphs.
    labels = viz.token_labels(tok, np.arange(tok.vocab_size))
    assert labels == ["\\n", "␣", "\\u4e2d", "\\u6587", "a", "b"]
    table = np.random.default_rng(0).normal(size=(tok.vocab_size, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A "Glyph ... missing from font" warning fails.
        viz.figure_to_array(viz.plot_embeddings({"token_embed": {"embedding": table}}, tok))
