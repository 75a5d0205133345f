"""Muon: Newton-Schulz against an SVD, one update against a NumPy re-derivation
(in PyTorch's weight layout, as modded-nanogpt writes it), which parameters it
takes, and a resumed run equal to an uninterrupted one."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, tiny_config
from smallgpt_jax import muon, train
from smallgpt_jax.config import validate
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import UserError
from smallgpt_jax.training import loop
from test_checkpoint import train_config, write_corpus

V = 13


SCHEDULES = {"speedrun": muon.ns_coefficients(),
             **{f"minimax{k}": muon.ns_coefficients(k, "minimax") for k in muon.MINIMAX}}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (3, 16, 16), (32, 64), (2, 72, 36)])
def test_newton_schulz_maps_each_singular_value_through_the_quintics(shape, schedule):
    """The iteration acts on the singular values alone, s -> a s + b s^3 + c s^5,
    once per step's (a, b, c), from s / ||G||_F; the singular vectors stay. Its
    output's singular values (jnp.linalg.svd) are those, and lie in the band."""
    coefficients = SCHEDULES[schedule]
    G = jax.random.normal(jax.random.key(0), shape)
    U, S, Vt = np.linalg.svd(np.asarray(G, np.float64), full_matrices=False)
    s0 = s = S / np.linalg.norm(np.asarray(G, np.float64), axis=(-2, -1), keepdims=True)[..., 0]
    for a, b, c in coefficients:
        s = a * s + b * s**3 + c * s**5
    X = np.asarray(muon.newton_schulz(G, coefficients), np.float64)
    got = np.linalg.svd(X, compute_uv=False)
    np.testing.assert_allclose(got, np.sort(s, -1)[..., ::-1], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(X, (U * s[..., None, :]) @ Vt, atol=1e-4)
    if schedule == "speedrun":
        assert got.min() > 0.6 and got.max() < 1.25, (got.min(), got.max())
    else:  # Every s from at least the largest table's lower (0.0127) ends within 0.2 of 1.
        assert np.abs(s[s0 >= 0.0127] - 1).max() < 0.201 and (s0 >= 0.0127).mean() > 0.8
    assert S.max() / S.min() > 3  # The input was far from orthogonal.


def test_the_minimax_table_is_minimax_schedules_result_and_holds_its_band():
    """MINIMAX is minimax_schedule's output (rounded), and the rounded
    coefficients still bring every s in [lower, 1] within about 0.2 of 1 (the
    programme sees a grid, and 4 decimals move the steep first step: 5 steps
    end within 0.213); one step fewer from the same lower does not."""
    for steps, table in muon.MINIMAX.items():
        derived, lower = muon.minimax_schedule(steps)
        np.testing.assert_allclose(np.asarray(derived), np.asarray(table), atol=1e-3)
        s = np.geomspace(lower, 1.0, 4001)
        for i, (a, b, c) in enumerate(table):
            s = a * s + b * s**3 + c * s**5
            if i == steps - 2:
                assert np.abs(s - 1).max() > 0.25, steps
        assert np.abs(s - 1).max() < 0.215, steps


def test_labels_send_the_blocks_matrices_to_muon_and_the_rest_to_adamw():
    c = tiny_config(**{"model.tie_embeddings": False, "model.pos_encoding": "learned"})
    params = train.init_state(model_config(c.model, V), train.make_optimizer(c.train)[0], 0).params
    got = {jax.tree_util.keystr(p): l for p, l in
           jax.tree_util.tree_leaves_with_path(muon.labels(params))}
    to_muon = sorted(k for k, l in got.items() if l == "muon")
    assert to_muon == sorted(f"['block_{i}']['{m}']['{d}']['kernel']" for i in range(2)
                             for m, d in (("attn", "qkv"), ("attn", "proj"),
                                          ("mlp", "fc"), ("mlp", "proj")))
    adamw = {k for k, l in got.items() if l == "adamw"}
    for name in ("['token_embed']['embedding']", "['pos_embed']", "['head']['kernel']",
                 "['norm_f']['scale']", "['block_0']['mlp']['fc']['bias']",
                 "['block_1']['norm2']['scale']"):
        assert name in adamw


def numpy_muon(W, grads, lr, betas):
    """modded-nanogpt's Muon in its own layout: W is [out, in] (torch's
    nn.Linear), buf = beta buf + g, g + beta buf (Nesterov), zeropower by the
    quintic in float64, times max(1, out/in)**0.5, W -= lr * update."""
    a, b, c = muon.NS_COEFFICIENTS
    buf = np.zeros_like(W)
    for g, beta, rate in zip(grads, betas, lr):
        buf = beta * buf + g
        X = g + beta * buf
        tall = X.shape[0] > X.shape[1]
        X = X.T if tall else X
        X = X / (np.linalg.norm(X) + 1e-7)
        for _ in range(5):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        X = X.T if tall else X
        W = W - rate * X * max(1, W.shape[0] / W.shape[1]) ** 0.5
    return W


def test_two_muon_steps_equal_a_numpy_re_derivation():
    """Fixed gradients, two steps (so the momentum and its warmup count):
    the MLP's matrices, and q, k, v orthogonalised each on its own."""
    c = tiny_config(**{"train.optimizer": "muon", "train.grad_clip": 0.0,
                       "train.warmup_steps": 0, "train.muon_momentum_warmup": 1})
    tx, schedule = train.make_optimizer(c.train)
    params = train.init_state(model_config(c.model, V), tx, 0).params
    rng = np.random.default_rng(1)
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                    params) for _ in range(2)]
    state, new = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, new)
        new = jax.tree_util.tree_map(jnp.add, new, updates)
    ratio = c.train.muon_learning_rate / c.train.learning_rate
    lr = [ratio * float(schedule(i)) for i in range(2)]
    betas = [c.train.muon_momentum_start, c.train.muon_momentum]
    blk = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64),
                                              tree["block_1"])
    p0, g0, g1, p2 = blk(params), blk(grads[0]), blk(grads[1]), blk(new)
    for m, d in (("mlp", "fc"), ("mlp", "proj")):  # Kernels are [in, out]: transposed.
        want = numpy_muon(p0[m][d]["kernel"].T, [g0[m][d]["kernel"].T, g1[m][d]["kernel"].T],
                          lr, betas).T
        np.testing.assert_allclose(p2[m][d]["kernel"], want, atol=1e-5)
    D = c.model.embed_dim
    for i in range(3):  # q, k, v: [D, 3, H, K] -> three [D, D] matrices.
        part = lambda k: k[:, i].reshape(D, -1).T
        want = numpy_muon(part(p0["attn"]["qkv"]["kernel"]),
                          [part(g0["attn"]["qkv"]["kernel"]), part(g1["attn"]["qkv"]["kernel"])],
                          lr, betas)
        np.testing.assert_allclose(part(p2["attn"]["qkv"]["kernel"]), want, atol=1e-5)
    # The rest took AdamW's steps, as the 'adamw' optimizer would take them.
    c.train.optimizer = "adamw"
    adam, _ = train.make_optimizer(c.train)
    state, ref = adam.init(params), params
    for g in grads:
        updates, state = adam.update(g, state, ref)
        ref = jax.tree_util.tree_map(jnp.add, ref, updates)
    for get in (lambda t: t["token_embed"]["embedding"], lambda t: t["norm_f"]["scale"],
                lambda t: t["block_0"]["attn"]["qkv"]["bias"]):
        np.testing.assert_allclose(get(new), get(ref), rtol=1e-6)
        assert not np.allclose(get(new), get(params))


