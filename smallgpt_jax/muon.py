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
(which would need more iterations and buys nothing measurable).

Muon is for the 2-D matrices inside the blocks. The token embedding, the
output head, norm scales, biases, position tables and learned scalars keep
AdamW: `labels` names each parameter's optimizer, by name, as
`train.decay_mask` names decay.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz(G: Array, steps: int = NS_STEPS, eps: float = 1e-7) -> Array:
    """About U V^T for G = U S V^T ([..., m, n]): `steps` (>= 1) quintic iterations.

    Float32 throughout: the speedrun iterates in bfloat16 for GPU speed, but a
    CPU has no fast bfloat16 matmul, and these matrices are small."""
    a, b, c = NS_COEFFICIENTS
    T = lambda M: jnp.swapaxes(M, -1, -2)
    X = G.astype(jnp.float32)
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # Iterate on the wide side: X X^T is then the smaller square.
        X = T(X)
    # Frobenius norm >= spectral norm: the singular values start in [0, 1].
    X = X / (jnp.linalg.norm(X, axis=(-2, -1), keepdims=True) + eps)
    m, n = X.shape[-2:]
    if n < 2 * m:
        for _ in range(steps):
            A = X @ T(X)
            X = a * X + (b * A + c * A @ A) @ X
    else:
        # The same iteration on m x m matrices only. Every iterate is Q X0,
        # with Q a polynomial in S = X0 X0^T (so Q is symmetric and commutes
        # with S): X X^T = Q S Q, and X <- (a + b A + c A^2) X is
        # Q <- (a + b A + c A^2) Q. Four m x m products per iteration instead
        # of two m x n ones and an m x m one (the first, from Q = I, needs
        # one): 44% fewer FLOPs in all for the MLP's 128 x 512 matrices (the
        # results agree to float32 rounding).
        S = X @ T(X)
        Q = a * jnp.eye(m, dtype=X.dtype) + b * S + c * S @ S
        for _ in range(steps - 1):
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


def orthogonalise(path, g: Array) -> Array:
    """One parameter's Muon direction: U V^T of each of its matrices, times
    max(1, fan_out / fan_in) ** 0.5 so that a wide output matrix's update
    (whose rows cannot all be orthonormal) has entries of the same size as a
    square one's (the speedrun's scale)."""
    m, back = _matrices(path, g)
    fan_in, fan_out = m.shape[-2:]
    return back(newton_schulz(m) * max(1.0, fan_out / fan_in) ** 0.5).astype(g.dtype)


class MuonState(NamedTuple):
    count: Array  # Updates so far (for the momentum warmup).
    momentum: Any  # The momentum buffer, one per parameter.


def scale_by_muon(momentum: optax.Schedule) -> optax.GradientTransformation:
    """Nesterov momentum (coefficient `momentum(step)`), then `orthogonalise`.
    The update still needs the learning rate (`optax.scale_by_learning_rate`)."""
    def init(params):
        return MuonState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        beta = momentum(state.count)
        buf = jax.tree_util.tree_map(lambda m, g: beta * m + g, state.momentum, grads)
        # Nesterov: step along the gradient plus the momentum it is heading to.
        ahead = jax.tree_util.tree_map(lambda m, g: g + beta * m, buf, grads)
        updates = jax.tree_util.tree_map_with_path(orthogonalise, ahead)
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
