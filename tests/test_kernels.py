"""kernels.py's hand-written backward passes against jax.grad of the plain formulas.

The fast versions must be the same functions as the plain ones (normalization.layer_norm,
a dense layer's x @ W): same values, and the same gradients as `jax.grad`
differentiating the plain formula, with and without a bias, and inside
shard_map (where the operands carry replication types; a one-device mesh here,
the multi-device train steps of test_train.py/test_distributed.py run them too).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from smallgpt_jax import kernels
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.normalization import layer_norm
from smallgpt_jax.system import runtime

TOL = dict(rtol=2e-5, atol=2e-6)


def _inputs(with_bias: bool):
    kx, ks, kb, kg = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (3, 5, 16)) * 2 + 1
    scale = 1 + 0.1 * jax.random.normal(ks, (16,))
    bias = 0.1 * jax.random.normal(kb, (16,)) if with_bias else None
    g = jax.random.normal(kg, (3, 5, 16))  # The incoming gradient (cotangent).
    return x, scale, bias, g


def _vjp(fn, *args):
    """(value, gradients w.r.t. every non-None argument) for cotangent args[-1]."""
    *inputs, g = args
    y, pull = jax.vjp(fn, *inputs)
    return y, pull(g)


def _plain_dense(x_BTD, w_DN, b_N):
    y = jax.lax.dot_general(x_BTD, w_DN, (((2,), (0,)), ((), ())))
    return y if b_N is None else y + b_N


def _fast_dense(x_BTD, w_DN, b_N):
    y = kernels.dense_dot_general(x_BTD, w_DN, (((2,), (0,)), ((), ())))
    return y if b_N is None else y + b_N


def _assert_same_vjp(fast, plain, args, under: str) -> None:
    """fast and plain give the same values and input gradients, for args
    (x, parameter, bias or None, cotangent)."""
    if under == "shard_map":
        # x and the cotangent are split over the mesh (per-device data), the
        # parameters replicated: the case where kernels._vary_like must cast.
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        wrap = lambda f: jax.jit(jax.shard_map(
            functools.partial(_vjp, f), mesh=mesh, in_specs=(P("data"), P(), P(), P("data")),
            out_specs=(P("data"), (P("data"), P(), P()))))
    else:
        wrap = lambda f: functools.partial(_vjp, f)
    got, want = wrap(fast)(*args), wrap(plain)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                    strict=True):
        np.testing.assert_allclose(a, b, **TOL)
    assert (got[1][2] is None) == (args[2] is None)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("under", ["plain", "shard_map"])
def test_layer_norm_backward_equals_jax_grad(with_bias, under):
    _assert_same_vjp(lambda x, s, b: kernels.layer_norm(x, s, b, 1e-5),
                     lambda x, s, b: layer_norm(x, s, b, 1e-5), _inputs(with_bias), under)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("under", ["plain", "shard_map"])
def test_dense_backward_equals_jax_grad(with_bias, under):
    x = _inputs(False)[0]
    kw, kb, kg = jax.random.split(jax.random.key(1), 3)
    w = jax.random.normal(kw, (16, 24)) * 0.1
    b = jax.random.normal(kb, (24,)) if with_bias else None
    g = jax.random.normal(kg, (3, 5, 24))
    _assert_same_vjp(_fast_dense, _plain_dense, (x, w, b, g), under)


def test_dense_leaves_other_contractions_to_lax():
    """A contraction that is not 'last axes of x with first axes of W' is not
    flattened: it is lax.dot_general itself."""
    a, b = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    dims = (((2,), (1,)), ((0,), (0,)))  # A batched matmul.
    np.testing.assert_array_equal(kernels.dense_dot_general(a, b, dims),
                                  jax.lax.dot_general(a, b, dims))


@pytest.mark.parametrize("use_bias", [True, False])
def test_switch_gives_the_same_model_and_gradients(use_bias):
    """fast_backward 'on' and 'off' are the same model: same logits and grads."""
    cfg_on = model_config(tiny_config(**{"model.use_bias": use_bias,
                                         "model.fast_backward": "on"}).model, 11)
    cfg_off = cfg_on.replace(fast_backward="off")
    assert kernels.fast_ops(cfg_on.fast_backward == "on")[0] is kernels.dense_dot_general
    assert kernels.fast_ops(cfg_off.fast_backward == "on") == (None, layer_norm)
    tokens = jax.random.randint(jax.random.key(2), (2, cfg_on.block_size), 0, 11)
    params = GPT(cfg_on).init(jax.random.key(0), tokens)["params"]

    def loss(p, cfg):
        return GPT(cfg).apply({"params": p}, tokens).std()

    (l_on, g_on), (l_off, g_off) = (jax.value_and_grad(loss)(params, c)
                                    for c in (cfg_on, cfg_off))
    np.testing.assert_allclose(l_on, l_off, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g_on), jax.tree_util.tree_leaves(g_off)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_fused_attention_uses_cudnn_only_where_it_can(monkeypatch):
    monkeypatch.setattr(runtime, "may_use_cuda", lambda environ: True)
    pick = kernels.fused_implementation
    assert pick("gpu", "bfloat16", 64, decode=False) == "cudnn"
    assert pick("gpu", "float16", 128, decode=False) == "cudnn"
    assert pick("gpu", "float32", 64, decode=False) is None  # cuDNN: half precision only.
    assert pick("gpu", "bfloat16", 64, decode=True) is None  # The cache needs a mask.
    assert pick("gpu", "bfloat16", 12, decode=False) is None  # Head size not a multiple of 8.
    assert pick("cpu", "bfloat16", 64, decode=False) is None
    monkeypatch.setattr(runtime, "may_use_cuda", lambda environ: False)  # e.g. ROCm.
    assert pick("gpu", "bfloat16", 64, decode=False) is None
