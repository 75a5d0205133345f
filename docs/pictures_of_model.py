"""Pictures of the model's parts for a config (no training): the whole
stack with its parameter counts, the learning-rate schedule, the sinusoidal
position table and a RoPE rotation. Each is computed by the package's own
functions, so a picture follows the code it shows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pictures_of_ideas import arrow, box
from smallgpt_jax import model as model_lib
from smallgpt_jax import positions, train

STREAM, NORM, MIX, EACH = "#d9d9d9", "#dde8f5", "#f7e1c6", "#e3f1dc"


def param_counts(config: ml_collections.ConfigDict, vocab_size: int) -> dict[str, int]:
    """Parameters of each top-level part of the GPT (shapes only: nothing is initialised)."""
    cfg = model_lib.model_config(config.model, vocab_size)
    tokens = jnp.zeros((1, cfg.block_size), jnp.int32)
    shapes = jax.eval_shape(lambda: model_lib.GPT(cfg).init(jax.random.key(0), tokens))["params"]
    return {name: model_lib.count_params(tree) for name, tree in shapes.items()}


def model_figure(config: ml_collections.ConfigDict, vocab_size: int = 65) -> Figure:
    """The whole GPT, top to bottom, with char_cpu's shapes and parameter counts."""
    m, B = config.model, config.train.batch_size
    D, H, L, T, F = m.embed_dim, m.num_heads, m.num_layers, m.block_size, m.mlp_ratio * m.embed_dim
    counts = param_counts(config, vocab_size)
    n = lambda k: f"{counts[k]:,} parameters"
    fig = Figure(figsize=(7.4, 8.2), layout="constrained")
    ax = fig.subplots()
    box(ax, 2.5, 13.0, 5.0, 0.7, f"tokens_BT [{B}, {T}]: character ids 0 … {vocab_size - 1}",
        "white")
    box(ax, 0.4, 11.4, 4.4, 0.9, f"token embedding E [{vocab_size}, {D}]\n{n('token_embed')}",
        EACH)
    if "pos_embed" in counts:
        box(ax, 5.2, 11.4, 4.4, 0.9, f"learned positions P [{T}, {D}]\n{counts['pos_embed']:,}"
            " parameters (not decayed)", EACH)
    arrow(ax, (5.0, 13.0), (2.6, 12.3))
    ax.text(3.0, 12.6, "row of each id", fontsize=7, ha="right")
    if "pos_embed" in counts:
        arrow(ax, (5.0, 13.0), (7.4, 12.3))
        ax.text(7.0, 12.6, f"row t for position t = 0 … {T - 1}", fontsize=7)
    ax.text(5.0, 11.85, "+", ha="center", va="center", fontsize=16)
    # One block, drawn once, in a frame that says it repeats.
    ax.add_patch(Rectangle((0.2, 4.6), 9.6, 6.0, facecolor="none", edgecolor="black",
                           ls="--", lw=0.8))
    ax.text(9.7, 10.35, f"× {L} blocks (block_0 … block_{L - 1}), each {n('block_0')}",
            ha="right", fontsize=8, style="italic")
    ax.plot([1.2, 1.2], [11.4, 3.6], color=STREAM, lw=8, solid_capstyle="butt", zorder=0)
    ax.text(1.45, 10.9, f"residual stream x_BTD [{B}, {T}, {D}]", fontsize=8)
    rows = ((9.0, "norm1", "attention: H = %d heads of K = %d\nthe only place positions mix"
             % (H, D // H), MIX, 7.9), (6.6, "norm2", f"MLP: {D} → {F} → {m.activation.upper()}"
                                         f" → {D}\neach position on its own", MIX, 5.5))
    for y, norm, what, color, plus in rows:
        arrow(ax, (1.2, y + 0.3), (2.2, y + 0.3))
        box(ax, 2.2, y, 2.0, 0.6, f"{'LayerNorm' if m.norm == 'layernorm' else 'RMSNorm'}",
            NORM)
        arrow(ax, (4.2, y + 0.3), (4.7, y + 0.3))
        box(ax, 4.7, y - 0.15, 4.6, 0.9, what, color)
        arrow(ax, (7.0, y - 0.15), (1.35, plus + 0.12))
        ax.text(1.2, plus, "⊕", ha="center", va="center", fontsize=15)
    ax.text(5.0, 4.85, "x ← x + Attn(Norm(x)),  then  x ← x + MLP(Norm(x))", ha="center",
            fontsize=8)
    box(ax, 0.4, 2.7, 4.4, 0.8, f"final LayerNorm (norm_f)\n{n('norm_f')}", NORM)
    tied = "head" not in counts
    box(ax, 5.2, 2.7, 4.4, 0.8, "logits = h Eᵀ: the same E\n(tied, no new parameters)" if tied
        else f"output head [{D}, {vocab_size}]\n{n('head')}", EACH)
    arrow(ax, (4.8, 3.1), (5.2, 3.1))
    arrow(ax, (7.4, 2.7), (7.4, 2.0))
    box(ax, 3.2, 1.1, 6.4, 0.9, f"logits_BTV [{B}, {T}, {vocab_size}] → softmax: p(next "
        "character)\nloss: cross-entropy with the targets (the ids shifted by one)", "white")
    total = sum(counts.values())
    ax.set_title(f"the GPT of configs/char_cpu.py: {total:,} parameters", fontsize=10)
    ax.set_xlim(0, 10)
    ax.set_ylim(0.9, 13.9)
    ax.axis("off")
    return fig


def schedule_figure(config: ml_collections.ConfigDict) -> Figure:
    """The learning rate at every step of `config`'s run (train.learning_rate_schedule)."""
    t = config.train
    schedule = train.learning_rate_schedule(t)
    steps = np.arange(t.num_steps + 1)
    lr = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))
    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, lr, color="tab:blue")
    ax.axvline(t.warmup_steps, color="gray", lw=0.6, ls=":")
    for s, text, where in ((t.warmup_steps, "peak after %d warmup steps" % t.warmup_steps,
                            "left"), (t.num_steps, "end", "right")):
        ax.annotate(f"{text}: {lr[s]:.2e}", (s, lr[s]), fontsize=8, ha=where,
                    xytext=(5 if where == "left" else -5, 5), textcoords="offset points")
    half = t.warmup_steps + (t.num_steps - t.warmup_steps) // 2
    ax.plot([half], [lr[half]], "o", ms=3, color="tab:blue")
    ax.annotate(f"half-way through the decay (step {half}): {lr[half]:.2e}", (half, lr[half]),
                fontsize=8, xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_ylim(0, lr.max() * 1.15)
    ax.grid(alpha=0.3)
    ax.set_title(f"char_cpu's schedule: linear warmup, cosine decay to {t.min_learning_rate:g} "
                 f"at step {t.num_steps}", fontsize=9)
    return fig


def sinusoidal_figure(config: ml_collections.ConfigDict) -> Figure:
    """positions.sinusoidal_table for char_cpu's T and D, and a few of its columns."""
    T, D = config.model.block_size, config.model.embed_dim
    table_TD = positions.sinusoidal_table(T, D)
    fig = Figure(figsize=(7.4, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.2, 1])
    image = left.imshow(table_TD, cmap="RdBu", vmin=-1, vmax=1, aspect="auto",
                        interpolation="nearest")
    left.set_xlabel("feature d (even: sin, odd: cos)")
    left.set_ylabel("position p")
    left.set_title(f"sinusoidal_table({T}, {D})", fontsize=9)
    fig.colorbar(image, ax=left, shrink=0.8)
    for d in (0, 16, 32, 64):
        wavelength = 2 * np.pi * 10000 ** (2 * (d // 2) / D)
        right.plot(np.arange(T), table_TD[:, d], ".-", ms=2, lw=0.8,
                   label=f"d = {d}: wavelength {wavelength:.0f} positions")
    right.set_xlabel("position p")
    right.set_title("sine columns: ever longer wavelengths", fontsize=9)
    right.legend(fontsize=7, loc="lower left")
    right.grid(alpha=0.3)
    return fig


def rope_figure(config: ml_collections.ConfigDict) -> Figure:
    """RoPE: one query pair rotated by position, and scores that depend on m − n only."""
    K = config.model.embed_dim // config.model.num_heads
    n_pos = 12
    rng = np.random.default_rng(0)
    q_K, k_K = rng.normal(size=K), rng.normal(size=K)
    shown_K = np.zeros(K)
    shown_K[[0, 4]] = 1.0, 0.6  # Pair 0 starts at (1, 0), pair 2 at (0.6, 0).
    rotate = lambda v_K, pos_P: np.asarray(positions.apply_rope(
        jnp.broadcast_to(jnp.asarray(v_K, jnp.float32), (1, len(pos_P), 1, K)),
        jnp.asarray(pos_P)))[0, :, 0]
    shown_PK = rotate(shown_K, np.arange(n_pos))
    q_PK, k_PK = rotate(q_K, np.arange(n_pos)), rotate(k_K, np.arange(n_pos))
    fig = Figure(figsize=(7.4, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, color in ((0, "tab:blue"), (2, "tab:orange")):
        theta = 10000 ** (-2 * i / K)
        xy = shown_PK[:, 2 * i:2 * i + 2]
        left.plot(xy[:, 0], xy[:, 1], "o-", ms=3, lw=0.6, color=color,
                  label=f"pair i = {i}: θ = {theta:.3g} rad per position")
        for p in (0, 1, 2, n_pos - 1):
            left.annotate(f"m={p}", xy[p], fontsize=6, color=color, xytext=(3, 3),
                          textcoords="offset points")
    left.set_aspect("equal")
    left.axhline(0, color="gray", lw=0.4)
    left.axvline(0, color="gray", lw=0.4)
    left.legend(fontsize=7, loc="lower left")
    left.set_title(f"a pair of features (2i, 2i+1) of a query,\nrotated at positions m = 0 … "
                   f"{n_pos - 1}", fontsize=8)
    scores = q_PK @ k_PK.T  # [m, n]: the query at m against the key at n.
    image = right.imshow(scores, cmap="viridis")
    right.set_xlabel("key position n")
    right.set_ylabel("query position m")
    right.set_title("scores q(m) · k(n) of a random q and k after\nRoPE: equal along each diagonal "
                    "(m − n fixed)", fontsize=8)
    fig.colorbar(image, ax=right, shrink=0.8)
    return fig
