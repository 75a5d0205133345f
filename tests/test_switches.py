"""The GPT-2 speedrun's switches in config.model: each one's formula, its
check, and all of them at once with scanned layers, scoring and hidden
states (with the KV cache: tests/test_generation.py)."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from smallgpt_jax import muon, train
from smallgpt_jax.analysis import representations, scoring
from smallgpt_jax.cli.config_files import load_config
from smallgpt_jax.config import validate
from smallgpt_jax.feedforward import MLP
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.tokenizer import CharTokenizer
from test_generation import ALL_SWITCHES, random_model

V = 11
CHARS = "\n :EMORabcd"
TEXT = "ROMEO: abc dab cab\nMORE: bad a cab dab\n" * 2
TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, V)


def logits(cfg, params, tokens=TOKENS):
    return np.asarray(GPT(cfg).apply({"params": params}, tokens))


@pytest.mark.parametrize("field,value", [
    ("qk_norm", "yes"), ("zero_init", "2"), ("value_embeddings", "None"), ("x0_shortcut", "x"),
    ("smear", "on!"), ("logit_softcap", "-1.0"), ("logit_softcap", "nan"),
    ("activation", "relu3")])
def test_a_bad_switch_value_is_one_clear_error(field, value):
    """On the command line: a switch takes a bool, the cap a number >= 0."""
    with pytest.raises(UserError, match=f"config.model.{field}="):
        config = load_config(os.path.join(ROOT, "configs", "char_cpu.py"),
                             [f"model.{field}={value}"])
        validate(config, machine=False)


def test_switches_are_off_by_default_and_add_no_parameters():
    cfg = model_config(tiny_config().model, V)
    assert not any((cfg.qk_norm, cfg.zero_init, cfg.logit_softcap, cfg.value_embeddings,
                    cfg.x0_shortcut, cfg.smear))
    # A checkpoint's config from before the switches existed still loads.
    old = tiny_config()
    for name in ("qk_norm", "zero_init", "logit_softcap", "value_embeddings", "x0_shortcut",
                 "smear"):
        del old.model[name]
    assert model_config(old.model, V) == cfg


def test_a_zero_initialised_head_starts_at_loss_ln_v_exactly():
    c = tiny_config(**{"model.zero_init": True, "model.tie_embeddings": False})
    cfg = model_config(c.model, V)
    params = train.init_state(cfg, train.make_optimizer(c.train)[0], 0).params
    assert not np.any(params["head"]["kernel"])
    assert not np.any(params["block_0"]["attn"]["proj"]["kernel"])
    assert not np.any(params["block_1"]["mlp"]["proj"]["kernel"])
    batch = jax.random.randint(jax.random.key(2), (4, cfg.block_size + 1), 0, V)
    assert not np.any(logits(cfg, params, batch[:, :-1]))  # Every logit exactly 0:
    # a uniform prediction, ln V to float32 rounding.
    assert float(train.loss_fn(params, cfg, batch)) == pytest.approx(math.log(V), rel=1e-6)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    cfg, params = random_model({"model.qk_norm": True})
    qkv = params["block_0"]["attn"]["qkv"]["kernel"]  # [D, 3, H, K]: q, k, v.
    scaled = jax.tree_util.tree_map(lambda x: x, params)
    scaled["block_0"]["attn"]["qkv"]["kernel"] = qkv.at[:, :2].multiply(30.0)
    bias = params["block_0"]["attn"]["qkv"]["bias"]  # [3, H, K]
    scaled["block_0"]["attn"]["qkv"]["bias"] = bias.at[:2].multiply(30.0)
    np.testing.assert_allclose(logits(cfg, scaled), logits(cfg, params), atol=1e-4)
    plain, _ = random_model()
    assert not np.allclose(logits(plain, scaled), logits(plain, params), atol=1e-2)


def test_relu2_is_relu_squared():
    cfg, params = random_model({"model.activation": "relu2"})
    p = params["block_0"]["mlp"]
    x = jax.random.normal(jax.random.key(3), (2, 5, cfg.embed_dim))
    h = np.maximum(x @ p["fc"]["kernel"] + p["fc"]["bias"], 0) ** 2
    want = h @ p["proj"]["kernel"] + p["proj"]["bias"]
    np.testing.assert_allclose(MLP(cfg).apply({"params": p}, x), want, atol=1e-4)


def test_softcap_is_cap_tanh_of_the_plain_logits():
    cfg, params = random_model({"model.logit_softcap": 2.0}, scale=1.0)
    raw = logits(cfg.replace(logit_softcap=0.0), params)
    assert np.abs(raw).max() > 4.0  # Large enough for the cap to bite.
    np.testing.assert_allclose(logits(cfg, params), 2.0 * np.tanh(raw / 2.0), atol=1e-5)


@pytest.mark.parametrize("switch", ["value_embeddings", "x0_shortcut", "smear"])
def test_new_paths_start_as_no_ops_and_learn(switch):
    """At init each path changes nothing (zero tables, lambdas (1, 0), a zero
    gate); its parameters get a gradient, so training can open it."""
    c = tiny_config(**{f"model.{switch}": True, "model.tie_embeddings": False})
    cfg = model_config(c.model, V)
    params = GPT(cfg).init(jax.random.key(0), TOKENS)["params"]
    plain = model_config(tiny_config(**{"model.tie_embeddings": False}).model, V)
    base = GPT(plain).init(jax.random.key(0), TOKENS)["params"]
    np.testing.assert_allclose(logits(cfg, params), logits(plain, base), atol=1e-6)
    new = {"value_embeddings": lambda p: p["block_1"]["value_embed"],
           "x0_shortcut": lambda p: p["block_1"]["x0"], "smear": lambda p: p["smear"]}[switch]
    batch = jax.random.randint(jax.random.key(2), (4, cfg.block_size + 1), 0, V)
    grads = jax.grad(train.loss_fn)(params, cfg, batch)
    first = new(grads)
    if switch == "smear":  # The gate's gradient is lambda times something: 0 at first.
        first = first["lambda"]
    assert all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(first))
    labels = jax.tree_util.tree_leaves(new(muon.labels(params)))
    assert set(labels) == {"adamw"}  # Tables and scalars: not Muon's.


def test_smear_adds_the_gated_previous_embedding():
    cfg, params = random_model({"model.smear": True})
    s = params["smear"]
    tok = CharTokenizer(CHARS)
    states = representations.hidden_states(params, cfg, tok, TEXT[:15], layers=[0])[0]
    seq = np.concatenate([tok.encode("\n"), tok.encode(TEXT[:15])])
    x = np.asarray(params["token_embed"]["embedding"])[seq] + np.asarray(params["pos_embed"])[
        :len(seq)]
    gate = s["lambda"] / (1 + np.exp(-(x[1:, :12] @ s["gate"])))
    want = np.concatenate([x[:1], x[1:] + gate[:, None] * x[:-1]])
    np.testing.assert_allclose(states, want[1:], atol=1e-5)


def test_every_switch_on_scan_computes_the_unscanned_function_and_scores():
    cfg, params = random_model(ALL_SWITCHES)
    scan = cfg.replace(scan_layers=True)
    stacked = {k: v for k, v in params.items() if not k.startswith("block_")}
    stacked["blocks"] = {"block": jax.tree_util.tree_map(
        lambda *xs: jnp.stack(xs), *[params[f"block_{i}"] for i in range(cfg.num_layers)])}
    np.testing.assert_allclose(logits(scan, stacked), logits(cfg, params), atol=1e-5)
    tok = CharTokenizer(CHARS)
    scored = scoring.score_text(stacked, scan, tok, TEXT)
    assert scored.token_bits.shape == (len(TEXT),) and np.isfinite(scored.token_bits).all()
    states = representations.hidden_states(stacked, scan, tok, TEXT)
    assert states.shape == (cfg.num_layers + 1, len(TEXT), cfg.embed_dim)


@pytest.mark.parametrize("scan", [False, True])
def test_every_switch_on_trains_under_remat(scan):
    """nn.remat around the blocks (config.model.remat) takes the x0 and token
    arguments: the same loss and gradients as without."""
    cfg, params = random_model({**ALL_SWITCHES, "model.scan_layers": scan})
    batch = jax.random.randint(jax.random.key(2), (2, cfg.block_size + 1), 0, V)
    grad = lambda c: jax.value_and_grad(train.loss_fn)(params, c, batch)
    (loss, g), (loss_r, g_r) = grad(cfg), grad(cfg.replace(remat="block"))
    assert float(loss) == pytest.approx(float(loss_r), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_r)):
        np.testing.assert_allclose(a, b, atol=1e-5)
