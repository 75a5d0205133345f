"""Pictures of attention's ideas, drawn from their definitions (no training).

Each function returns a matplotlib Figure; docs/make_pictures.py saves them
into docs/images/ with a record of what drew them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def causal_mask_figure(T: int = 8) -> Figure:
    """The mask M[t, s] and the softmax weights it leaves, for random scores."""
    scores_TT = np.random.default_rng(0).normal(size=(T, T))
    allowed_TT = np.tril(np.ones((T, T), bool))  # s <= t
    masked_TT = np.where(allowed_TT, scores_TT, -np.inf)
    weights_TT = np.exp(masked_TT - masked_TT.max(-1, keepdims=True))
    weights_TT /= weights_TT.sum(-1, keepdims=True)
    fig = Figure(figsize=(7.4, 3.3), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(allowed_TT, cmap="Greys_r", vmin=-0.3, vmax=1.0)
    for t in range(T):
        for s in range(T):
            left.text(s, t, "0" if allowed_TT[t, s] else "−∞", ha="center", va="center",
                      fontsize=7, color="black" if allowed_TT[t, s] else "white")
    left.set_title("mask M[t, s]: 0 if s ≤ t, −∞ if s > t", fontsize=9)
    image = right.imshow(weights_TT, cmap="viridis", vmin=0, vmax=1)
    right.set_title("softmax(scores + M): each row sums to 1", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("key position s (looked at)")
        ax.set_ylabel("query position t")
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
    fig.colorbar(image, ax=right, shrink=0.8, label="attention weight")
    return fig


def box(ax, x, y, w, h, text, color, fontsize=8, **kw):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", lw=0.6, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, start, end, **kw):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=0.8, **kw))


def colors(n: int) -> list:
    import matplotlib
    return [matplotlib.colormaps["tab10"](i) for i in range(n)]


def heads_figure(D: int = 128, H: int = 4) -> Figure:
    """One position's q (width D) cut into H heads of K = D/H features."""
    K = D // H
    head_colors = colors(H)
    fig = Figure(figsize=(7.4, 2.8), layout="constrained")
    ax = fig.subplots()
    cell = 0.5  # One drawn cell per 8 features.
    per = K // 8
    for j in range(D // 8):
        box(ax, j * cell, 3.0, cell, 0.6, "", head_colors[j // per])
    ax.text(-0.2, 3.3, f"q_t, D = {D}", ha="right", va="center", fontsize=9)
    for h in range(H):
        x0 = h * (per * cell + 0.9)
        for j in range(per):
            box(ax, x0 + j * cell, 0.8, cell, 0.6, "", head_colors[h])
        ax.text(x0 + per * cell / 2, 0.35, f"head {h}: K = {K}", ha="center", fontsize=8)
        arrow(ax, ((h * per + per / 2) * cell, 3.0), (x0 + per * cell / 2, 1.45))
    ax.text(D // 16 * cell + 0.6, -0.35, "reshape [T, D] → [T, H, K]: no copy, no parameters; "
            "each head attends with its own K features (one cell = 8 features)",
            ha="center", fontsize=8)
    ax.set_xlim(-3.2, D // 8 * cell + 3.2)
    ax.set_ylim(-0.6, 4)
    ax.axis("off")
    ax.set_title(f"splitting the width D into H heads (char_cpu: D = {D}, H = {H}, K = {K})",
                 fontsize=9)
    return fig


def residual_stream_figure() -> Figure:
    """A pre-norm block: each sublayer reads a normalised copy and adds back."""
    fig = Figure(figsize=(7.4, 2.7), layout="constrained")
    ax = fig.subplots()
    ax.plot([0.3, 9.7], [1, 1], color="tab:gray", lw=6, alpha=0.5, solid_capstyle="butt")
    ax.text(0.3, 0.55, "x (from the block below)", fontsize=8)
    ax.text(9.7, 0.55, "x (to the next block)", fontsize=8, ha="right")
    for x0, name in ((1.5, "attention\n(mixes positions)"), (5.5, "MLP\n(each position)")):
        box(ax, x0, 2.0, 1.2, 0.7, "LayerNorm", "#dde8f5")
        box(ax, x0 + 1.6, 2.0, 1.5, 0.7, name, "#f7e1c6")
        arrow(ax, (x0 - 0.3, 1.1), (x0 + 0.2, 2.0))
        arrow(ax, (x0 + 1.2, 2.35), (x0 + 1.6, 2.35))
        arrow(ax, (x0 + 3.1, 2.2), (x0 + 3.5, 1.15))
        ax.text(x0 + 3.55, 1.0, "+", fontsize=16, ha="center", va="center")
    ax.text(5.0, 3.1, "x ← x + Attn(Norm(x));   x ← x + MLP(Norm(x))", ha="center", fontsize=9)
    ax.set_xlim(0, 10)
    ax.set_ylim(0.3, 3.4)
    ax.axis("off")
    ax.set_title("the residual stream through one (pre-norm) block: sublayers read it and add to it",
                 fontsize=9)
    return fig


def kv_cache_steps(W: int, prompt: int, new: int, slide_step: int) -> list[tuple]:
    """(kind, window token numbers, positions computed) per generated token,
    following the rule of generation.generate."""
    window, cached, rows = list(range(prompt)), False, []
    for i in range(new):
        n = len(window)
        drop = slide_step if n == W else 0
        if not cached:
            kind, computed, cached = "prefill: fill the cache", range(n), True
        else:
            kind, computed = "cached step: one new position", [n - 1]
        if drop:
            kind += f"; then the window slides by {drop} (cache dropped)"
            cached = False
        rows.append((kind, list(window), list(computed)))
        window = window[drop:] + [prompt + i]
    return rows


def kv_cache_figure(W: int = 8, prompt: int = 3, new: int = 12, slide_step: int = 4) -> Figure:
    """Which window slots each generation step computes, reads from the cache, or leaves empty."""
    rows = kv_cache_steps(W, prompt, new, slide_step)
    fig = Figure(figsize=(7.4, 0.32 * len(rows) + 1.1), layout="constrained")
    ax = fig.subplots()
    fill = {"computed": "#f4a261", "cached": "#8ecae6", "empty": "white"}
    for r, (kind, window, computed) in enumerate(rows):
        y = len(rows) - 1 - r
        for slot in range(W):
            state = ("empty" if slot >= len(window) else
                     "computed" if slot in computed else "cached")
            box(ax, slot, y, 1, 0.9, "" if state == "empty" else str(window[slot]),
                fill[state], fontsize=7)
        ax.text(W + 0.3, y + 0.45, f"→ token {prompt + r}: {kind}", va="center", fontsize=7)
    ax.legend(handles=[Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black", label=k)
                       for k, c in (("run this step", fill["computed"]),
                                    ("keys/values read from the cache", fill["cached"]),
                                    ("empty slot (masked)", fill["empty"]))],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=7)
    ax.set_xlim(0, W + 7.5)
    ax.set_ylim(0, len(rows))
    ax.axis("off")
    ax.set_title(f"the KV cache filling and sliding (generation.generate): window of {W} slots,\n"
                 f"prompt of {prompt} tokens, slide_step={slide_step}; numbers are token "
                 "positions in the text", fontsize=8)
    return fig


def newton_schulz_figure(shape: tuple[int, int] = (128, 512)) -> Figure:
    """Singular values of a gradient-like matrix before and after Muon's
    Newton-Schulz iteration (smallgpt_jax.muon.newton_schulz), and the
    quintic each singular value goes through five times."""
    from smallgpt_jax import muon
    rng = np.random.default_rng(0)
    m, n = shape
    # Low rank plus noise, as gradients are: a few directions dominate.
    G = (rng.normal(size=(m, 4)) * [30, 10, 5, 2]) @ rng.normal(size=(4, n)) / np.sqrt(n)
    G = (G + 0.3 * rng.normal(size=shape)).astype(np.float32)
    before = np.linalg.svd(G, compute_uv=False)
    after = np.linalg.svd(np.asarray(muon.newton_schulz(G)), compute_uv=False)
    fig = Figure(figsize=(8.4, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.semilogy(before / before.max(), ".", ms=3, label="G (scaled to max 1)")
    left.semilogy(after, ".", ms=3, label="NewtonSchulz(G)")
    left.set_xlabel("singular value index")
    left.set_ylabel("singular value")
    left.set_title(f"a {m}×{n} gradient-like matrix", fontsize=9)
    left.legend(fontsize=8)
    a, b, c = muon.NS_COEFFICIENTS
    s = np.linspace(0, 1, 400)  # Dividing by the norm puts every singular value here.
    right.plot(s, s, "k:", lw=1, label="s")
    right.plot(s, a * s + b * s**3 + c * s**5, label="one step: 3.4445s − 4.7750s³ + 2.0315s⁵")
    y = s.copy()
    for _ in range(muon.NS_STEPS):
        y = a * y + b * y**3 + c * y**5
    right.plot(s, y, label="five steps")
    right.axhspan(0.68, 1.13, color="0.9", zorder=0, label="where they end")
    right.set_ylim(0, 1.6)
    right.set_xlabel("singular value in (after dividing G by its norm)")
    right.set_ylabel("singular value out")
    right.set_title("what the iteration does to each singular value", fontsize=9)
    right.legend(fontsize=7, loc="upper left")
    return fig
