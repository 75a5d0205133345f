"""Properties of the model: shapes, causality, attention maths, parameter count."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import kernels, model as model_lib
from smallgpt_jax.attention import CausalSelfAttention
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.positions import sinusoidal_table

V = 11


def make(overrides=None, seed=0, batch=3):
    cfg = model_config(tiny_config(**(overrides or {})).model, V)
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg.block_size), 0, V)
    params = GPT(cfg).init(jax.random.key(seed), tokens)["params"]
    return cfg, params, tokens


def test_logits_shape_and_dtype():
    cfg, params, tokens = make()
    logits = GPT(cfg).apply({"params": params}, tokens)
    assert logits.shape == (3, cfg.block_size, V)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("overrides", [
    {}, {"model.norm_position": "post"}, {"model.scan_layers": True},
    {"model.attention": "fused"}])
def test_causality_by_gradients(overrides):
    """d logits[t] / d input[s] is exactly zero for every s > t.

    The learned position table is added to the input at each position, so its
    row s is a handle on "the input at position s" we can differentiate by.
    """
    cfg, params, tokens = make(overrides, batch=1)
    T = cfg.block_size

    def logits_at(pos_table, t):
        p = dict(params, pos_embed=pos_table)
        return GPT(cfg).apply({"params": p}, tokens)[0, t].sum()

    for t in (0, T // 2, T - 1):
        grad_TD = jax.grad(logits_at)(params["pos_embed"], t)
        influence = np.abs(np.asarray(grad_TD)).sum(-1)
        assert np.all(influence[t + 1:] == 0.0), f"position {t} sees the future"
        assert np.all(influence[:t + 1] > 0.0), f"position {t} ignores its past"


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "none"])
def test_changing_future_tokens_leaves_earlier_logits_unchanged(pos):
    cfg, params, tokens = make({"model.pos_encoding": pos})
    base = GPT(cfg).apply({"params": params}, tokens)
    for t in (0, cfg.block_size // 2):
        changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % V)
        out = GPT(cfg).apply({"params": params}, changed)
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-4)


def naive_attention(p, x_TD, H):
    """Per-head loop in numpy: softmax(q k^T / sqrt(K) + causal mask) v."""
    T, D = x_TD.shape
    K = D // H
    qkv = np.einsum("td,dchk->tchk", x_TD, p["qkv"]["kernel"]) + p["qkv"]["bias"]
    heads = []
    for h in range(H):
        q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
        scores = q @ k.T / math.sqrt(K)
        scores[np.triu_indices(T, 1)] = -np.inf
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        heads.append(w @ v)
    y_TD = np.concatenate(heads, axis=-1)
    W = p["proj"]["kernel"].reshape(D, D)
    return y_TD @ W + p["proj"]["bias"]


@pytest.mark.parametrize("kind", ["explicit", "fused", "flash"])
def test_attention_matches_naive_per_head_loop(kind):
    cfg = model_config(tiny_config(**{"model.attention": kind}).model, V)
    attn = CausalSelfAttention(cfg)
    x = jax.random.normal(jax.random.key(0), (2, cfg.block_size, cfg.embed_dim))
    positions = jnp.arange(cfg.block_size)
    params = attn.init(jax.random.key(1), x, positions)["params"]
    params = jax.tree_util.tree_map(  # Non-zero biases so they are checked too.
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)
    out = attn.apply({"params": params}, x, positions)
    p = jax.tree_util.tree_map(np.asarray, params)
    for b in range(2):
        ref = naive_attention(p, np.asarray(x[b], np.float64), cfg.num_heads)
        np.testing.assert_allclose(out[b], ref, atol=2e-5, rtol=1e-4)


def test_sinusoidal_table_matches_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def expected_param_count(c) -> int:
    """GPT parameter count from the architecture (pre-norm, learned, tied)."""
    D, L, F = c.embed_dim, c.num_layers, c.mlp_ratio * c.embed_dim
    per_block = (D * 3 * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D) + 2 * 2 * D
    return V * D + c.block_size * D + L * per_block + 2 * D


def test_parameter_count_matches_formula():
    cfg, params, _ = make()
    assert model_lib.count_params(params) == expected_param_count(cfg)
    cfg_untied, params_untied, _ = make({"model.tie_embeddings": False})
    assert model_lib.count_params(params_untied) == expected_param_count(cfg) + cfg.embed_dim * V


def test_scan_over_layers_computes_the_same_function():
    cfg, params, tokens = make()
    cfg_scan = model_config(tiny_config(**{"model.scan_layers": True}).model, V)
    blocks = [params[f"block_{i}"] for i in range(cfg.num_layers)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)
    p_scan = {k: v for k, v in params.items() if not k.startswith("block_")}
    p_scan["blocks"] = {"block": stacked}
    out = GPT(cfg).apply({"params": params}, tokens)
    out_scan = GPT(cfg_scan).apply({"params": p_scan}, tokens)
    np.testing.assert_allclose(out, out_scan, atol=1e-5)


def test_dropout_is_active_only_when_training():
    cfg, params, tokens = make({"model.dropout": 0.5})
    eval_a = GPT(cfg).apply({"params": params}, tokens)
    eval_b = GPT(cfg).apply({"params": params}, tokens)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = GPT(cfg, deterministic=False)
    t1 = train.apply({"params": params}, tokens, rngs={"dropout": jax.random.key(1)})
    t2 = train.apply({"params": params}, tokens, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(t1, t2)


def test_bfloat16_compute_keeps_float32_params():
    cfg, params, tokens = make({"model.dtype": "bfloat16"})
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    logits = GPT(cfg).apply({"params": params}, tokens)
    assert logits.dtype == jnp.float32
    ref_cfg = model_config(tiny_config().model, V)
    ref = GPT(ref_cfg).apply({"params": params}, tokens)
    np.testing.assert_allclose(logits, ref, atol=0.1)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_longer_than_block_size_is_a_clear_error(pos):
    """Position tables have block_size rows; JAX's gather would clamp silently."""
    from smallgpt_jax.system.errors import UserError
    cfg, params, _ = make({"model.pos_encoding": pos}, batch=1)
    too_long = jnp.zeros((1, cfg.block_size + 1), jnp.int32)
    with pytest.raises(UserError, match=f"longer than the model's context.*block_size={cfg.block_size}"):
        jax.eval_shape(lambda t: GPT(cfg).apply({"params": params}, t), too_long)


