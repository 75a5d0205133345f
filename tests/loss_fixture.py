"""Fixed-seed 50-step training runs whose losses guard against speed-ups that
change the numbers.

Run as a script it writes `tests/fixtures/loss_50_steps.json` with the losses
of every variant below:

    python tests/loss_fixture.py                  # with the checked-out code
    python tests/loss_fixture.py COMMIT           # with smallgpt_jax/ as of COMMIT

The committed fixture was produced the second way from the commit before the
performance work (its "commit" field names it); `test_loss_regression.py`
re-runs the same variants with the current code and compares.

Everything here goes through the public training API (`train.init_state`,
`parallel.make_parallel_steps`, `parallel.shard_batch` (both in `train` in
older code), `data.sample_batch`) and, for the "loop" variant, the whole
`loop.train_and_evaluate`, so both the step and the loop around it are
covered. The corpus is generated, not read, so the check needs no data files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "loss_50_steps.json")
NUM_STEPS = 50

# Variant name -> config overrides on top of `small_config()`.
VARIANTS: dict[str, dict] = {
    "base": {},  # No dropout: the plain forward/backward/AdamW path.
    "no_bias_untied_scan": {"model.use_bias": False, "model.tie_embeddings": False,
                            "model.scan_layers": True},
    "dropout_accum": {"model.dropout": 0.1, "train.grad_accum_steps": 2},
}


def corpus_text(num_chars: int = 20_000, seed: int = 1234) -> str:
    """A learnable pseudo-text: words drawn from a fixed small vocabulary by a
    seeded generator, so the loss falls visibly within 50 steps."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "shall", "speak", "of", "love", "and", "war",
             "my", "lord", "good", "night", "to", "be", "or", "not", "is", "it"]
    out, n = [], 0
    while n < num_chars:
        w = words[rng.integers(len(words))]
        sep = ".\n" if rng.random() < 0.1 else " "
        out.append(w + sep)
        n += len(w) + len(sep)
    return "".join(out)


def small_config(**overrides):
    """2 layers, 2 heads, width 32, context 32, batch 8: seconds on a CPU."""
    from smallgpt_jax.config import base_config
    c = base_config()
    c.seed = 42
    c.model.num_layers, c.model.num_heads, c.model.embed_dim = 2, 2, 32
    c.model.block_size = 32
    c.train.batch_size, c.train.num_steps = 8, NUM_STEPS
    c.train.warmup_steps, c.train.learning_rate = 10, 3e-3
    c.train.eval_every, c.train.eval_steps = NUM_STEPS, 2
    c.train.log_every, c.train.sample_tokens = 10, 8
    c.train.checkpoint_every = 10 * NUM_STEPS
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def step_losses(overrides: dict) -> list[float]:
    """Per-step training losses of a NUM_STEPS-step run (train API only)."""
    from flax.jax_utils import replicate
    from smallgpt_jax import data, train
    try:
        from smallgpt_jax import parallel
    except ImportError:  # Older code: the device placement was part of train.py.
        parallel = train
    from smallgpt_jax.model import model_config
    try:
        from smallgpt_jax.tokenizers.tokenizer import CharTokenizer
    except ImportError:  # An old commit's code (_use_code_from): the flat package.
        from smallgpt_jax.tokenizer import CharTokenizer

    c = small_config(**overrides)
    text = corpus_text()
    tok = CharTokenizer.from_text(text)
    tokens = np.asarray(tok.encode(text), np.int32)
    cfg = model_config(c.model, tok.vocab_size)
    tx, schedule = train.make_optimizer(c.train)
    state = train.init_state(cfg, tx, c.seed)
    p_train, _ = parallel.make_parallel_steps(cfg, tx, schedule, c.seed)
    rstate, losses = replicate(state), []
    for step in range(NUM_STEPS):
        batch = data.sample_batch(tokens, c.seed, step, c.train.batch_size, cfg.block_size)
        rstate, metrics = p_train(rstate, parallel.shard_batch(batch, c.train.grad_accum_steps))
        losses.append(float(np.asarray(metrics["loss"])[0]))
    return losses


def loop_losses() -> dict[str, float]:
    """Final evaluation losses of `loop.train_and_evaluate` on the same corpus."""
    try:
        from smallgpt_jax.training import loop
    except ImportError:  # An old commit's code (_use_code_from): the flat package.
        from smallgpt_jax import loop
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.txt")
        with open(path, "w") as f:
            f.write(corpus_text())
        c = small_config(**{"data.path": path})
        final = loop.train_and_evaluate(c, os.path.join(tmp, "run"))
    # An old commit's code (_use_code_from) returns the metrics as a dict.
    final = final if isinstance(final, dict) else final.metrics
    return {"train_loss": final["eval/train_loss"], "val_loss": final["eval/val_loss"]}


def compute_all() -> dict:
    out = {name: step_losses(overrides) for name, overrides in VARIANTS.items()}
    out["loop"] = loop_losses()
    return out


def _use_code_from(commit: str) -> str:
    """Extracts smallgpt_jax/ as of `commit` into a temporary folder and puts it
    first on sys.path, so the losses come from that code."""
    full = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="smallgpt_old_")
    archive = subprocess.run(["git", "archive", full, "smallgpt_jax"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    sys.path.insert(0, tmp)
    return full


def main() -> None:
    if len(sys.argv) > 1:
        commit = _use_code_from(sys.argv[1])
    else:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "smallgpt_jax"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        commit = head + (" (with uncommitted changes in smallgpt_jax/)" if dirty else "")
    try:  # The settings of a run (under pytest, conftest.py applies them).
        try:
            from smallgpt_jax.system import runtime
        except ImportError:  # An old commit's code: the flat package.
            from smallgpt_jax import runtime
        (getattr(runtime, "setup_process", None) or runtime.setup)()  # setup(): older code.
    except ImportError:  # runtime.py did not exist before the speed-ups.
        pass
    import jax
    record = {
        "commit": commit,
        "jax_version": jax.__version__,
        "num_steps": NUM_STEPS,
        "variants": VARIANTS,
        "losses": compute_all(),
    }
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {FIXTURE} from commit {record['commit']}")


if __name__ == "__main__":
    main()
