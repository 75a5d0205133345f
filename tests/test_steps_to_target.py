"""experiments/steps_to_target.py: its t-test, its runs against the training
loop's, and the table it writes on a tiny config."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, load_file
from smallgpt_jax.training import loop, profiling
from test_checkpoint import train_config, write_corpus

s2t = load_file("experiments/steps_to_target.py", "steps_to_target")


def test_welch_against_its_formulas_and_known_values():
    a, b = [600, 650, 620, 700, 640], [1500, 1600, 1450, 1700, 1550]
    t, df, p = s2t.welch(a, b)
    va, vb = np.var(a, ddof=1) / 5, np.var(b, ddof=1) / 5
    assert t == pytest.approx((np.mean(a) - np.mean(b)) / math.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 4 + vb**2 / 4))
    assert 0 < p < 1e-4
    # Two-sided P(|T| > t) with 2 degrees of freedom: 1 - t / sqrt(2 + t^2);
    # two runs per arm with equal spreads have df = 2.
    t, df, p = s2t.welch([0.0, 2.0], [1.0, 3.0])
    assert df == pytest.approx(2.0)
    assert p == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-12)
    # No spread at all (every run took the same steps): no test, a plain answer.
    assert s2t.welch([800, 800], [800, 800])[2] == 1.0
    assert s2t.welch([800, 800], [900, 900])[2] == 0.0


def test_paired_sees_a_shared_seed_offset_that_welch_cannot():
    # Seeds differ a lot from each other, but arm a is 50 steps behind b on
    # every seed (± 10): the paired test finds it, Welch's does not.
    b = {0: 700, 1: 900, 2: 1100, 3: 800, 4: 1000}
    a = {s: v + 50 + (10 if s % 2 else -10) for s, v in b.items()}
    diff, p, n = s2t.paired(a, b)
    assert (diff, n) == (48.0, 5) and p < 1e-3
    assert s2t.welch(list(a.values()), list(b.values()))[2] > 0.5
    # Its formula: t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of
    # freedom; with 2 seeds (1 df, a Cauchy law) p = 1 - 2 arctan(|t|) / pi.
    diff, p, n = s2t.paired({0: 10.0, 1: 30.0}, {0: 0.0, 1: 0.0})
    t = 20.0 / (np.std([10.0, 30.0], ddof=1) / math.sqrt(2))
    assert (diff, n) == (20.0, 2) and p == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    # Only the seeds both ran count; all-equal differences need no test.
    assert s2t.paired({0: 800, 1: 850, 7: 5}, {0: 700, 1: 750}) == (100.0, 0.0, 2)
    assert s2t.paired({0: 800, 1: 850}, {0: 800, 1: 850}) == (0.0, 1.0, 2)
    assert s2t.paired({0: 800}, {0: 700})[2] == 1


def test_its_validation_losses_are_the_training_loops(tmp_path):
    config = train_config(write_corpus(tmp_path / "text.txt"), **{
        "train.optimizer": "muon", "train.num_steps": 10, "train.eval_every": 5,
        "train.checkpoint_every": 10})
    seen = {}

    class Hooks(profiling.Hooks):
        def evaluated(self, step, losses, seconds):
            seen[step] = losses["val"]

    loop.train_and_evaluate(config, str(tmp_path / "run"), Hooks())
    record = s2t.run_one(config, target=-1.0, eval_every=5, max_steps=10,
                         stop_at_target=True)
    assert record["steps"] is None and record["final_val"] == record["curve"][-1][1]
    assert dict(record["curve"]) == pytest.approx(seen, rel=1e-6)


def test_two_arms_two_seeds_make_a_table_and_resume(tmp_path):
    corpus = write_corpus(tmp_path / "text.txt")
    (tmp_path / "tiny.py").write_text(
        "import sys\nsys.path.insert(0, 'tests')\n"
        "from test_checkpoint import train_config\n"
        f"def get_config():\n    return train_config({str(corpus)!r}, "
        "**{'train.num_steps': 30, 'train.learning_rate': 1e-2})\n")
    out = tmp_path / "out"
    args = [sys.executable, "experiments/steps_to_target.py", "--target=3.0", "--seeds=0,1",
            "--eval_every=5", f"--out={out}", f"--arm=adam={tmp_path / 'tiny.py'}",
            f"--arm=muon={tmp_path / 'tiny.py'} train.optimizer=muon"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    run = lambda extra=(): subprocess.run(args + list(extra), cwd=ROOT, env=env,
                                          capture_output=True, text=True, timeout=300)
    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in open(out / "runs.jsonl")]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [
        ("adam", 0), ("adam", 1), ("muon", 0), ("muon", 1)]
    for r in runs:  # Stopped at the first evaluation at or below the target.
        assert r["steps"] is not None and r["steps"] % 5 == 0 and r["final_val"] <= 3.0
        assert [v for s, v in r["curve"] if s < r["steps"]] == [
            v for s, v in r["curve"][:-1]] and all(v > 3.0 for _, v in r["curve"][:-1])
        assert r["tokens"] == r["steps"] * 4 * 8 and r["cpu_s"] > 0
    assert runs[0]["curve"] != runs[2]["curve"]  # Seeds differ (adam 0 vs adam 1).
    table = (out / "table.md").read_text()
    assert "| muon | 2/2 |" in table and "p (steps vs adam, Welch)" in table
    assert "(2 seeds) |" in table.splitlines()[-1]  # muon against adam, paired by seed.
    again = run().stdout  # Everything was done: nothing runs again, only the table.
    assert again.strip().splitlines() == table.strip().splitlines()
    bad = run(["--baseline=nope"])
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error:")
