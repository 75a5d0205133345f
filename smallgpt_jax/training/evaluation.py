"""The evaluation phase of the loop: losses on fixed batches, a sample, a picture.

Every evaluation measures the mean loss over the same `eval_steps` batches
of each split (one program runs them all), so its numbers are comparable
from one evaluation to the next. The process that writes TensorBoard also
writes a text sample and a picture of the attention now and then.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from smallgpt_jax import data, parallel, text_generation, train
from smallgpt_jax.checkpoint import checksum
from smallgpt_jax.training import reporting

PICTURE_TOKENS = 16  # Validation tokens the attention picture shows.


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The config fields an evaluation reads (training/loop.py fills them in)."""

    seed: int
    eval_steps: int  # Batches of each split, the same ones every time.
    batch_size: int
    block_size: int
    sample_tokens: int  # Of the text sample.


def eval_batches(par: parallel.DataParallel, splits: data.Splits,
                 s: EvalSettings) -> jax.Array:
    """The `eval_steps` batches of both splits (train first), on the devices:
    made and put once, since every evaluation uses the same ones. This
    process's rows are ordered so that batch s of device d is what `put_batch`
    would give device d for that batch alone."""
    S, D, T = 2 * s.eval_steps, jax.local_device_count(), s.block_size
    # Each batch goes straight to its place: one host copy of them all (a
    # list, its stack and a transposed stack held three; system/footprint.py counts one).
    out_DSbT1 = np.empty((D, S, s.batch_size // jax.process_count() // D, T + 1), np.int32)
    for i in range(S):  # The train split's eval_steps batches, then the validation's.
        stream, tokens = ((1, splits.train), (2, splits.val))[i // s.eval_steps]
        rows = parallel.process_rows(data.sample_batch(
            tokens, s.seed, i % s.eval_steps, s.batch_size, T, stream))
        out_DSbT1[:, i] = rows.reshape(D, -1, T + 1)
    return par.put_batch(out_DSbT1.reshape(-1, T + 1), S)


def evaluate(par: parallel.DataParallel, rparams, batches: jax.Array,
             eval_steps: int) -> dict[str, float]:
    """Mean loss over the same `eval_steps` batches of each split every time
    (`batches` from `eval_batches`): one program runs them all."""
    S = eval_steps
    losses = parallel.host_values(par.eval_step(rparams, batches)).reshape(-1)
    return {"train": float(np.mean(losses[:S])), "val": float(np.mean(losses[S:]))}


def eval_metrics(losses: dict[str, float], best_val: float,
                 tokens_per_char: float) -> dict[str, float]:
    """An evaluation's TensorBoard scalars (also kept for summary.json)."""
    return {"eval/train_loss": losses["train"], "eval/val_loss": losses["val"],
            "eval/val_perplexity": math.exp(losses["val"]),
            "eval/val_bpc": train.bits_per_char(losses["val"], tokens_per_char),
            "eval/best_val_loss": best_val}


def sample_text(params, model_cfg, tok, n_tokens: int, seed: int) -> str:
    """A short sample from the model, starting from a newline (or token 0)."""
    return text_generation.sample_texts(params, model_cfg, tok, "", n_tokens, seed,
                                   temperature=0.8)[0]


def attention_pictures(params, model_cfg, tok, splits: data.Splits) -> dict[str, np.ndarray]:
    """The attention on the first validation tokens, one image per layer, by
    tag: views/attention/layer_0, ... (zero-padded past 10 layers, so that
    TensorBoard, which orders cards by tag, shows them in layer order)."""
    # Imported here: matplotlib only when a picture is drawn.
    from smallgpt_jax.analysis import attention_cards
    images = attention_cards.attention_images(params, model_cfg, tok,
                                  splits.val[:min(PICTURE_TOKENS, model_cfg.block_size)])
    digits = len(str(len(images) - 1))
    return {f"views/attention/layer_{l:0{digits}d}": im for l, im in enumerate(images)}


def write_sample(writer: reporting.Writer, step: int, params, model_cfg, tok,
                 splits: data.Splits, s: EvalSettings) -> None:
    """The sample and the attention pictures of `params` (one copy) at `step`."""
    text = sample_text(params, model_cfg, tok, s.sample_tokens, s.seed + step)
    writer.text(step, "sample", text)
    # Tagged so that its group sorts after the eval and train groups:
    # TensorBoard's first screen then shows the losses.
    for tag, image in attention_pictures(params, model_cfg, tok, splits).items():
        writer.image(step, tag, image)


def warmup_tasks(par: parallel.DataParallel, rstate, params, state_shapes,
                 batches: jax.Array, model_cfg, tok, splits: data.Splits, s: EvalSettings,
                 draws: bool) -> dict:
    """What the first evaluation and save compile, as warmup.Warmup tasks by
    name: the evaluation program (from shapes: `rstate` is donated to the next
    step), the checksum program of a save (for what `par.saved` writes), and
    on the process that draws, the sampler and the attention picture, run
    once on `params` (the initial ones, committed where the run's own copy
    will be: a program compiled for other placements would be compiled again
    for the run's)."""
    spec, saved = parallel.placed_shapes(rstate.params), par.saved_shapes(rstate, state_shapes)
    tasks = {"eval": lambda: par.eval_step.lower(spec, batches).compile(),
             "checksum": lambda: checksum.compile_for(saved)}
    if draws:
        from smallgpt_jax.analysis import attention_cards  # noqa: F401  Imported on this thread, not the warm-up's.
        params = parallel.on_first_device(params)
        tasks["sample"] = lambda: sample_text(params, model_cfg, tok, s.sample_tokens, s.seed)
        tasks["picture"] = lambda: attention_pictures(params, model_cfg, tok, splits)
    return tasks
