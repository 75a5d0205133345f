"""The attention pictures a training run logs to TensorBoard: one per layer.

TensorBoard scales every image to fit its card, about 330 pixels wide, so a
grid of every layer and head (`pictures.attention_figure`, what
`python -m smallgpt_jax.visualize --what=attention` draws) would be shrunk
until its labels cannot be read. Each layer's heads are drawn instead, two a
row (2 x 2 for 4 heads), about that width, one readable label per token.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from smallgpt_jax.analysis.pictures import attention_maps, figure_to_array, token_labels


def attention_images(params, model_config, tokenizer, ids_T: np.ndarray) -> list[np.ndarray]:
    """One [H, W, 3] uint8 image per layer for TensorBoard, from layer 0 on:
    that layer's heads on the token ids, a character label on every row and
    column, about LAYER_IMAGE_PX wide (readable at TensorBoard's card size)."""
    ids_T = np.asarray(ids_T).reshape(-1)[-model_config.block_size:]
    att_LHTT = attention_maps(params, model_config, ids_T)
    labels = token_labels(tokenizer, ids_T)
    text = "".join(labels)
    return [figure_to_array(layer_attention_figure(
                att_HTT, labels, title=f"layer {l}: attention on {text}"))
            for l, att_HTT in enumerate(att_LHTT)]


# Drawn near the card's width, a picture is shown about as drawn.
LAYER_IMAGE_PX = 360
_LAYER_DPI = 100


def layer_attention_figure(att_HTT: np.ndarray, labels: list[str] | None = None,
                           title: str = "", width_px: int = LAYER_IMAGE_PX) -> Figure:
    """One layer's heads, two panels a row (2 x 2 for 4 heads), `width_px`
    pixels wide at 100 dpi, with labels as large as one per row allows: the
    picture a training run logs for each layer."""
    H, T, _ = att_HTT.shape
    cols = min(H, 2)
    rows = -(-H // cols)
    width = width_px / _LAYER_DPI
    panel = (width - 0.5) / cols  # The rest: the row labels and the margins.
    fig = Figure(figsize=(width, rows * (panel + 0.2) + 0.45), dpi=_LAYER_DPI,
                 layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    label_points = min(10.0, panel * 72 / T)  # One label a row, nearly touching.
    for h, ax in enumerate(axes):
        if h >= H:
            ax.axis("off")  # An odd number of heads leaves one cell empty.
            continue
        _draw_panel(ax, att_HTT[h], f"head {h}", 8,
                    labels if h + cols >= H else None,  # The lowest panel of its column.
                    labels if h % cols == 0 else None, label_points)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _draw_panel(ax, att_TT: np.ndarray, title: str, title_points: float,
                x_labels: list[str] | None, y_labels: list[str] | None,
                label_points: float):
    """One head's [T, T] weights on `ax`; token labels on the axes given them
    (none past 24 tokens: they would not be readable). Returns the image."""
    T = att_TT.shape[0]
    image = ax.imshow(att_TT, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=title_points, pad=2)
    if x_labels is not None and T <= 24:
        ax.set_xticks(range(T), x_labels, fontsize=label_points,
                      rotation=0 if max(map(len, x_labels)) <= 2 else 90)
    else:
        ax.set_xticks([])
    if y_labels is not None and T <= 24:
        ax.set_yticks(range(T), y_labels, fontsize=label_points)
    else:
        ax.set_yticks([])
    ax.tick_params(length=0, pad=1)
    return image
