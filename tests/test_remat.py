"""config.model.remat: the backward pass recomputes what it did not keep,
so the losses and gradients are those of the model without it."""

import functools

import jax
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import train
from smallgpt_jax.model import model_config

V = 13


@functools.cache  # "none" is each case's reference.
def loss_and_grads(remat: str, scan: bool):
    c = tiny_config(**{"model.remat": remat, "model.scan_layers": scan,
                       "model.dropout": 0.1})
    cfg = model_config(c.model, V)
    params = train.init_state(cfg, train.make_optimizer(c.train)[0], 0).params
    batch = np.random.default_rng(0).integers(0, V, (4, cfg.block_size + 1)).astype(np.int32)
    # Dropout on: the recomputed pass must draw the same masks.
    grad = jax.jit(jax.value_and_grad(
        lambda p, b: train.loss_fn(p, cfg, b, jax.random.key(1))))
    jaxpr = str(jax.make_jaxpr(grad)(params, batch))
    return grad(params, batch), jaxpr


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", ["block", "attention", "mlp"])
def test_remat_gives_the_same_loss_and_gradients(remat, scan):
    (want_loss, want), plain = loss_and_grads("none", scan)
    (loss, grads), jaxpr = loss_and_grads(remat, scan)
    assert "remat" in jaxpr and "remat" not in plain  # jax.checkpoint is really there.
    assert float(loss) == pytest.approx(float(want_loss), abs=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_remat_keeps_less_for_the_backward_pass():
    """XLA's own count of the step's temporaries (CPU), with long sequences,
    whose attention's [B, H, T, T] arrays dominate what 'none' keeps. Over
    scanned layers: XLA's CPU scheduler computes an unrolled model's
    recomputation early, which undoes the saving there (on CPU only)."""
    def temp_bytes(remat):
        c = tiny_config(**{"model.remat": remat, "model.block_size": 256,
                           "model.scan_layers": True, "model.num_layers": 4})
        cfg = model_config(c.model, V)
        params = jax.eval_shape(lambda: train.init_state(
            cfg, train.make_optimizer(c.train)[0], 0).params)
        batch = jax.ShapeDtypeStruct((8, 257), np.int32)
        grad = jax.jit(jax.grad(lambda p, b: train.loss_fn(p, cfg, b)))
        return grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
    none, block, attention = (temp_bytes(r) for r in ("none", "block", "attention"))
    assert block < attention < 0.5 * none, (none, block, attention)


def test_auto_is_block_on_a_tpu_with_scanned_layers_and_none_elsewhere():
    # Per target, as 'auto' attention and dropout masks: a CPU or GPU run,
    # and an unrolled model on a TPU, keep everything as before.
    for scan, platform, want in [(True, "tpu", "block"), (False, "tpu", "none"),
                                 (True, "cpu", "none"), (True, "gpu", "none")]:
        c = tiny_config(**{"model.remat": "auto", "model.scan_layers": scan})
        assert model_config(c.model, V, platform=platform).remat == want
    assert tiny_config().model.remat == "auto"  # The default.
    assert model_config(tiny_config(**{"model.remat": "mlp"}).model, V,
                        platform="tpu").remat == "mlp"