def test_muon_keeps_its_own_rate_when_adamws_is_zero():
    """learning_rate=0 freezes AdamW's parameters, not Muon's: Muon's schedule
    has its own peak, the same warmup and cosine shape."""
    c = tiny_config(**{"train.optimizer": "muon", "train.learning_rate": 0.0,
                       "train.min_learning_rate": 0.0, "train.warmup_steps": 0})
    tx, _ = train.make_optimizer(c.train)
    params = train.init_state(model_config(c.model, V), tx, 0).params
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.abs(np.asarray(updates["block_0"]["mlp"]["fc"]["kernel"])).max() > 0
    assert np.abs(np.asarray(updates["token_embed"]["embedding"])).max() == 0


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_embedding_learning_rate_scale_scales_the_embeddings_steps_alone(optimizer):
    """AdamW's whole step (Adam's and the decay's) is proportional to its rate:
    with the scale at 5 the token and value tables step 5 times as far, every
    other parameter exactly as far as at the default 1."""
    over = {"train.optimizer": optimizer, "train.warmup_steps": 0,
            "model.value_embeddings": True, "model.tie_embeddings": False}
    steps = {}
    for scale in (1.0, 5.0):
        c = tiny_config(**over, **{"train.embedding_learning_rate_scale": scale})
        tx, _ = train.make_optimizer(c.train)
        params = train.init_state(model_config(c.model, V), tx, 0).params
        grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), params)
        steps[scale] = {jax.tree_util.keystr(k): np.asarray(u) for k, u in
                        jax.tree_util.tree_leaves_with_path(
                            tx.update(grads, tx.init(params), params)[0])}
    tables = {"['token_embed']['embedding']", "['block_0']['value_embed']['embedding']",
              "['block_1']['value_embed']['embedding']"}
    assert tables <= set(steps[1.0])
    for name, base in steps[1.0].items():
        want = 5 * base if name in tables else base
        np.testing.assert_allclose(steps[5.0][name], want, rtol=1e-5, err_msg=name)
        assert np.abs(base).max() > 0, name


