"""The explicit attention's [B, H, T, S] arrays in the model's dtype: the same
losses and gradients within bfloat16's rounding, half the bytes kept for the
backward pass, and the float32 path unchanged; the fused one without dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import train
from smallgpt_jax.config import validate
from smallgpt_jax.attention import low_precision_softmax
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.system.errors import UserError

V = 11


def _setup(dtype: str, **overrides):
    cfg = model_config(tiny_config(**{"model.dtype": dtype, **overrides}).model, V)
    batch = jax.random.randint(jax.random.key(1), (4, cfg.block_size + 1), 0, V)
    params = GPT(cfg).init(jax.random.key(0), batch[:, :-1])["params"]
    return cfg, params, batch


def test_low_precision_softmax_matches_float32_within_rounding():
    x = jax.random.normal(jax.random.key(0), (3, 5, 40), jnp.float32) * 4
    x = x.at[..., 30:].set(-jnp.inf)  # Masked entries, as the causal mask makes.
    g = jax.random.normal(jax.random.key(1), x.shape, jnp.float32)
    x16 = x.astype(jnp.bfloat16)
    ref, ref_vjp = jax.vjp(lambda a: jax.nn.softmax(a, axis=-1), x16.astype(jnp.float32))
    out, out_vjp = jax.vjp(low_precision_softmax, x16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=4e-3)
    np.testing.assert_array_equal(np.asarray(out[..., 30:], np.float32), 0.0)
    (dx,), (ref_dx,) = out_vjp(g.astype(jnp.bfloat16)), ref_vjp(g)
    assert dx.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dx, np.float32), ref_dx, atol=2e-2)


def _tt_residuals(cfg, params, batch, key=None) -> list:
    """The dtypes of the [.., T, T] arrays the backward pass keeps."""
    _, vjp = jax.vjp(lambda p: train.loss_fn(p, cfg, batch, key), params)
    T = cfg.block_size
    return [x.dtype for x in jax.tree_util.tree_leaves(vjp)
            if hasattr(x, "shape") and x.ndim >= 3 and x.shape[-2:] == (T, T)]


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_bfloat16_backward_keeps_no_float32_attention_arrays(dropout):
    cfg, params, batch = _setup("bfloat16", **{"model.dropout": dropout})
    key = jax.random.key(3) if dropout else None
    assert jnp.float32 not in _tt_residuals(cfg, params, batch, key)


def test_bfloat16_loss_and_gradients_match_float32():
    grads = {}
    for dtype in ("float32", "bfloat16"):
        cfg, params, batch = _setup(dtype)
        grads[dtype] = jax.value_and_grad(train.loss_fn)(params, cfg, batch)
    (l32, g32), (l16, g16) = grads["float32"], grads["bfloat16"]
    assert abs(float(l16) - float(l32)) < 2e-2
    flat32 = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g32)])
    flat16 = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g16)])
    cosine = flat32 @ flat16 / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
    assert cosine > 0.99, float(cosine)


def test_float32_attention_keeps_float32_probabilities():
    """The float32 path is the formula as written (its losses are pinned by
    tests/test_loss_regression.py): jax.nn.softmax, in float32."""
    cfg, params, batch = _setup("float32")
    assert jnp.float32 in _tt_residuals(cfg, params, batch)


def test_fused_attention_refuses_dropout_in_one_line():
    with pytest.raises(UserError) as e:
        validate(tiny_config(**{"model.attention": "fused", "model.dropout": 0.1}))
    assert "attention='fused' has no attention dropout" in str(e.value)
    assert "\n" not in str(e.value)
    validate(tiny_config(**{"model.attention": "fused"}))  # Dropout 0: fine.
