"""Speed-ups must not change the numbers.

`tests/fixtures/loss_50_steps.json` holds the training losses of fixed-seed
50-step runs (see `loss_fixture.py` for the configs: a 2-layer model on a
generated corpus; plain, no-bias/untied/scan-over-layers, dropout with
gradient accumulation, and the whole `loop.train_and_evaluate`). It was
written by `python tests/loss_fixture.py 9103b33` from the code at commit
9103b33 (the last commit before the performance work: its `smallgpt_jax/`
is the foundation's), with jax 0.10.2 on CPU. Here the current code re-runs
the same variants and must agree to float32 rounding: reordered float32
arithmetic (fused kernels, hand-written backward passes) moves losses by a
few 1e-7, while any real change of the maths (a different mask, a missing
term, other dropout bits) moves them by far more than the tolerance.
"""

import json

import numpy as np
import pytest

import loss_fixture

with open(loss_fixture.FIXTURE) as f:
    FIXTURE = json.load(f)

RTOL, ATOL = 2e-5, 1e-6


def test_fixture_was_made_from_the_code_before_the_changes():
    assert FIXTURE["commit"].startswith("9103b33")
    assert FIXTURE["num_steps"] == loss_fixture.NUM_STEPS
    assert FIXTURE["variants"] == loss_fixture.VARIANTS  # Same configs as re-run here.


@pytest.mark.parametrize("name", list(loss_fixture.VARIANTS))
def test_step_losses_match_the_fixture(name):
    expected = np.array(FIXTURE["losses"][name])
    got = np.array(loss_fixture.step_losses(loss_fixture.VARIANTS[name]))
    assert got.shape == (loss_fixture.NUM_STEPS,)
    assert expected[-1] < expected[0] - 0.5  # The reference run did learn.
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_loop_final_losses_match_the_fixture():
    expected = FIXTURE["losses"]["loop"]
    got = loss_fixture.loop_losses()
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(expected[key], rel=RTOL, abs=ATOL), key
