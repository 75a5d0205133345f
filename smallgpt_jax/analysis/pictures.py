"""Pictures of what a model learned: attention maps, loss curves, embeddings.

Each `plot_*` function returns a matplotlib Figure, drawn off-screen on the
Agg canvas (no display, no pyplot, and no backend chosen for the process);
`save_figure` writes one to a PNG and `figure_to_array` turns one into an
[H, W, 3] uint8 image for TensorBoard.

- Attention: the model's attention layers `sow` their softmax weights
  att_BHTS into the "intermediates" collection; `attention_maps` runs one
  forward pass with that collection mutable and stacks them to [L, H, T, T].
- Curves: the scalars a run wrote to its TensorBoard event files.
- Embeddings: the token embedding table [V, D] projected onto its two
  principal components (PCA), one labelled point per token.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.lines import Line2D

from smallgpt_jax.model import GPT, ModelConfig, unscan
from smallgpt_jax.system.errors import UserError


# ----------------------------------------------------------------- attention

def _explicit_unscanned(params, model_config: ModelConfig) -> tuple[Any, ModelConfig]:
    """The same model in the form that records its attention weights: the
    fused kernel never materialises the weights, and `nn.scan` drops sown
    intermediates, so pictures use the explicit kernel, one module per layer."""
    params, cfg = unscan(params, model_config)
    return params, cfg.replace(attention="explicit")


def attention_maps(params, model_config, tokens_T: np.ndarray) -> np.ndarray:
    """Attention weights of every layer and head for one sequence: [L, H, T, T].

    Entry [l, h, t, s] is how much position t attends to position s in head
    h of layer l. Each row sums to 1 and is 0 for s > t (the causal mask).
    Only the last `block_size` tokens are used.
    """
    tokens_T = np.asarray(tokens_T, np.int32).reshape(-1)[-model_config.block_size:]
    if tokens_T.size == 0:
        raise UserError("the prompt is empty; attention needs at least one token.")
    params, cfg = _explicit_unscanned(params, model_config)
    return np.asarray(_attention_LHTT(cfg, params, jnp.asarray(tokens_T)))


@functools.partial(jax.jit, static_argnums=(0,))
def _attention_LHTT(cfg, params, tokens_T: jax.Array) -> jax.Array:
    _, variables = GPT(cfg).apply({"params": params}, tokens_T[None],
                                  mutable=["intermediates"])
    sown = variables["intermediates"]
    # sow stores a tuple per call; one call per layer here. [0] drops batch B=1.
    return jnp.stack([sown[f"block_{i}"]["attn"]["attention"][0][0]
                      for i in range(cfg.num_layers)])


def token_labels(tokenizer, ids) -> list[str]:
    """Printable labels for tokens: a newline shows as '\\n', a space as '␣',
    a character the font cannot draw (Chinese, say) as its escape '\\u4e2d'
    (instead of an empty box and a "Glyph missing" warning per character)."""
    drawable = _font_characters()
    out = []
    for i in np.asarray(ids).reshape(-1):
        text = tokenizer.decode([int(i)]).replace("\n", "\\n").replace(" ", "␣") or "∅"
        if drawable is not None:
            text = "".join(c if ord(c) in drawable else c.encode("unicode_escape").decode()
                           for c in text)
        out.append(text)
    return out


@functools.lru_cache(maxsize=1)
def _font_characters() -> frozenset[int] | None:
    """Code points matplotlib's default font has (None: unknown, draw them all)."""
    try:
        return frozenset(FT2Font(font_manager.findfont(font_manager.FontProperties()))
                         .get_charmap())
    except Exception:  # An unusual font setup: leave the labels as they are.
        return None


def attention_figure(att_LHTT: np.ndarray, labels: list[str] | None = None,
                     title: str = "", panel_inches: float = 1.6, legend: bool = True) -> Figure:
    """One panel per (layer, head): rows are layers, columns are heads.

    In each panel the row is the query position (the token being predicted
    from) and the column the key position it looks at. Token labels are drawn
    on the axes when the sequence is short enough to read them. `legend`:
    axis titles and a colour bar (off for the small TensorBoard image).
    """
    L, H, T, _ = att_LHTT.shape
    extra = (1.2, 0.8) if legend else (0.4, 0.5)
    fig = Figure(figsize=(panel_inches * H + extra[0], panel_inches * L + extra[1]),
                 layout="constrained")
    axes = fig.subplots(L, H, squeeze=False)
    show_labels = labels is not None and T <= 24
    label_points = min(8.0, 0.8 * panel_inches * 72 / T)  # Fit one label per row.
    for l in range(L):
        for h in range(H):
            ax = axes[l][h]
            image = ax.imshow(att_LHTT[l, h], cmap="viridis", vmin=0.0, vmax=1.0,
                              interpolation="nearest")
            ax.set_title(f"layer {l} head {h}", fontsize=7)
            # Labels on the outer panels only: the grid shares its axes, and
            # drawing tick labels is most of a figure's cost.
            if show_labels and l == L - 1:
                ax.set_xticks(range(T), labels, fontsize=label_points,
                              rotation=0 if max(map(len, labels)) <= 2 else 90)
            else:
                ax.set_xticks([])
            if show_labels and h == 0:
                ax.set_yticks(range(T), labels, fontsize=label_points)
            else:
                ax.set_yticks([])
            ax.tick_params(length=0, pad=1)
    if legend:
        fig.supxlabel("key position s (the token looked at)", fontsize=8)
        fig.supylabel("query position t (predicting from)", fontsize=8)
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


