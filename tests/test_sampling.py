"""Choosing a token: temperature, top-k and top-p keep what they promise,
samples follow the filtered distribution, and bad options are one error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallgpt_jax import sampling
from smallgpt_jax.system.errors import UserError


def kept(filtered_BV) -> np.ndarray:
    return np.isfinite(np.asarray(filtered_BV))


def test_top_k_keeps_exactly_the_k_largest():
    logits_BV = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    for k in (1, 2, 7, 49, 50, 80):
        keep_BV = kept(sampling.filter_logits(logits_BV, 1.0, k, 1.0))
        assert (keep_BV.sum(-1) == min(k, 50)).all()
        for row, keep in zip(np.asarray(logits_BV), keep_BV):
            assert row[keep].min() >= row[~keep].max(initial=-np.inf)


def test_top_k_with_ties_still_keeps_exactly_k():
    logits_BV = jnp.asarray([[1.0, 3.0, 3.0, 3.0, 0.0, 3.0]])
    keep = kept(sampling.filter_logits(logits_BV, 1.0, 2, 1.0))[0]
    assert keep.tolist() == [False, True, True, False, False, False]  # Lower ids win ties.


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15])
    logits_BV = jnp.log(jnp.asarray(probs))[None]
    expected = {  # p -> ids kept (most likely first: 1, 3, 4, 2, 0)
        0.3: {1}, 0.6: {1, 3}, 0.7 + 1e-3: {1, 3, 4}, 0.86: {1, 3, 4, 2},
        0.96: {0, 1, 2, 3, 4}, 1.0: {0, 1, 2, 3, 4}}
    for p, ids in expected.items():
        keep = kept(sampling.filter_logits(logits_BV, 1.0, 0, p))[0]
        assert set(np.flatnonzero(keep)) == ids, p


def test_top_p_of_one_keeps_even_a_negligible_tail():
    # In float32 the mass before the tail rounds to exactly 1.0 here.
    logits_BV = jnp.asarray([[30.0, 0.0, -1.0]])
    assert kept(sampling.filter_logits(logits_BV, 1.0, 0, 1.0)).all()
    assert kept(sampling.filter_logits(logits_BV, 1.0, 0, 0.999)).sum() == 1


def test_top_p_property_on_random_logits():
    logits_BV = jax.random.normal(jax.random.key(1), (16, 40)) * 2
    for p in (0.1, 0.5, 0.9, 0.99):
        keep_BV = kept(sampling.filter_logits(logits_BV, 1.0, 0, p))
        probs_BV = np.asarray(jax.nn.softmax(logits_BV, -1))
        for probs, keep in zip(probs_BV, keep_BV):
            mass = probs[keep].sum()
            assert mass >= p - 1e-6  # Reaches p ...
            assert mass - probs[keep].min() < p  # ... and no kept token is spare.
            assert probs[keep].min() >= probs[~keep].max(initial=0)  # The most likely ones.


def test_top_p_applies_to_what_top_k_kept_and_after_temperature():
    logits_BV = jnp.log(jnp.asarray([[0.4, 0.3, 0.2, 0.1]]))
    # After top-2 the renormalised probabilities are 4/7 and 3/7: p=0.5 keeps one.
    assert kept(sampling.filter_logits(logits_BV, 1.0, 2, 0.5))[0].tolist() == [
        True, False, False, False]
    # Temperature 10 flattens them to ~0.26, 0.25, 0.25, 0.24: p=0.5 now keeps two.
    flat = sampling.filter_logits(logits_BV, 10.0, 0, 0.5)
    assert kept(flat)[0].tolist() == [True, True, False, False]
    np.testing.assert_allclose(flat[0, :2], logits_BV[0, :2] / 10, rtol=1e-6)


def test_samples_follow_the_filtered_distribution():
    logits = jnp.asarray([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20000
    logits_BV = jnp.tile(logits, (n, 1))
    draws = np.asarray(sampling.sample_logits(logits_BV, jax.random.key(3), 0.7, 3, 1.0))
    assert set(np.unique(draws)) == {0, 1, 2}
    expected = np.asarray(jax.nn.softmax(logits[:3] / 0.7))
    freq = np.bincount(draws, minlength=5)[:3] / n
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_temperature_zero_is_greedy_whatever_the_key():
    logits_BV = jax.random.normal(jax.random.key(4), (8, 30))
    for seed in range(3):
        out = sampling.sample_logits(logits_BV, jax.random.key(seed), 0.0, 5, 0.5)
        np.testing.assert_array_equal(out, np.argmax(logits_BV, -1))


@pytest.mark.parametrize("kwargs,message", [
    ({"top_k": 0}, "top_k=0 must be at least 1"),
    ({"top_p": 0.0}, "top_p=0.0 must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p=1.5 must be in (0, 1]"),
    ({"temperature": -0.1}, "temperature=-0.1 must be >= 0"),
    ({"temperature": float("inf")}, "temperature=inf must be >= 0 and finite"),
    ({"max_new_tokens": -1}, "max_new_tokens=-1 must be 0 or more"),
    ({"num_samples": 0}, "num_samples=0 must be at least 1"),
    ({"slide_step": 17, "block_size": 16}, "slide_step=17 must be at least 1 and at most"),
])
def test_bad_options_raise_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sampling.check_options(**kwargs)
