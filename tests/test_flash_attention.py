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


def qkv_dy(B=2, T=16, H=3, K=8, dtype=jnp.float32, key=0):
    """A random qkv [B, T, 3D] and a cotangent [B, T, D] for y."""
    a, b = jax.random.split(jax.random.key(key))
    return (jax.random.normal(a, (B, T, 3 * H * K), dtype),
            jax.random.normal(b, (B, T, H * K), dtype))


def kernel(rate, H=3):
    return lambda qkv: fa.flash_attention(qkv, SEED, H, rate, True)


def reference(rate, H=3):
    return lambda qkv: fa.attention_reference(qkv, SEED, H, rate)


def grad(fn, qkv, dy):
    return jax.grad(lambda qkv: (fn(qkv) * dy).sum())(qkv)


@pytest.fixture
def query_blocks(monkeypatch):
    """Blocks of 8 query rows: a T of 32 runs 4 grid steps, so the backward
    sums dk and dv over several blocks."""
    monkeypatch.setattr(fa, "MAX_BLOCK", 8)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_the_kernel_computes_the_reference_forward_and_gradients(rate, query_blocks):
    # 4 heads of 64: 2 head groups of 2 heads (128 columns each), as on a TPU.
    qkv, dy = qkv_dy(T=32, H=4, K=64)
    np.testing.assert_allclose(kernel(rate, 4)(qkv), reference(rate, 4)(qkv),
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grad(kernel(rate, 4), qkv, dy), grad(reference(rate, 4), qkv, dy),
                               atol=1e-5, rtol=1e-5)


def test_a_query_block_never_reads_the_key_tiles_after_it(query_blocks):
    # NaN keys and values after the first block of 8 rows: that block's
    # outputs and query gradients do not see them, as they would if the
    # masked tiles were computed (0 x NaN is NaN).
    qkv, dy = qkv_dy(T=32, H=4, K=64)
    D = qkv.shape[-1] // 3
    poisoned = qkv.at[:, 8:, D:].set(jnp.nan)
    dy = dy.at[:, 8:].set(0.0)
    for rate in (0.0, 0.3):
        y = np.asarray(kernel(rate, 4)(poisoned))
        np.testing.assert_array_equal(y[:, :8], np.asarray(kernel(rate, 4)(qkv))[:, :8])
        assert np.isnan(y[:, 8:]).all()
        dq = np.asarray(grad(kernel(rate, 4), poisoned, dy))[:, :8, :D]
        np.testing.assert_array_equal(dq, np.asarray(grad(kernel(rate, 4), qkv, dy))[:, :8, :D])


def test_heads_are_grouped_to_fill_whole_lanes():
    assert fa.heads_per_step(6, 64) == 2 and fa.heads_per_step(8, 48) == 8
    assert fa.heads_per_step(4, 128) == 1 and fa.heads_per_step(2, 16) is None
    assert fa.heads_per_step(2, 16, tpu=False) == 2  # The interpreter: all heads at once.


def explicit(qkv, H=3):
    """The model's explicit attention, on qkv [B, T, 3D]."""
    B, T, _ = qkv.shape
    q, k, v = jnp.moveaxis(qkv.reshape(B, T, 3, H, -1), 2, 0)
    mask = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
    p = attention_weights(q, k, mask)
    return jnp.einsum("bhts,bshk->bthk", p, v).reshape(B, T, -1)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_without_dropout_it_is_the_explicit_attention(dtype, tol):
    qkv, dy = qkv_dy(dtype=dtype)
    f32 = lambda a: np.asarray(a, np.float32)
    np.testing.assert_allclose(f32(kernel(0.0)(qkv)), f32(explicit(qkv)), atol=tol, rtol=tol)
    np.testing.assert_allclose(f32(grad(kernel(0.0), qkv, dy)), f32(grad(explicit, qkv, dy)),
                               atol=tol * 4, rtol=tol * 4)


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
    q_k = jax.random.normal(jax.random.key(3), (1, T, 2 * T))
    qkv = jnp.concatenate([q_k, jnp.eye(T)[None]], axis=-1)
    weights = np.asarray(kernel(0.5, 1)(qkv))[0]
    plain = np.asarray(kernel(0.0, 1)(qkv))[0]
    kept = weights != 0
    np.testing.assert_allclose(weights[kept], 2 * plain[kept], rtol=1e-5)
    assert 0.3 < kept[np.tril_indices(T)].mean() < 0.7