def plot_attention(params, model_config, tokenizer, prompt: str,
                   panel_inches: float = 1.6) -> tuple[Figure, np.ndarray]:
    """(grid figure, weights [L, H, T, T]) for `prompt` encoded with `tokenizer`."""
    ids = tokenizer.encode(prompt)[-model_config.block_size:]
    att_LHTT = attention_maps(params, model_config, ids)
    shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
    fig = attention_figure(att_LHTT, token_labels(tokenizer, ids),
                           title=f"attention for {shown!r}", panel_inches=panel_inches)
    return fig, att_LHTT


# -------------------------------------------------------------------- curves

def read_scalars(logdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar in a run's event files: {tag: (steps, values)}, by step.

    A resumed run writes some steps twice (the steps after its last
    checkpoint); the value read last wins, which is the resumed run's.
    """
    # Here, not at the top: tensorboard takes about half a second to import,
    # and only the curves need it (a run imports viz for its attention images).
    from tensorboard.backend.event_processing import event_accumulator as ea

    if not os.path.isdir(logdir) or not any(
            "tfevents" in name for name in os.listdir(logdir)):
        raise UserError(f"no TensorBoard event files in {logdir}; "
                        "is this the --workdir of a training run?")
    acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0})  # 0: keep all.
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        steps = np.array(sorted(by_step), np.int64)
        out[tag] = (steps, np.array([by_step[s] for s in steps], np.float64))
    return out


def plot_curves(logdir: str, title: str = "") -> Figure:
    """Loss curves: training loss as logged, and train/val loss at each eval.

    The logged training loss is that of each step's own batch (noisy, and
    with dropout on); the eval losses average the same fixed batches every
    time, without dropout, so they are the ones to compare.
    """
    scalars = read_scalars(logdir)
    curves = [("train/loss", "train loss (per step)", dict(lw=0.8, alpha=0.5)),
              ("eval/train_loss", "train loss (eval)", dict(marker="o", ms=3)),
              ("eval/val_loss", "val loss (eval)", dict(marker="o", ms=3))]
    if not any(tag in scalars for tag, _, _ in curves):
        raise UserError(f"the event files in {logdir} hold no loss scalars yet.")
    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    for tag, label, style in curves:
        if tag in scalars:
            ax.plot(*scalars[tag], label=label, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- embeddings

def embedding_pca(params) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [V, 2], explained variance ratio [2]) of the token embeddings.

    PCA: centre the rows of the [V, D] table, take its singular value
    decomposition, and project every row on the two directions of largest
    variance (the first two right singular vectors).
    """
    table_VD = np.asarray(params["token_embed"]["embedding"], np.float64)
    centred_VD = table_VD - table_VD.mean(axis=0)
    _, s, vt_KD = np.linalg.svd(centred_VD, full_matrices=False)  # K = min(V, D) directions.
    # A table with fewer than two directions (one token, or D=1) or no variance
    # at all (identical rows) gets zeros for the components it does not have.
    k = min(2, len(s))
    coords_V2, ratio = np.zeros((len(table_VD), 2)), np.zeros(2)
    coords_V2[:, :k] = centred_VD @ vt_KD[:k].T
    variance = s ** 2
    if variance.sum() > 0:
        ratio[:k] = variance[:k] / variance.sum()
    return coords_V2, ratio


def plot_embeddings(params, tokenizer, title: str = "", max_labels: int = 300) -> Figure:
    """The token embeddings' 2-D PCA, each point labelled by its token."""
    coords_V2, ratio = embedding_pca(params)
    V = coords_V2.shape[0]
    labels = token_labels(tokenizer, np.arange(V))
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.subplots()
    ax.scatter(coords_V2[:, 0], coords_V2[:, 1], s=4, alpha=0.3 if V <= max_labels else 0.6)
    kinds = {"upper-case": "tab:red", "lower-case": "tab:blue", "digit": "tab:green",
             "other (space, punctuation, ...)": "black"}
    for v in range(min(V, max_labels)):  # Thousands of labels would be unreadable.
        ch = tokenizer.decode([v])
        color = (kinds["upper-case"] if ch.isupper() else kinds["lower-case"] if ch.islower()
                 else kinds["digit"] if ch.isdigit() else kinds["other (space, punctuation, ...)"])
        ax.annotate(labels[v], coords_V2[v], fontsize=7, ha="center", va="center",
                    color=color)
    ax.legend(handles=[Line2D([], [], ls="", marker="s", color=c, label=k)
                       for k, c in kinds.items()], fontsize=7, loc="best")
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)")
    ax.set_title(title or f"token embeddings ({V} tokens), PCA", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------- output

def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders a figure to an [H, W, 3] uint8 RGB array (e.g. for TensorBoard)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str, dpi: int = 100) -> str:
    """Writes `fig` as a PNG (creating the folder); returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}")
    return path
