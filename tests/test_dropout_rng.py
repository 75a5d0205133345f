"""config.model.dropout_rng: the generator behind the dropout masks."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax import train
from smallgpt_jax.config import validate
from smallgpt_jax.model import model_config
from smallgpt_jax.system.errors import UserError

V = 13


def _loss_after_one_step(**overrides) -> float:
    c = tiny_config(**overrides)
    cfg = model_config(c.model, V)
    tx, schedule = train.make_optimizer(c.train)
    state = train.init_state(cfg, tx, c.seed)
    batch = jax.random.randint(jax.random.key(5), (1, 4, cfg.block_size + 1), 0, V)
    step = jax.jit(lambda s, b: train.train_step(s, b, model_config=cfg, tx=tx,
                                                 schedule=schedule, seed=c.seed))
    return float(step(state, batch)[1]["loss"])


def test_the_generator_changes_the_masks_not_the_model():
    base = {"model.dropout": 0.3}
    threefry = _loss_after_one_step(**base)
    assert threefry == _loss_after_one_step(**base, **{"model.dropout_rng": "threefry2x32"})
    rbg = _loss_after_one_step(**base, **{"model.dropout_rng": "rbg"})
    assert np.isfinite(rbg) and rbg != threefry  # Other bits, other masks.
    # Without dropout no bits are drawn: the generator changes nothing.
    assert (_loss_after_one_step(**{"model.dropout_rng": "unsafe_rbg"})
            == _loss_after_one_step())


def test_a_config_without_the_field_gets_threefry_and_bad_names_are_one_line():
    c = tiny_config()
    del c.model["dropout_rng"]  # A checkpoint's config from before the field.
    assert model_config(c.model, V).dropout_rng == "threefry2x32"
    with pytest.raises(UserError, match="config.model.dropout_rng='philox' is not one of"):
        validate(tiny_config(**{"model.dropout_rng": "philox"}))