def test_model_config_is_typed_and_auto_is_fast_on_cpu():
    assert tiny_config().model.fast_backward == "auto"
    cfg = model_config(tiny_config().model, V)
    assert isinstance(cfg, model_lib.ModelConfig) and cfg.vocab_size == V
    hash(cfg)  # A static argument of jitted functions.
    on_cpu = jax.default_backend() == "cpu"
    assert cfg.fast_backward == ("on" if on_cpu else "off")  # 'auto', resolved once.
    assert (kernels.fast_ops(cfg.fast_backward == "on")[0] is not None) == on_cpu


def test_model_config_resolves_auto_for_the_platform_it_is_given(monkeypatch):
    """A compile for a TPU from this host: 'auto' as on the TPU, whatever this host is."""
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    tpu = model_config(tiny_config(**{"model.attention": "fused"}).model, V, platform="tpu")
    assert (tpu.dtype, tpu.fast_backward, tpu.attention_impl) == ("bfloat16", "off", None)
    cpu = model_config(tiny_config().model, V, platform="cpu")
    assert (cpu.dtype, cpu.fast_backward) == ("float32", "on")
    assert model_config(tiny_config().model, V) == cpu  # The host's backend by default.
    with pytest.raises(TypeError):
        kernels.fast_ops("off")  # A setting string would always count as on.


@pytest.mark.parametrize("overrides", [{}, {"model.attention": "fused"},
                                       {"model.scan_layers": True}])
def test_tracing_reads_no_backend(monkeypatch, overrides):
    """Every choice is in the ModelConfig: the model asks JAX nothing about the
    machine while tracing, so a config resolved for another platform holds."""
    cfg, params, tokens = make(overrides)

    def asked():
        raise AssertionError("the model read jax.default_backend() while tracing")
    monkeypatch.setattr(jax, "default_backend", asked)
    jax.eval_shape(lambda p, t: GPT(cfg).apply({"params": p}, t), params, tokens)
    jax.eval_shape(lambda p, t: jax.grad(
        lambda q: GPT(cfg).apply({"params": q}, t).sum())(p), params, tokens)
    dec = GPT(cfg, decode=True)
    cache = dec.init(jax.random.key(0), tokens[:, :1])["cache"]
    jax.eval_shape(lambda p, c, t: dec.apply({"params": p, "cache": c}, t, mutable=["cache"]),
                   params, cache, tokens[:, :1])
