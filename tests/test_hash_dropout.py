"""config.model.dropout_rng='hash': residual and embedding dropout masks from a
counter hash (dropout.HashDropout) instead of the dropout key's generator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import train
from smallgpt_jax.dropout import HashDropout
from smallgpt_jax.model import model_config


def test_the_mask_keeps_one_minus_rate_and_scales_what_it_keeps():
    x = jnp.ones((4, 64, 96), jnp.float32)
    drop = HashDropout(0.2)
    y = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.8) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.8, rtol=1e-6)
    # Each sequence of the batch has its own mask; another key, another mask.
    assert (kept[0] != kept[1]).mean() > 0.2
    other = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert (kept != (np.asarray(other) != 0)).mean() > 0.2
    assert drop.apply({}, x, deterministic=True) is x


@pytest.mark.parametrize("remat", ["block", "mlp"])
def test_a_recomputed_block_draws_the_same_masks(remat):
    """Under remat the backward pass runs the block again: the hash mask is a
    function of the seed, so the losses and gradients are those without remat."""
    V = 13
    batch = np.random.default_rng(0).integers(0, V, (4, 17)).astype(np.int32)

    def loss_and_grads(remat):
        c = tiny_config(**{"model.remat": remat, "model.dropout": 0.1,
                           "model.dropout_rng": "hash"})
        cfg = model_config(c.model, V)
        params = train.init_state(cfg, train.make_optimizer(c.train)[0], 0).params
        return jax.jit(jax.value_and_grad(
            lambda p: train.loss_fn(p, cfg, batch, jax.random.key(1))))(params)

    (want_loss, want), (loss, grads) = loss_and_grads("none"), loss_and_grads(remat)
    assert float(loss) == pytest.approx(float(want_loss), abs=1e-6)
    for g, w in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # Dropout is on: the loss is not the one without it.
    c = tiny_config()
    cfg = model_config(c.model, V)
    params = train.init_state(cfg, train.make_optimizer(c.train)[0], 0).params
    assert float(train.loss_fn(params, cfg, batch)) != pytest.approx(float(want_loss), abs=1e-4)


def test_hash_masks_train_a_step_and_without_dropout_change_nothing():
    from test_dropout_rng import _loss_after_one_step
    base = {"model.dropout": 0.3}
    hashed = _loss_after_one_step(**base, **{"model.dropout_rng": "hash"})
    assert np.isfinite(hashed) and hashed != _loss_after_one_step(**base)
    assert (_loss_after_one_step(**{"model.dropout_rng": "hash"})
            == _loss_after_one_step())


def test_auto_is_the_hash_on_a_tpu_and_threefry_elsewhere():
    c = tiny_config(**{"model.dropout": 0.1})
    assert c.model.dropout_rng == "auto"  # The default.
    assert model_config(c.model, 13, "tpu").dropout_rng == "hash"
    for platform in ("cpu", "gpu"):
        assert model_config(c.model, 13, platform).dropout_rng == "threefry2x32"
    c.model.dropout_rng = "rbg"  # A named generator is kept everywhere.
    assert model_config(c.model, 13, "tpu").dropout_rng == "rbg"
