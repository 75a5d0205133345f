"""The flash attention kernel (flash_attention.py, config.model.attention='flash'),
run in Pallas interpret mode on the CPU at tiny sizes: it computes the jnp
reference's function, forward and gradients, with and without its hash
dropout; without dropout it is the explicit attention; and the model trains
with it. A compile for a TPU checks that Mosaic takes the kernel."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import flash_attention as fa, train
from smallgpt_jax.attention import attention_weights
from smallgpt_jax.config import validate
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import UserError

SEED = jnp.array([1234], jnp.int32)


def qkv(B=2, H=3, T=16, K=8, dtype=jnp.float32, key=0):
    return [jax.random.normal(k, (B, H, T, K), dtype) for k in jax.random.split(
        jax.random.key(key), 4)]


def kernel(rate):
    return lambda q, k, v: fa.flash_attention(q, k, v, SEED, rate, True)


def reference(rate):
    return lambda q, k, v: fa.attention_reference(q, k, v, SEED, rate)


def grads(fn, q, k, v, dy):
    return jax.grad(lambda q, k, v: (fn(q, k, v) * dy).sum(), argnums=(0, 1, 2))(q, k, v)


@pytest.fixture
def query_blocks(monkeypatch):
    """Blocks of 8 query rows: a T of 32 runs 4 grid steps, so the backward
    sums dk and dv over several blocks."""
    monkeypatch.setattr(fa, "MAX_BLOCK", 8)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_the_kernel_computes_the_reference_forward_and_gradients(rate, query_blocks):
    q, k, v, dy = qkv(T=32)
    np.testing.assert_allclose(kernel(rate)(q, k, v), reference(rate)(q, k, v),
                               atol=1e-5, rtol=1e-5)
    for got, want in zip(grads(kernel(rate), q, k, v, dy), grads(reference(rate), q, k, v, dy)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def explicit(q, k, v):
    """The model's explicit attention, on [B, H, T, K] arrays."""
    BTHK = lambda a: a.transpose(0, 2, 1, 3)
    T = q.shape[2]
    mask = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
    p = attention_weights(BTHK(q), BTHK(k), mask)
    return jnp.einsum("bhts,bhsk->bhtk", p, v)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_without_dropout_it_is_the_explicit_attention(dtype, tol):
    q, k, v, dy = qkv(dtype=dtype)
    f32 = lambda a: np.asarray(a, np.float32)
    np.testing.assert_allclose(f32(kernel(0.0)(q, k, v)), f32(explicit(q, k, v)),
                               atol=tol, rtol=tol)
    for got, want in zip(grads(kernel(0.0), q, k, v, dy), grads(explicit, q, k, v, dy)):
        np.testing.assert_allclose(f32(got), f32(want), atol=tol * 4, rtol=tol * 4)


def test_dropout_keeps_one_minus_p_and_each_seed_head_and_row_has_its_own_mask():
    T, rate = 64, 0.2
    rows, cols = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    masks = {(seed, stream): np.asarray(fa.keep_mask(jnp.int32(seed), jnp.int32(stream),
                                                     rows, cols, T, rate))
             for seed in (0, 1, 2**31 - 1) for stream in (0, 1, 7)}
    kept = np.mean([m.mean() for m in masks.values()])
    assert abs(kept - (1 - rate)) < 0.01  # 36,864 draws: sd 0.002.
    flat = np.stack([m.ravel() for m in masks.values()])
    # Any two masks agree where independent ones would (0.8^2 + 0.2^2 = 0.68).
    agree = (flat[:, None] == flat[None]).mean(-1)[np.triu_indices(len(flat), 1)]
    assert np.all(np.abs(agree - 0.68) < 0.03)
    # Neighbouring rows and keys are not alike either.
    m = masks[(0, 0)]
    assert abs((m[1:] == m[:-1]).mean() - 0.68) < 0.03
    assert abs((m[:, 1:] == m[:, :-1]).mean() - 0.68) < 0.03