def test_muon_fields_are_checked():
    for field, value in (("optimizer", "sgd"), ("muon_momentum", 1.0),
                         ("embedding_learning_rate_scale", -1.0),
                         ("muon_learning_rate", -1.0), ("muon_momentum_start", -0.1),
                         ("muon_ns_steps", 0), ("muon_ns_coefficients", "cubic")):
        c = tiny_config(**{f"train.{field}": value})
        with pytest.raises(UserError, match=f"config.train.{field}"):
            validate(c, machine=False)
    c = tiny_config(**{"train.muon_ns_coefficients": "minimax", "train.muon_ns_steps": 6})
    with pytest.raises(UserError, match=r"muon_ns_steps=6 has no 'minimax' coefficients: "
                                        r"use 3, 4 or 5 steps"):
        validate(c, machine=False)


@pytest.mark.parametrize("accum", [1, 2])
def test_a_resumed_muon_run_ends_where_an_uninterrupted_one_does(tmp_path, accum):
    """Checkpoints hold Muon's momentum and step count: training to step 6,
    losing the last checkpoint and running the same command again gives the
    same parameters bit for bit (with gradient accumulation too)."""
    corpus = write_corpus(tmp_path / "text.txt")
    config = train_config(corpus, **{
        "train.optimizer": "muon", "train.num_steps": 6, "train.checkpoint_every": 3,
        "train.eval_every": 3, "train.log_every": 3, "train.keep_checkpoints": 5,
        "train.grad_accum_steps": accum, "train.muon_momentum_warmup": 4})
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    end = loop.train_and_evaluate(config, whole)
    shutil.copytree(whole, part)
    shutil.rmtree(os.path.join(part, "checkpoints", "6"))
    resumed = loop.train_and_evaluate(config, part)
    for a, b in zip(jax.tree_util.tree_leaves(end.params),
                    jax.tree_util.tree_leaves(resumed.params)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert end.steps == resumed.steps == 6


PARALLEL_SCRIPT = """
import sys
import jax, numpy as np
sys.path.insert(0, "tests")
from conftest import FAST_COMPILE, ROOT, tiny_config
from smallgpt_jax import data, parallel, train
from smallgpt_jax.model import model_config
c = tiny_config(**{"model.num_layers": 1, "train.optimizer": "muon"})
cfg = model_config(c.model, 13)
tx, schedule = train.make_optimizer(c.train)
tokens = np.random.default_rng(0).integers(0, 13, 800).astype(np.int32)
state0 = jax.device_get(train.init_state(cfg, tx, 0))
single = jax.jit(lambda s, b: train.train_step(
    s, b, model_config=cfg, tx=tx, schedule=schedule, seed=0, axis_name=None))
states = {"single": state0}
pars = {k: parallel.data_parallel(k, cfg, tx, schedule, 0) for k in ("pmap", "shard_map")}
placed = {k: p.put_state(state0) for k, p in pars.items()}
for step in range(3):
    batch = data.sample_batch(tokens, 0, step, 8, cfg.block_size)
    states["single"] = single(states["single"], batch.reshape(2, -1, batch.shape[-1]))[0]
    for k, p in pars.items():
        placed[k] = p.train_step(placed[k], p.put_batch(batch, 2))[0]
for k, p in pars.items():
    got = jax.tree_util.tree_leaves(p.unreplicate(placed[k]))
    for a, b in zip(got, jax.tree_util.tree_leaves(states["single"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=k)
print("same")
"""


def test_muon_data_parallel_equals_one_device(tmp_path):
    """Three Muon steps with 2 accumulated micro-batches on 2 devices, pmap and
    shard_map: the same parameters, momentum and step count as one device."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}")
    proc = subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "same" in proc.stdout, proc.stderr[-3000:]
