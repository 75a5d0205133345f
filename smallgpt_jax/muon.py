"""Muon: momentum, then an orthogonalised update, for the hidden matrices
(docs/15-modern-recipe.md).

Adam scales each entry of an update on its own. Muon treats a weight matrix
as a matrix: it takes the (Nesterov) momentum of its gradient, G = U S V^T,
and steps along U V^T instead, every singular value replaced by about 1. A
few directions with large gradients no longer drown out the rest: every
direction the gradient points in moves the same amount.

U V^T is not computed with an SVD (slow, and awkward on accelerators) but
with 5 Newton-Schulz iterations, X <- a X + b (X X^T) X + c (X X^T)^2 X,
with the quintic coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) of the
GPT-2 speedrun (modded-nanogpt): after scaling X to spectral norm <= 1, they
push every singular value into roughly [0.7, 1.2] fast, not exactly to 1
(which would need more iterations and buys nothing measurable). Each step
may also have its own coefficients ('minimax': `minimax_schedule`), which
reach the same kind of band in fewer steps.

Muon is for the 2-D matrices inside the blocks. The token embedding, the
output head, norm scales, biases, position tables and learned scalars keep
AdamW: `labels` names each parameter's optimizer, by name, as
`train.decay_mask` names decay.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Coefficients = tuple[tuple[float, float, float], ...]  # (a, b, c) per step.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
# minimax_schedule(steps) for 3, 4 and 5 steps, rounded: each maps every
# singular value in [lower, 1] into about [0.8, 1.2] (lower: 0.0127, 0.0030, 0.0007).
MINIMAX = {
    3: ((7.9883, -23.2063, 17.1169), (3.5093, -2.6294, 0.5260), (2.4945, -1.8380, 0.4372)),
    4: ((8.3845, -24.7692, 18.3597), (4.0447, -3.0123, 0.5696), (3.5093, -2.6294, 0.5260),
        (2.4945, -1.8380, 0.4372)),
    5: ((8.4835, -25.1599, 18.6705), (4.2047, -3.1239, 0.5823), (4.0447, -3.0123, 0.5696),
        (3.5093, -2.6294, 0.5260), (2.4945, -1.8380, 0.4372)),
}


def ns_coefficients(steps: int = NS_STEPS, kind: str = "speedrun") -> Coefficients:
    """The iteration's (a, b, c) for each of `steps` steps: the speedrun's
    quintic every step ('speedrun'), or `MINIMAX[steps]` ('minimax')."""
    if kind not in ("speedrun", "minimax"):
        raise ValueError(f"unknown Newton-Schulz coefficients {kind!r}: 'speedrun' or 'minimax'.")
    return MINIMAX[steps] if kind == "minimax" else (NS_COEFFICIENTS,) * steps


def minimax_schedule(steps: int, band: float = 0.2) -> tuple[Coefficients, float]:
    """Per-step coefficients that bring every singular value in [lower, 1]
    into [1 - band, 1 + band] in `steps` steps, for the smallest such lower.

    Greedy, step by step (the idea of the Polar Express paper, Amsel et al.
    2025): where the singular values lie in [lo, hi], take the odd quintic
    p(s) = a s + b s^3 + c s^5 closest to 1 on [lo, hi] in the worst case (a
    linear programme over a grid), and continue on [min p, max p]. A smaller
    lower needs a steeper first step and ends in a wider band; bisect on it.
    The speedrun's fixed quintic is slower from small values: in 5 steps it
    maps [0.002, 1] into about [0.68, 1.2]. Slow (seconds): MINIMAX holds
    the results that the optimiser uses."""
    from scipy.optimize import linprog  # scipy comes with JAX.

    def closest_quintic(lo, hi):
        s = np.unique(np.concatenate([np.geomspace(lo, hi, 500), np.linspace(lo, hi, 500)]))
        P = np.stack([s, s**3, s**5], 1)
        ones = np.ones((len(s), 1))
        # Minimise t subject to -t <= 1 - P (a, b, c) <= t.
        res = linprog([0, 0, 0, 1], A_ub=np.block([[P, -ones], [-P, -ones]]),
                      b_ub=np.concatenate([ones[:, 0], -ones[:, 0]]),
                      bounds=[(None, None)] * 3 + [(0, None)], method="highs")
        p = P @ res.x[:3]
        return tuple(float(v) for v in res.x[:3]), float(p.min()), float(p.max())

    def schedule(lower):
        lo, hi, out = lower, 1.0, []
        for _ in range(steps):
            abc, lo, hi = closest_quintic(lo, hi)
            out.append(abc)
        return tuple(out), max(1 - lo, hi - 1)

    small, large = 1e-6, 0.5
    for _ in range(30):
        mid = (small * large) ** 0.5
        small, large = (small, mid) if schedule(mid)[1] <= band else (mid, large)
    return schedule(large)[0], large


def newton_schulz(G: Array, coefficients: Coefficients = ns_coefficients(),
                  eps: float = 1e-7) -> Array:
    """About U V^T for G = U S V^T ([..., m, n]): one quintic iteration per
    (a, b, c) of `coefficients`.

    Float32 throughout: the speedrun iterates in bfloat16 for GPU speed, but a
    CPU has no fast bfloat16 matmul, and these matrices are small."""
    T = lambda M: jnp.swapaxes(M, -1, -2)
    X = G.astype(jnp.float32)
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # Iterate on the wide side: X X^T is then the smaller square.
        X = T(X)
    # Frobenius norm >= spectral norm: the singular values start in [0, 1].
    X = X / (jnp.linalg.norm(X, axis=(-2, -1), keepdims=True) + eps)
    m, n = X.shape[-2:]
    if n < 2 * m:
        for a, b, c in coefficients:
            A = X @ T(X)
            X = a * X + (b * A + c * A @ A) @ X
    else:
        # The same iteration on m x m matrices only. Every iterate is Q X0,
        # with Q a polynomial in S = X0 X0^T (so Q is symmetric and commutes
        # with S): X X^T = Q S Q, and X <- (a + b A + c A^2) X is
        # Q <- (a + b A + c A^2) Q. Four m x m products per iteration instead
        # of two m x n ones and an m x m one (the first, from Q = I, needs
        # one): 44% fewer FLOPs in all for the MLP's two matrices at width
        # 128 (SwiGLU's 128 x 682 and 341 x 128, or 128 x 512 and 512 x 128;
        # the results agree to float32 rounding).
        S = X @ T(X)
        (a, b, c), *rest = coefficients
        Q = a * jnp.eye(m, dtype=X.dtype) + b * S + c * S @ S
        for a, b, c in rest:
            A = Q @ S @ Q
            Q = a * Q + (b * A + c * A @ A) @ Q
        X = Q @ X
    return T(X) if tall else X


def _matrices(path, p: Array) -> tuple[Array, Any]:
    """A kernel seen as its matrices [..., fan_in, fan_out], and how to undo it.

    The attention's qkv kernel [(L,) D, 3, H, K] is three matrices (q, k and
    v are orthogonalised each on its own, as the speedrun does); its output
    projection [(L,) H, K, D] is one matrix of H*K rows; a Dense kernel is
    one already. A leading L axis (nn.scan's layers) stays a batch axis."""
    names = [getattr(k, "key", "") for k in path]
    if names[-2] == "qkv":
        lead = p.shape[:-4]
        x = jnp.moveaxis(p, -3, len(lead)).reshape(*lead, 3, p.shape[-4], -1)
        return x, lambda y: jnp.moveaxis(y.reshape(*lead, 3, *p.shape[-4:-3], *p.shape[-2:]),
                                         len(lead), -3)
    if names[-2] == "proj" and names[-3] == "attn":
        return p.reshape(*p.shape[:-3], -1, p.shape[-1]), lambda y: y.reshape(p.shape)
    return p, lambda y: y


def orthogonalise(path, g: Array, coefficients: Coefficients = ns_coefficients()) -> Array:
    """One parameter's Muon direction: U V^T of each of its matrices, times
    max(1, fan_out / fan_in) ** 0.5 so that a wide output matrix's update
    (whose rows cannot all be orthonormal) has entries of the same size as a
    square one's (the speedrun's scale)."""
    m, back = _matrices(path, g)
    fan_in, fan_out = m.shape[-2:]
    return back(newton_schulz(m, coefficients) * max(1.0, fan_out / fan_in) ** 0.5).astype(g.dtype)


class MuonState(NamedTuple):
    count: Array  # Updates so far (for the momentum warmup).
    momentum: Any  # The momentum buffer, one per parameter.


def scale_by_muon(momentum: optax.Schedule,
                  coefficients: Coefficients = ns_coefficients()) -> optax.GradientTransformation:
    """Nesterov momentum (coefficient `momentum(step)`), then `orthogonalise`
    with Newton-Schulz `coefficients`.
    The update still needs the learning rate (`optax.scale_by_learning_rate`)."""
    def init(params):
        return MuonState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        beta = momentum(state.count)
        buf = jax.tree_util.tree_map(lambda m, g: beta * m + g, state.momentum, grads)
        # Nesterov: step along the gradient plus the momentum it is heading to.
        ahead = jax.tree_util.tree_map(lambda m, g: g + beta * m, buf, grads)
        updates = jax.tree_util.tree_map_with_path(
            lambda path, g: orthogonalise(path, g, coefficients), ahead)
        return updates, MuonState(state.count + 1, buf)

    return optax.GradientTransformation(init, update)


def labels(params) -> Any:
    """'muon' for the kernels inside the blocks (attention and MLP matrices);
    'adamw' for everything else: embeddings, the head, norm scales, biases,
    position tables, learned scalars."""
    def label(path, _):
        names = [getattr(k, "key", "") for k in path]
        in_block = any(n.startswith("block") for n in names)
        return "muon" if in_block and names[-1] == "kernel" else "adamw"
    return jax.tree_util.tree_map_with_path(label, params)


def momentum_schedule(t) -> optax.Schedule:
    """Muon's momentum: linear from muon_momentum_start to muon_momentum over
    muon_momentum_warmup steps (a high momentum too early averages over
    gradients of a model that has since changed a lot)."""
    return optax.linear_schedule(t.muon_momentum_start, t.muon_momentum,
                                 max(t.muon_momentum_warmup, 1))