def test_the_kernels_dropout_scales_the_kept_weights():
    # With v = identity rows, y holds the dropped-out weights themselves.
    T = 16
    q, k, _, _ = qkv(B=1, H=1, T=T, K=T)
    v = jnp.eye(T)[None, None]
    weights = np.asarray(kernel(0.5)(q, k, v))[0, 0]
    plain = np.asarray(kernel(0.0)(q, k, v))[0, 0]
    kept = weights != 0
    np.testing.assert_allclose(weights[kept], 2 * plain[kept], rtol=1e-5)
    assert 0.3 < kept[np.tril_indices(T)].mean() < 0.7


def test_future_keys_get_no_gradient():
    q, k, v, _ = qkv(T=16)
    t = 5  # The loss reads query row t only: keys and values after t must not matter.
    loss = lambda q, k, v: kernel(0.3)(q, k, v)[:, :, t].sum()
    dq, dk, dv = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    assert np.all(np.asarray(dk)[:, :, t + 1:] == 0) and np.all(np.asarray(dv)[:, :, t + 1:] == 0)
    assert np.abs(np.asarray(dk)[:, :, :t + 1]).sum() > 0
    assert np.all(np.asarray(dq)[:, :, :t] == 0) and np.all(np.asarray(dq)[:, :, t + 1:] == 0)


V = 13


def _losses(attention: str, dropout: float, steps: int = 2) -> list[float]:
    c = tiny_config(**{"model.attention": attention, "model.dropout": dropout,
                       "train.warmup_steps": 0})
    cfg = model_config(c.model, V, platform="cpu")
    tx, schedule = train.make_optimizer(c.train)
    state = train.init_state(cfg, tx, c.seed)
    batch = jax.random.randint(jax.random.key(5), (1, 4, cfg.block_size + 1), 0, V)
    step = jax.jit(lambda s, b: train.train_step(s, b, model_config=cfg, tx=tx,
                                                 schedule=schedule, seed=c.seed))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses + [float(train.eval_step(state.params, batch, model_config=cfg).mean())]


def test_a_model_trains_with_the_kernel_as_with_the_explicit_attention():
    assert _losses("flash", 0.0) == pytest.approx(_losses("explicit", 0.0), rel=1e-5)
    with_dropout = _losses("flash", 0.3)
    assert np.all(np.isfinite(with_dropout)) and with_dropout != _losses("flash", 0.0)


def test_where_the_kernel_runs_and_which_contexts_it_refuses():
    c = tiny_config(**{"model.attention": "auto"})
    assert model_config(c.model, V, platform="cpu").attention == "explicit"
    tpu = model_config(c.model, V, platform="tpu")
    assert (tpu.attention, tpu.attention_impl) == ("flash", "mosaic")
    flash = tiny_config(**{"model.attention": "flash"})
    assert model_config(flash.model, V, platform="cpu").attention_impl == "interpret"
    with pytest.raises(UserError, match="does not run on a GPU"):
        model_config(flash.model, V, platform="gpu")
    long = {"model.block_size": fa.MAX_BLOCK + 8}
    assert model_config(tiny_config(**long, **{"model.attention": "auto"}).model, V,
                        platform="tpu").attention == "explicit"
    with pytest.raises(UserError, match="must be a multiple of"):
        validate(tiny_config(**long, **{"model.attention": "flash"}), machine=False)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason='no libtpu: pip install -e ".[tpu]" to compile for TPU targets')
def test_mosaic_compiles_the_kernel_for_a_tpu():
    from smallgpt_jax.analysis import aot
    t = aot.target("tpu:v5e-1")
    result = aot.compile_steps(tiny_config(**{"model.attention": "flash",
                                              "model.dropout": 0.1}), V, t)
    train_hlo, eval_hlo = (p.hlo for p in result["programs"])
    # Forward and backward per layer in the train step, the forward in the eval step.
    assert train_hlo.count('custom_call_target="tpu_custom_call"') == 4
    assert eval_hlo.count('custom_call_target="tpu_custom_call"') == 2
    assert '"cost_estimate":{"flops"' in train_hlo
    assert not math.isnan(aot.summary(result, t)["bytes_per_step"])