def test_future_keys_get_no_gradient():
    qkv, _ = qkv_dy(T=16)
    t = 5  # The loss reads query row t only: keys and values after t must not matter.
    d = np.asarray(jax.grad(lambda qkv: kernel(0.3)(qkv)[:, t].sum())(qkv))
    dq, dk, dv = np.split(d, 3, axis=-1)
    assert np.all(dk[:, t + 1:] == 0) and np.all(dv[:, t + 1:] == 0)
    assert np.abs(dk[:, :t + 1]).sum() > 0
    assert np.all(dq[:, :t] == 0) and np.all(dq[:, t + 1:] == 0)


V = 13


def _losses(attention: str, dropout: float, steps: int = 2, **overrides) -> list[float]:
    c = tiny_config(**{"model.attention": attention, "model.dropout": dropout,
                       "train.warmup_steps": 0}, **overrides)
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
    # Queries and keys changed after the projection (rope, QK-norm) and values
    # with embeddings added reach the kernel as one qkv array too.
    changed = {"model.pos_encoding": "rope", "model.qk_norm": True,
               "model.value_embeddings": True}
    assert _losses("flash", 0.0, **changed) == pytest.approx(
        _losses("explicit", 0.0, **changed), rel=1e-5)


def test_where_the_kernel_runs_and_which_contexts_it_refuses():
    lanes = {"model.embed_dim": 128}  # 2 heads of 64: one group fills 128 lanes.
    c = tiny_config(**lanes, **{"model.attention": "auto"})
    assert model_config(c.model, V, platform="cpu").attention == "explicit"
    tpu = model_config(c.model, V, platform="tpu")
    assert (tpu.attention, tpu.attention_impl) == ("flash", "mosaic")
    flash = tiny_config(**{"model.attention": "flash"})  # 2 heads of 16.
    assert model_config(flash.model, V, platform="cpu").attention_impl == "interpret"
    with pytest.raises(UserError, match="does not run on a GPU"):
        model_config(flash.model, V, platform="gpu")
    with pytest.raises(UserError, match="2 heads of 16 do not"):
        model_config(flash.model, V, platform="tpu")
    for bad in ({"model.block_size": fa.MAX_BLOCK + 8}, {"model.embed_dim": 32}):
        assert model_config(tiny_config(**{**lanes, **bad, "model.attention": "auto"}).model,
                            V, platform="tpu").attention == "explicit"
    long = {"model.block_size": fa.MAX_BLOCK + 8}
    with pytest.raises(UserError, match="must be a multiple of"):
        validate(tiny_config(**long, **{"model.attention": "flash"}), machine=False)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason='no libtpu: pip install -e ".[tpu]" to compile for TPU targets')
def test_mosaic_compiles_the_kernel_for_a_tpu():
    from smallgpt_jax.analysis import aot
    t = aot.target("tpu:v5e-1")
    result = aot.compile_steps(tiny_config(**{"model.attention": "flash", "model.dropout": 0.1,
                                              "model.embed_dim": 128}), V, t)
    train_hlo, eval_hlo = (p.hlo for p in result["programs"])
    # Forward and backward per layer in the train step, the forward in the eval step.
    assert train_hlo.count('custom_call_target="tpu_custom_call"') == 4
    assert eval_hlo.count('custom_call_target="tpu_custom_call"') == 2
    assert '"cost_estimate":{"flops"' in train_hlo
    assert not math.isnan(aot.summary(result, t)["bytes_per_step"])
