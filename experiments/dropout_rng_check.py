"""Do other dropout masks train the same model as JAX's threefry ones? A small
character GPT (dropout 0.2) trained on Tiny Shakespeare for a few hundred
steps over a few seeds with the explicit attention and threefry masks, and
with the other choice: 'rbg' masks (config.model.dropout_rng), the hash masks
of the residual and embedding dropout (dropout_rng='hash'), or the flash
kernel's hash masks (config.model.attention='flash', run by Pallas's
interpreter on the CPU); the final validation losses' means and spreads, and
Welch's t-test between the two (the figures are in benchmarks/README.md).

    python experiments/dropout_rng_check.py [--against=rbg|hash|flash] [--seeds=4] [--steps=300]

Runs on the CPU in a few minutes ('flash' takes longer: the interpreter); it
calls the train step directly, not the training loop (no checkpoints, no
workdir).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from smallgpt_jax import data, train
from smallgpt_jax.config import base_config
from smallgpt_jax.model import model_config
from smallgpt_jax.system import runtime


# Each variant's model settings: the masks' generator and the attention.
VARIANTS = {"threefry2x32": {}, "rbg": {"dropout_rng": "rbg"}, "flash": {"attention": "flash"},
            "hash": {"dropout_rng": "hash"}}


def final_val_losses(variant: str, seeds: list[int], steps: int, train_ids, val_ids,
                     vocab: int) -> list[float]:
    c = base_config()
    c.model.num_layers, c.model.num_heads, c.model.embed_dim = 2, 2, 64
    c.model.block_size, c.model.dropout = 32, 0.2
    c.model.update(VARIANTS[variant])
    c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 16, steps, 20
    cfg = model_config(c.model, vocab, platform="cpu")
    tx, schedule = train.make_optimizer(c.train)
    # The seed is an argument, so every seed runs the one compiled step.
    step = jax.jit(lambda s, b, seed: train.train_step(s, b, model_config=cfg, tx=tx,
                                                       schedule=schedule, seed=seed))
    evaluate = jax.jit(lambda p, b: train.eval_step(p, b, model_config=cfg).mean())
    # The same 20 validation batches for every run: only init and masks differ.
    val = jnp.asarray(np.stack([data.sample_batch(val_ids, 1234, i, 32, cfg.block_size)
                                for i in range(20)]))
    losses = []
    for seed in seeds:
        state = train.init_state(cfg, tx, seed)
        for i in range(steps):
            batch = data.sample_batch(train_ids, seed, i, c.train.batch_size, cfg.block_size)
            state, _ = step(state, jnp.asarray(batch[None]), jnp.uint32(seed))
        losses.append(float(evaluate(state.params, val)))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--against", choices=["rbg", "flash", "hash"], default="rbg")
    args = parser.parse_args()
    runtime.setup_process()
    text = data.read_text(data.find_dataset("tinyshakespeare"))
    chars = sorted(set(text))
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = np.searchsorted(np.array([ord(ch) for ch in chars]), codes).astype(np.int32)
    cut = int(0.9 * len(ids))
    losses = {}
    for name in ("threefry2x32", args.against):
        losses[name] = final_val_losses(name, list(range(args.seeds)), args.steps,
                                        ids[:cut], ids[cut:], len(chars))
        v = np.array(losses[name])
        print(f"{name:13s} val loss {v.mean():.4f} +- {v.std(ddof=1):.4f} (sd) "
              f"over seeds {list(range(args.seeds))}: {', '.join(f'{x:.4f}' for x in v)}")
    t, p = stats.ttest_ind(losses[args.against], losses["threefry2x32"], equal_var=False)
    print(f"Welch's t-test, {args.against} vs threefry2x32: t = {t:.2f}, p = {p:.2f}")


if __name__ == "__main__":
    main()
