"""Checks of the PyTorch reference GPT used by the benchmarks (skipped without torch)."""
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

# benchmarks/ is a top-level folder of the repository, not part of the package.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.torch_reference import (  # noqa: E402
    GPT, GPTConfig, expected_num_params, make_torch_train_step, time_steps)

L, H, D, T, V, B = 2, 2, 32, 16, 65, 4


def nanogpt_param_count(n_layer, n_embd, block_size, vocab_size):
    """nanoGPT with bias=False and a tied head, counted tensor by tensor."""
    per_block = (
        n_embd                      # ln_1 weight
        + n_embd * 3 * n_embd       # c_attn
        + n_embd * n_embd           # attn c_proj
        + n_embd                    # ln_2 weight
        + n_embd * 4 * n_embd       # c_fc
        + 4 * n_embd * n_embd       # mlp c_proj
    )
    return (vocab_size * n_embd     # wte (shared with lm_head)
            + block_size * n_embd   # wpe
            + n_layer * per_block
            + n_embd)               # ln_f weight


@pytest.mark.parametrize("layers,heads,embed,block,vocab", [
    (L, H, D, T, V), (4, 4, 128, 64, 65), (6, 6, 384, 256, 65)])
def test_param_count_matches_formula(layers, heads, embed, block, vocab):
    model = GPT(GPTConfig(layers, heads, embed, block, vocab))
    want = nanogpt_param_count(layers, embed, block, vocab)
    assert model.num_params() == want
    assert expected_num_params(layers, embed, block, vocab) == want
    assert model.head.weight is model.tok_emb.weight


def test_info_reports_setup():
    _, info = make_torch_train_step(L, H, D, T, V, B, num_threads=1)
    assert info["num_params"] == nanogpt_param_count(L, D, T, V)
    assert info["threads"] == 1
    assert isinstance(info["fused_adamw"], bool)
    assert info["torch_version"] == torch.__version__


def test_initial_loss_near_uniform():
    step, _ = make_torch_train_step(L, H, D, T, V, B, seed=0, num_threads=1)
    assert abs(step() - math.log(V)) < 0.3


def test_twenty_steps_reduce_loss_on_fixed_batch():
    step, _ = make_torch_train_step(L, H, D, T, V, B, learning_rate=1e-2, seed=1,
                                    num_threads=1)
    losses = [step() for _ in range(21)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5


def test_time_steps_counts_calls():
    calls = []
    out = time_steps(lambda: calls.append(1) or len(calls), warmup=2, repeats=3)
    assert len(calls) == 5 and out["last"] == 5
    assert len(out["times_s"]) == 3
    assert out["min_s"] <= out["median_s"] <= max(out["times_s"])
    with pytest.raises(ValueError):
        time_steps(lambda: None, warmup=0, repeats=0)
