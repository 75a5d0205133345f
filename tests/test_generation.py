"""Generation: the KV cache against the naive path, determinism, prompts
and streaming, and a tiny model that must reproduce what it memorised."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import generation, text_generation, train
from smallgpt_jax.model import GPT, model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers.tokenizer import ByteTokenizer, CharTokenizer

V = 11


# ---------------------------------------------------------------- the KV cache

def random_model(overrides=None, scale=0.3):
    """A random model whose logits are far from uniform: every parameter is
    noise of std `scale` (around 1 for norm scales). Drawn with numpy, so
    nothing needs compiling."""
    cfg = model_config(tiny_config(**(overrides or {})).model, V)
    shapes = jax.eval_shape(lambda: GPT(cfg).init(
        jax.random.key(0), jnp.zeros((1, cfg.block_size), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray((path[-1].key == "scale") + scale * rng.normal(
            size=s.shape), np.float32), shapes)
    return cfg, params


def reference_logits(cfg, params, prompt, new_BN, context_lengths):
    """The model run from scratch on the last `context_lengths[i]` tokens before
    each new token: what every path must reproduce.

    Each context is zero-padded at the end to block_size so that one compiled
    call scores them all; causality (tested in test_model.py) makes the padding
    irrelevant to the logits at the context's last token.
    """
    W = cfg.block_size
    contexts, lasts = [], []
    for b in range(new_BN.shape[0]):
        seq = np.concatenate([prompt, new_BN[b]])
        for i, c in enumerate(context_lengths):
            end = len(prompt) + i
            contexts.append(np.pad(seq[end - c:end], (0, W - c)))
            lasts.append(c - 1)
    logits = jax.jit(lambda x: GPT(cfg).apply({"params": params}, x))(np.stack(contexts))
    out = np.asarray(logits)[np.arange(len(lasts)), lasts]
    return out.reshape(new_BN.shape[0], len(context_lengths), -1)


def context_lengths(prompt_len, steps, W, slide_step):
    """The documented slide: the context grows to W, then drops slide_step tokens."""
    lengths, c = [], min(prompt_len, W)
    for _ in range(steps):
        lengths.append(c)
        c = W - slide_step + 1 if c == W else c + 1
    return lengths


# Every switch of the GPT-2 speedrun's recipe on at once (tests/test_switches.py).
ALL_SWITCHES = {
    "model.qk_norm": True, "model.zero_init": True, "model.logit_softcap": 5.0,
    "model.value_embeddings": True, "model.x0_shortcut": True, "model.smear": True,
    "model.activation": "relu2", "model.tie_embeddings": False, "model.pos_encoding": "rope",
    "model.norm": "rmsnorm", "model.use_bias": False}


@pytest.mark.parametrize("overrides", [
    {}, {"model.pos_encoding": "rope", "model.norm_position": "post",
         "model.activation": "swiglu"},
    {"model.scan_layers": True, "model.pos_encoding": "sinusoidal",
     "model.attention": "fused"},
    ALL_SWITCHES, {**ALL_SWITCHES, "model.scan_layers": True},
    {**ALL_SWITCHES, "model.norm_position": "post", "model.pos_encoding": "learned"},
])
def test_cached_and_uncached_logits_agree_past_the_window(overrides):
    cfg, params = random_model(overrides)
    W, steps = cfg.block_size, cfg.block_size + 8  # Slides 8 + prompt times.
    prompt = np.array([3, 1, 4, 1, 5], np.int32)
    run = lambda use_cache: generation.generate(
        params, cfg, prompt, steps, jax.random.key(7), num_samples=2, temperature=1.0,
        use_cache=use_cache, return_logits=True)
    (cached, cached_logits), (naive, naive_logits) = run("always"), run("never")
    np.testing.assert_array_equal(cached, naive)
    assert len(set(cached[0].tolist())) > 3  # A varied sequence, not one repeated token.
    np.testing.assert_allclose(cached_logits, naive_logits, atol=1e-4, rtol=1e-4)
    ref = reference_logits(cfg, params, prompt, cached, context_lengths(5, steps, W, 1))
    np.testing.assert_allclose(cached_logits, ref, atol=1e-4, rtol=1e-4)
    assert np.abs(ref).max() > 1.0  # Logits big enough for the tolerance to mean something.


def test_approximate_slide_follows_its_documented_context():
    cfg, params = random_model()
    W, steps, s = cfg.block_size, 2 * cfg.block_size + 3, 6
    prompt = np.array([2, 7], np.int32)
    run = lambda use_cache: generation.generate(
        params, cfg, prompt, steps, jax.random.key(8), num_samples=2, temperature=1.0,
        slide_step=s, use_cache=use_cache, return_logits=True)
    (cached, cached_logits), (naive, naive_logits) = run("always"), run("never")
    np.testing.assert_array_equal(cached, naive)
    np.testing.assert_allclose(cached_logits, naive_logits, atol=1e-4, rtol=1e-4)
    lengths = context_lengths(2, steps, W, s)
    assert min(lengths[W:]) == W - s + 1 and max(lengths) == W
    ref = reference_logits(cfg, params, prompt, cached, lengths)
    np.testing.assert_allclose(cached_logits, ref, atol=1e-4, rtol=1e-4)
    exact = reference_logits(cfg, params, prompt, cached, context_lengths(2, steps, W, 1))
    assert not np.allclose(cached_logits, exact, atol=1e-3)  # It is an approximation.


def test_prompt_longer_than_the_window_is_cropped():
    cfg, params = random_model()
    prompt = np.arange(40, dtype=np.int32) % V
    run = lambda prompt: generation.generate(params, cfg, prompt, 5, jax.random.key(0),
                                             num_samples=2, temperature=1.0)
    a, b = run(prompt), run(prompt[-cfg.block_size:])
    np.testing.assert_array_equal(a, b)


def test_one_compile_per_shape_not_per_prompt_length_or_knob():
    cfg, params = random_model()
    run = lambda prompt, **kw: generation.generate(
        params, cfg, np.asarray(prompt, np.int32), 3, jax.random.key(0), num_samples=2, **kw)
    run([1], temperature=0.5)
    run([1], use_cache="never")
    steps = (generation._prefill, generation._decode_step, generation._full_step)
    sizes = [f._cache_size() for f in steps]
    run([1, 2, 3, 4, 5, 6, 7], temperature=0.9, top_k=3, top_p=0.5)
    run([1, 2, 3, 4, 5, 6, 7] * 3, temperature=0.0, top_k=5)  # Longer than the window.
    run([2, 3], use_cache="never", temperature=1.3, top_p=0.9)
    assert [f._cache_size() for f in steps] == sizes


# ---------------------------------------------------------------- determinism, API

def test_same_seed_same_tokens_and_rows_differ():
    cfg, params = random_model()
    run = lambda seed: generation.generate(params, cfg, np.array([1], np.int32), 30,
                                           jax.random.key(seed), num_samples=2,
                                           temperature=1.0, top_k=8, top_p=0.95)
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 30) and a.dtype == np.int32
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # The batch rows are independent samples.


def test_on_token_streams_every_column_in_order():
    cfg, params = random_model()
    got = []
    out = generation.generate(params, cfg, np.array([1], np.int32), 12, jax.random.key(0),
                              num_samples=2, on_token=got.append)
    np.testing.assert_array_equal(np.stack(got, axis=1), out)
    none = generation.generate(params, cfg, np.array([1]), 0, jax.random.key(0), num_samples=2)
    assert none.shape == (2, 0)


def test_prompts_encode_and_stream_as_text():
    tok = CharTokenizer("\nabc!")
    np.testing.assert_array_equal(text_generation.encode_prompt(tok, ""), [0])  # A newline.
    with pytest.raises(UserError, match="prompt: 2 character.*'x', 'z'.*e.g."):
        text_generation.encode_prompt(tok, "abxz")
    assert text_generation.encode_prompt(CharTokenizer("ab"), "").tolist() == [0]  # No newline.
    # A two-byte character split over two byte tokens comes out whole.
    stream = text_generation.TextStream(ByteTokenizer())
    ids = list("é!".encode("utf-8"))
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert pieces == ["", "é", "!", ""]


# ---------------------------------------------------------------- a model that memorised

MEMORY = "Hello, smallgpt! I memorise this line: 0123456789 xyz."


@pytest.fixture(scope="module")
def memorised():
    """A tiny model trained on every window of MEMORY until it knows it by heart."""
    c = tiny_config(**{"train.num_steps": 300, "train.learning_rate": 1e-2,
                       "train.warmup_steps": 20, "train.weight_decay": 0.0})
    tok = CharTokenizer.from_text(MEMORY)
    cfg = model_config(c.model, tok.vocab_size)
    ids = tok.encode(MEMORY)
    W = cfg.block_size
    windows = np.stack([ids[j:j + W + 1] for j in range(len(ids) - W)])
    tx, schedule = train.make_optimizer(c.train)
    state = train.init_state(cfg, tx, c.seed)
    step = jax.jit(lambda s, b: train.train_step(
        s, b, model_config=cfg, tx=tx, schedule=schedule, seed=0, axis_name=None))
    for _ in range(c.train.num_steps):
        state, metrics = step(state, jnp.asarray(windows[None]))
    assert float(metrics["loss"]) < 0.1
    return state.params, cfg, tok


@pytest.mark.parametrize("options", [
    {"use_cache": "always"}, {"use_cache": "never"}, {"use_cache": "always", "slide_step": 8}])
def test_memorised_string_comes_back_greedily(memorised, options):
    params, cfg, tok = memorised
    assert len(MEMORY) > 3 * cfg.block_size  # Reproducing it needs the window to slide.
    texts = text_generation.sample_texts(params, cfg, tok, MEMORY[0], len(MEMORY) - 1, seed=0,
                                    num_samples=2, temperature=0.0, **options)
    assert texts == [MEMORY, MEMORY]


def test_memorised_string_streams_while_generated(memorised):
    params, cfg, tok = memorised
    pieces = []
    texts = text_generation.sample_texts(params, cfg, tok, "Hel", len(MEMORY) - 3, seed=5,
                                    num_samples=2, temperature=0.0, stream=pieces.append)
    assert "Hel" + "".join(pieces) == texts[0] == MEMORY
    assert len([p for p in pieces if p]) == len(MEMORY) - 3


@pytest.mark.parametrize("prompt_len,steps,slide_step", [(5, 40, 1), (3, 10, 1), (16, 5, 1),
                                                         (5, 40, 4), (16, 30, 16)])
def test_cached_steps_counts_the_decode_steps_generate_runs(monkeypatch, prompt_len, steps,
                                                            slide_step):
    cfg, params = random_model({})
    calls = []
    decode = generation._decode_step
    monkeypatch.setattr(generation, "_decode_step", lambda *a: calls.append(1) or decode(*a))
    generation.generate(params, cfg, np.arange(prompt_len) % V, steps, jax.random.key(0),
                        slide_step=slide_step, use_cache="always")
    assert len(calls) == generation._cached_steps(steps, prompt_len, cfg.block_size, slide_step)


def test_auto_cache_gives_the_same_tokens_and_skips_decode_when_it_cannot_pay(monkeypatch):
    cfg, params = random_model({})
    prompt = np.array([3, 1, 4], np.int32)
    run = lambda use_cache, n: generation.generate(params, cfg, prompt, n, jax.random.key(3),
                                                   num_samples=2, use_cache=use_cache)
    np.testing.assert_array_equal(run("auto", 30), run("never", 30))
    monkeypatch.setattr(generation, "MIN_COMPILE_S", 0.0)
    # A window run that takes 1 ms once compiled, and a compile of 100 s: the
    # 13 cached tokens of a 16-token window cannot pay for compiling decode.
    clock = iter([0.0, 100.0, 100.0, 100.001])
    monkeypatch.setattr(generation, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    expected = run("never", 30)
    # "auto" then runs exactly the no-cache path: no cached program at all.
    for name in ("_decode_step", "_prefill"):
        monkeypatch.setattr(generation, name, lambda *a, name=name: pytest.fail(f"{name} ran"))
    np.testing.assert_array_equal(run("auto", 30), expected)


def test_auto_cache_decodes_when_it_pays(monkeypatch):
    cfg, params = random_model({})
    prompt = np.array([3, 1, 4], np.int32)
    # A window run of 1 s once compiled, compiled in no time: 13 cached tokens pay.
    clock = iter([0.0, 1.0, 1.0, 2.0])
    monkeypatch.setattr(generation, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    calls = []
    decode = generation._decode_step
    monkeypatch.setattr(generation, "_decode_step", lambda *a: calls.append(1) or decode(*a))
    got = generation.generate(params, cfg, prompt, 30, jax.random.key(3), num_samples=2,
                              use_cache="auto")
    assert len(calls) == generation._cached_steps(30, 3, cfg.block_size, 1) > 0
    np.testing.assert_array_equal(got, generation.generate(
        params, cfg, prompt, 30, jax.random.key(3), num_samples=2, use_cache="never"))


def test_use_cache_is_one_of_three_names():
    cfg, params = random_model({})
    for bad in (True, "yes", None):
        with pytest.raises(UserError, match=r"use_cache=.* is not one of always, never, auto"):
            generation.generate(params, cfg, np.array([1], np.int32), 2, jax.random.key(0),
                                use_cache=bad)


@pytest.mark.parametrize("cached", [True, False])
def test_the_decode_loop_reads_no_clock_and_gives_generates_tokens(monkeypatch, cached):
    """`decode` is the loop alone: the tokens `generate` returns, drawn
    without the timing (which only "auto" uses) or any host copy."""
    cfg, params = random_model({})
    W, prompt = cfg.block_size, np.array([3, 1, 4], np.int32)
    key, steps = jax.random.key(5), cfg.block_size + 4  # Past the window.
    expected = generation.generate(params, cfg, prompt, steps, key, num_samples=2,
                                   temperature=0.9, use_cache="always" if cached else "never")
    monkeypatch.setattr(generation, "time", None)  # Any clock read fails.
    window_BW = jnp.asarray(np.tile(np.pad(prompt, (0, W - 3)), (2, 1)))
    sampling = generation.Sampling.make(key, 0.9, None, 1.0, cfg.vocab_size)
    got = [next_B for next_B, _ in generation.decode(params, cfg, window_BW, 3, steps, sampling,
                                                     cached=cached)]
    assert all(isinstance(t, jax.Array) for t in got)  # Still on the device.
    np.testing.assert_array_equal(np.stack(got, axis=1), expected)
