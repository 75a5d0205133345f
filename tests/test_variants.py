"""Each design switch against its defining property, and every switch together.

Positional encodings against their formulas (and RoPE's relative-position
property), the norms against numpy, post- and pre-norm blocks against the
textbook equations, the tokenizers' round trips, and a pairwise-covering set
of switch combinations that must train and sample with the KV cache.
"""

import itertools
import json
import math
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, needs_shakespeare, run_cli, tiny_config
from smallgpt_jax import generation, normalization, positions, train
from smallgpt_jax import model as model_lib
from smallgpt_jax.attention import CausalSelfAttention
from smallgpt_jax.cli.config_files import load_config
from smallgpt_jax.config import validate
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.store import store
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import bpe
from smallgpt_jax.tokenizers import tokenizer as tok_lib

# ---------------------------------------------------------------- positions


def test_rope_matches_rotation_formula():
    """Pair i of features at position p is rotated by p * 10000^(-2i/K)."""
    T, H, K = 7, 2, 8
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, T, H, K)))
    positions_T = np.array([0, 1, 2, 5, 11, 100, 511])
    out = np.asarray(positions.apply_rope(jnp.asarray(x), jnp.asarray(positions_T)))
    for t, p in enumerate(positions_T):
        for h in range(H):
            for i in range(K // 2):
                angle = p * 10000 ** (-2 * i / K)
                a, b = x[0, t, h, 2 * i], x[0, t, h, 2 * i + 1]
                expected = (a * math.cos(angle) - b * math.sin(angle),
                            a * math.sin(angle) + b * math.cos(angle))
                np.testing.assert_allclose(out[0, t, h, 2 * i:2 * i + 2], expected,
                                           atol=1e-5, rtol=1e-5)


def test_rope_score_depends_only_on_distance():
    """<rope(q, m), rope(k, n)> is a function of m - n: shifting both keeps it."""
    K = 16
    q, k = np.asarray(jax.random.normal(jax.random.key(1), (2, K)))

    def score(m, n):
        rq = positions.apply_rope(jnp.asarray(q)[None, None, None], jnp.array([m]))
        rk = positions.apply_rope(jnp.asarray(k)[None, None, None], jnp.array([n]))
        return float(jnp.sum(rq * rk))

    for m, n in ((3, 0), (10, 7), (5, 5), (40, 1)):
        base = score(m, n)
        for shift in (1, 17, 200):
            assert score(m + shift, n + shift) == pytest.approx(base, abs=1e-4)
    # ... and it does depend on the distance, or the test above proves nothing.
    assert abs(score(3, 0) - score(4, 0)) > 1e-3


def test_sinusoidal_offset_is_a_fixed_rotation():
    """The property the Transformer paper chose sinusoids for: PE[p + k] is a
    linear function of PE[p] that depends on k only (a rotation per pair)."""
    D, k = 16, 5
    table = positions.sinusoidal_table(64, D)
    for i in range(D // 2):
        w = 10000 ** (-2 * i / D)
        # [sin a, cos a] -> [sin(a + kw), cos(a + kw)] by the angle-sum formulas.
        rotation = np.array([[math.cos(k * w), -math.sin(k * w)],
                             [math.sin(k * w), math.cos(k * w)]])
        for p in (0, 9, 40):
            np.testing.assert_allclose(table[p, 2 * i:2 * i + 2] @ rotation,
                                       table[p + k, 2 * i:2 * i + 2], atol=1e-5)


def test_sinusoidal_model_input_is_scaled_embedding_plus_table():
    """x = sqrt(D) * E[token] + PE[position], the Transformer paper's input."""
    cfg = model_config(tiny_config(**{"model.pos_encoding": "sinusoidal"}).model, 11)
    tokens = jax.random.randint(jax.random.key(0), (2, cfg.block_size), 0, 11)
    params = GPT(cfg).init(jax.random.key(1), tokens)["params"]
    assert "pos_embed" not in params  # Nothing positional is learned.
    _, state = GPT(cfg).apply({"params": params}, tokens, capture_intermediates=True,
                              mutable=["intermediates"])
    x = state["intermediates"]["Dropout_0"]["__call__"][0]  # The blocks' input.
    E = np.asarray(params["token_embed"]["embedding"])
    expected = math.sqrt(cfg.embed_dim) * E[np.asarray(tokens)] + \
        positions.sinusoidal_table(cfg.block_size, cfg.embed_dim)[None]
    np.testing.assert_allclose(x, expected, atol=1e-5)


# ---------------------------------------------------------------- norms


def _random_params(params, seed):
    """Adds noise to every parameter, so that scales differ from 1 and biases
    from 0 and the test sees them used."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [l + 0.3 * jax.random.normal(kk, l.shape) for kk, l in zip(keys, leaves)])


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norms_match_numpy(kind):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 5, 12))
    norm = normalization.Norm(kind)
    params = _random_params(norm.init(jax.random.key(1), x)["params"], 2)
    out = np.asarray(norm.apply({"params": params}, x))
    xn, p, eps = np.asarray(x, np.float64), jax.tree_util.tree_map(np.asarray, params), 1e-5
    if kind == "layernorm":
        mean, var = xn.mean(-1, keepdims=True), xn.var(-1, keepdims=True)
        ref = (xn - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]
    else:  # RMSNorm: no centring, no bias.
        assert set(p) == {"scale"}
        ref = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + eps) * p["scale"]
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_no_bias_anywhere_when_use_bias_is_false():
    cfg = model_config(tiny_config(**{"model.use_bias": False}).model, 11)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert not [p for p in paths if "bias" in p]
    assert any("scale" in p for p in paths)  # The norms are still there.


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize("position", ["post", "pre"])
def test_block_matches_textbook_equation(position):
    """post: h = LN(x + Attn(x)), y = LN(h + MLP(h))   (GPT-1, the Transformer)
    pre:  h = x + Attn(LN(x)),  y = h + MLP(LN(h))     (GPT-2 and after)."""
    cfg = model_config(tiny_config(**{"model.norm_position": position}).model, 11)
    block = model_lib.Block(cfg)
    x = jax.random.normal(jax.random.key(0), (2, cfg.block_size, cfg.embed_dim))
    pos = jnp.arange(cfg.block_size)
    params = _random_params(block.init(jax.random.key(1), x, pos)["params"], 3)
    out = block.apply({"params": params}, x, pos)

    attn = lambda h: CausalSelfAttention(cfg).apply({"params": params["attn"]}, h, pos)
    mlp = lambda h: model_lib.MLP(cfg).apply({"params": params["mlp"]}, h)
    norm = normalization.Norm(cfg.norm, cfg.use_bias)
    ln1 = lambda h: norm.apply({"params": params["norm1"]}, h)
    ln2 = lambda h: norm.apply({"params": params["norm2"]}, h)
    if position == "post":
        h = ln1(x + attn(x))
        ref = ln2(h + mlp(h))
    else:
        h = x + attn(ln1(x))
        ref = h + mlp(ln2(h))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)


def test_post_norm_model_has_no_final_norm_and_pre_norm_has_one():
    for position, has_final in (("post", False), ("pre", True)):
        cfg = model_config(tiny_config(**{"model.norm_position": position}).model, 11)
        params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
        assert ("norm_f" in params) == has_final


def test_swiglu_keeps_the_mlp_parameter_count():
    x = jnp.zeros((1, 2, 96))
    counts = {}
    for act in ("gelu", "swiglu"):
        cfg = model_config(
            tiny_config(**{"model.activation": act, "model.embed_dim": 96}).model, 11)
        counts[act] = model_lib.count_params(
            model_lib.MLP(cfg).init(jax.random.key(0), x)["params"])
    assert abs(counts["swiglu"] - counts["gelu"]) / counts["gelu"] < 0.02


# ---------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_arbitrary_unicode():
    tok = tok_lib.ByteTokenizer()
    emoji = "👩‍👩‍👧‍👦 👍🏽 🇯🇵 🏳️‍🌈 e\u0301 \u0000 \uffff 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 日本語 عربى"
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 0x10FFFF, 2000)
    codes = codes[(codes < 0xD800) | (codes > 0xDFFF)]  # Surrogates are not characters.
    for text in (emoji, "".join(map(chr, codes))):
        ids = tok.encode(text)
        assert ids.min() >= 0 and ids.max() < tok.vocab_size == 256
        assert len(ids) == len(text.encode("utf-8")) > len(text)  # Multi-byte characters.
        assert tok.decode(ids) == text


@pytest.fixture(scope="module")
def shakespeare():
    from smallgpt_jax import data
    text = data.read_text(data.find_dataset("tinyshakespeare"))
    return data.split_text(text, 0.9)


@pytest.fixture(scope="module")
def shakespeare_bpe(shakespeare):
    return bpe.BPETokenizer.train(shakespeare[0], 512)


@needs_shakespeare
def test_bpe_round_trips_and_compresses_shakespeare(shakespeare, shakespeare_bpe, tmp_path):
    train_text, val_text = shakespeare
    tok = shakespeare_bpe
    assert tok.vocab_size == 512
    ids = tok.encode(val_text)  # Text it was not trained on.
    assert ids.dtype == np.int32 and 0 <= ids.min() and ids.max() < 512
    assert tok.decode(ids) == val_text
    # Subwords: clearly fewer tokens than characters (about 0.5 per char at 512).
    assert len(ids) < 0.7 * len(val_text)
    # Saved and reloaded (as the workdir and checkpoints do), it is the same tokenizer.
    path = str(tmp_path / "tokenizer.json")
    tok_lib.save(tok, path)
    again = tok_lib.load(path)
    assert again.kind == "bpe" and again.vocab_size == 512
    np.testing.assert_array_equal(again.encode(val_text), ids)
    # Bytes it never saw still encode: the 256 bytes are all in the vocabulary.
    odd = "Ünïcødé 🙂 日本語\t\r\n"
    assert again.decode(again.encode(odd)) == odd


def test_bpe_vocab_too_small_for_the_byte_alphabet():
    with pytest.raises(UserError, match="256 byte values"):
        bpe.BPETokenizer.train("hello hello hello", 100)
    with pytest.raises(UserError, match="need 257"):
        bpe.BPETokenizer.train("hello hello hello", 256, [bpe.END_OF_TEXT])


def test_bpe_vocab_larger_than_the_text_supports():
    text = "to be or not to be " * 50
    with pytest.raises(UserError, match=r"larger than this training text supports.*"
                                        r"vocab_size=\d+ or less"):
        bpe.BPETokenizer.train(text, 5000)
    # The size the message suggests does train.
    with pytest.raises(UserError) as e:
        bpe.BPETokenizer.train(text, 5000)
    supported = int(str(e.value).split("vocab_size=")[-1].split()[0])
    assert 256 < supported < 5000
    assert bpe.BPETokenizer.train(text, supported).vocab_size == supported


def test_end_of_text_is_one_token_between_documents(tmp_path):
    docs = ["First document: to be or not to be. " * 40, "Second one, that is the question. " * 40]
    for i, d in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(d, encoding="utf-8")
    config = tiny_config(**{"data.path": str(tmp_path), "data.tokenizer": "bpe",
                            "data.vocab_size": 270, "data.end_of_text": True,
                            "data.train_fraction": 0.8})
    validate(config)
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    tok, splits, _, _ = store.load_splits(config.data, config.model.block_size, workdir)
    eot = tok.encode(bpe.END_OF_TEXT)
    assert len(eot) == 1 and tok.special_tokens == [bpe.END_OF_TEXT]
    assert list(splits.train).count(int(eot[0])) == 1  # The one boundary, in train.
    assert bpe.END_OF_TEXT in tok.decode(splits.train)
    # Without the flag the EOT string is ordinary text, spelled in several tokens.
    plain = bpe.BPETokenizer.train(docs[0], 270)
    assert len(plain.encode(bpe.END_OF_TEXT)) > 1
    # char/byte vocabularies have no special tokens: a clear error.
    with pytest.raises(UserError, match="end_of_text=True needs"):
        validate(tiny_config(**{"data.end_of_text": True}))


def test_a_resumed_runs_tokenizer_must_match_the_config(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be, that is the question. " * 30)
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    char_cfg = tiny_config(**{"data.path": str(tmp_path / "a.txt")})
    tok, *_ = store.load_splits(char_cfg.data, char_cfg.model.block_size, workdir)
    bpe_cfg = tiny_config(**{"data.path": str(tmp_path / "a.txt"), "data.tokenizer": "bpe"})
    with pytest.raises(UserError, match="holds a char vocabulary"):
        store.load_splits(bpe_cfg.data, bpe_cfg.model.block_size, workdir,
                          tokenizer=tok)  # The checkpoint's.


def test_bits_per_char_uses_tokens_per_character(tmp_path):
    """A byte model of 2-byte characters pays two tokens' loss per character."""
    (tmp_path / "a.txt").write_text("é" * 2000, encoding="utf-8")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    cfg = tiny_config(**{"data.path": str(tmp_path / "a.txt"), "data.tokenizer": "byte"})
    _, splits, _, tokens_per_char = store.load_splits(cfg.data, cfg.model.block_size,
                                                      workdir)
    assert tokens_per_char == 2.0
    assert train.bits_per_char(math.log(2), tokens_per_char) == pytest.approx(2.0)


# ---------------------------------------------------------------- every switch together

SWITCHES = ("pos_encoding", "activation", "norm", "norm_position", "use_bias",
            "tie_embeddings", "attention")
# The full product is 4*4*2*2*2*2*3 = 768 models; these 16 rows contain every
# pair of values of every two switches (a pairwise covering array; 16 = 4*4 is
# the fewest possible), so any bug from two switches interacting shows up.
# attention='auto' is left out: off a TPU it is 'explicit'. 'flash' runs in
# Pallas interpret mode here (slow), so it has the fewest rows that cover it.
COMBINATIONS = [
    ("learned", "gelu", "rmsnorm", "post", True, False, "fused"),
    ("learned", "relu", "layernorm", "pre", False, True, "explicit"),
    ("learned", "swiglu", "layernorm", "pre", True, True, "flash"),
    ("sinusoidal", "gelu", "layernorm", "post", False, False, "flash"),
    ("sinusoidal", "relu", "rmsnorm", "pre", False, True, "fused"),
    ("sinusoidal", "swiglu", "rmsnorm", "post", True, False, "explicit"),
    ("rope", "gelu", "rmsnorm", "pre", True, True, "explicit"),
    ("rope", "relu", "layernorm", "post", False, False, "explicit"),
    ("rope", "swiglu", "rmsnorm", "pre", False, False, "fused"),
    ("none", "gelu", "rmsnorm", "post", False, True, "explicit"),
    ("none", "relu", "layernorm", "pre", True, False, "flash"),
    ("none", "swiglu", "layernorm", "post", True, False, "explicit"),
    ("learned", "relu2", "rmsnorm", "pre", True, True, "explicit"),
    ("sinusoidal", "relu2", "layernorm", "post", False, False, "explicit"),
    ("rope", "relu2", "rmsnorm", "post", False, True, "flash"),
    ("none", "relu2", "layernorm", "pre", True, False, "fused"),
]


def test_combinations_cover_every_pair_of_switch_values():
    from smallgpt_jax.config import _CHOICES
    values = {s: _CHOICES.get(f"model.{s}", (True, False)) for s in SWITCHES}
    values["attention"] = tuple(v for v in values["attention"] if v != "auto")
    for (i, a), (j, b) in itertools.combinations(enumerate(SWITCHES), 2):
        seen = {(row[i], row[j]) for row in COMBINATIONS}
        assert seen == set(itertools.product(values[a], values[b])), (a, b)


TEXT = "to be, or not to be, that is the question: whether 'tis nobler in the mind. " * 4


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def test_every_combination_trains_and_samples_with_the_cache(combo):
    overrides = {f"model.{s}": v for s, v in zip(SWITCHES, combo)}
    config = tiny_config(**overrides, **{"train.learning_rate": 1e-2, "train.warmup_steps": 2})
    validate(config)
    tok = tok_lib.CharTokenizer.from_text(TEXT)
    cfg = model_config(config.model, tok.vocab_size)
    ids = tok.encode(TEXT)
    T = cfg.block_size
    batch = np.stack([ids[i:i + T + 1] for i in range(0, 8 * T, T)])[None]  # [1, 8, T+1]

    # A few steps on one fixed batch: the loss must go down. (Init and steps
    # are one jitted program: compiling is cheaper than running op by op.)
    tx, schedule = train.make_optimizer(config.train)
    step = partial(train.train_step, model_config=cfg, tx=tx, schedule=schedule, seed=0,
                   axis_name=None)

    def one_step(state, _):
        state, metrics = step(state, batch)
        return state, metrics["loss"]

    @jax.jit
    def init_and_train():
        return jax.lax.scan(one_step, train.init_state(cfg, tx, seed=0), length=12)

    state, losses = init_and_train()
    losses = [float(l) for l in losses]
    assert all(map(math.isfinite, losses))
    assert losses[-1] < losses[0] and np.mean(losses[-3:]) < 0.9 * losses[0], losses

    # Cached decoding computes the same logits as the full forward pass, fed
    # one token at a time from an empty cache.
    params, tokens = state.params, jnp.asarray(ids[None, :T])
    forward = jax.jit(lambda p, x: GPT(cfg).apply({"params": p}, x))
    decode = jax.jit(lambda p, c, x: GPT(cfg, decode=True).apply(
        {"params": p, "cache": c}, x, mutable=["cache"]))
    v, cached = {"cache": generation.init_cache(cfg, 1)}, []
    for t in range(T):
        out, v = decode(params, v["cache"], tokens[:, t:t + 1])
        cached.append(out)
    np.testing.assert_allclose(np.concatenate(cached, axis=1), forward(params, tokens),
                               atol=1e-4, rtol=1e-4)

    # The sampler (cache prefilled with a 3-token prompt, then one token per
    # step) runs past the context window, and its greedy tokens are the argmax
    # of the full pass over the last T tokens. Sliding the window is where
    # the positional encoding matters, so this runs once per encoding (the
    # logits check above already covers every combination's cache).
    if combo != next(c for c in COMBINATIONS if c[0] == combo[0]):
        return
    n = T + 6
    new = generation.generate(params, cfg, ids[:3], n, jax.random.key(0), temperature=0.0)
    assert new.shape == (1, n) and 0 <= new.min() and new.max() < cfg.vocab_size
    context = list(ids[:3])
    for i in range(n):
        window = context[-T:]
        padded = np.zeros((1, T), np.int32)  # Causal: the padding cannot matter.
        padded[0, :len(window)] = window
        expected = int(np.argmax(forward(params, padded)[0, len(window) - 1]))
        assert new[0, i] == expected, f"token {i}"
        context.append(expected)


# ---------------------------------------------------------------- configs


def _load_config(name):
    return load_config(os.path.join(ROOT, "configs", f"{name}.py"))


def test_gpt1_config_is_the_published_architecture():
    c = _load_config("gpt1")
    validate(c)
    m = c.model
    assert (m.num_layers, m.embed_dim, m.num_heads, m.block_size) == (12, 768, 12, 512)
    assert (m.norm_position, m.activation, m.pos_encoding, m.dropout) == ("post", "gelu", "learned", 0.1)
    assert c.data.tokenizer == "bpe" and 40_000 <= c.data.vocab_size <= 41_000
    assert c.train.learning_rate == 2.5e-4 and c.train.min_learning_rate == 0.0
    # 117M parameters, as in the paper (counted from shapes; nothing is allocated).
    cfg = model_config(c.model, c.data.vocab_size)
    shapes = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    assert 116e6 < model_lib.count_params(shapes["params"]) < 118e6


def test_modern_char_changes_only_the_four_switches():
    base, modern = _load_config("char_cpu").to_dict(), _load_config("modern_char").to_dict()
    changed = {k for k in base["model"] if base["model"][k] != modern["model"][k]}
    assert changed == {"pos_encoding", "norm", "activation", "use_bias"}
    assert (modern["model"]["pos_encoding"], modern["model"]["norm"],
            modern["model"]["activation"], modern["model"]["use_bias"]) == ("rope", "rmsnorm", "swiglu", False)
    assert {k: v for k, v in base.items() if k not in ("model", "name")} == \
        {k: v for k, v in modern.items() if k not in ("model", "name")}


@needs_shakespeare
def test_gpt1_starts_and_trains_on_cpu_with_overrides(tmp_path, shakespeare):
    corpus = tmp_path / "shakespeare_60k.txt"  # A slice keeps BPE training quick.
    corpus.write_text(shakespeare[0][:60_000], encoding="utf-8")
    workdir = str(tmp_path / "gpt1")
    result = run_cli([
        "--config=configs/gpt1.py", f"--workdir={workdir}", f"--config.data.path={corpus}",
        "--config.data.vocab_size=300",
        "--config.model.num_layers=2", "--config.model.embed_dim=32",
        "--config.model.num_heads=2", "--config.model.block_size=32",
        "--config.train.batch_size=4", "--config.train.num_steps=4",
        "--config.train.warmup_steps=2", "--config.train.eval_every=4",
        "--config.train.eval_steps=1", "--config.train.sample_tokens=10"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bpe vocabulary 300" in result.stderr + result.stdout
    with open(os.path.join(workdir, "summary.json")) as f:
        assert math.isfinite(json.load(f)["eval/val_bpc"])
    # The workdir alone is enough to tokenize again.
    tok = tok_lib.load(os.path.join(workdir, "tokenizer.json"))
    assert tok.kind == "bpe" and tok.decode(tok.encode("ROMEO: hi")) == "ROMEO: hi"


def test_variants_sweep_trials_are_valid_configs():
    """Every trial of experiments/variants_sweep.py names real fields and validates
    (load_experiment raises UserError otherwise)."""
    from smallgpt_jax.sweep.load import load_experiment
    exp = load_experiment(os.path.join(ROOT, "experiments", "variants_sweep.py"))
    assert os.path.abspath(exp.config_path) == os.path.join(ROOT, "configs", "char_cpu.py")
    assert {} in [trial.overrides for trial in exp.trials]
