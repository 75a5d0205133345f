"""The training loop, top to bottom: data, model, steps, evaluation, logs.

    text -> tokenizer -> token ids -> (seed, step)-sampled batches
         -> pmap-ed train step -> periodic evaluation, samples, TensorBoard
"""

from __future__ import annotations

import logging
import math
import os
import time

import jax
import numpy as np
import ml_collections

from smallgpt_jax import data, reporting, sampling, tokenizer as tokenizer_lib, train
from smallgpt_jax.bpe import END_OF_TEXT
from smallgpt_jax.config import validate
from smallgpt_jax.errors import UserError
from smallgpt_jax.model import count_params, model_config as make_model_config

log = logging.getLogger("smallgpt_jax")


def prepare_data(config, workdir: str):
    """Loads the corpus, builds (or reloads) the tokenizer, encodes both splits."""
    documents, source = data.load_text(config.data)
    # Documents are separated by a blank line, or by one special token.
    separator = END_OF_TEXT if config.data.end_of_text else "\n\n"
    text = separator.join(documents)
    train_text, val_text = data.split_text(text, config.data.train_fraction)
    tok_path = os.path.join(workdir, "tokenizer.json")
    if os.path.exists(tok_path):  # A resumed run keeps its vocabulary.
        tok = tokenizer_lib.load(tok_path)
        if tok.kind != config.data.tokenizer or (
                tok.kind == "bpe" and tok.vocab_size != config.data.vocab_size):
            raise UserError(
                f"{tok_path} holds a {tok.kind} vocabulary of {tok.vocab_size}, but the config "
                f"asks for data.tokenizer={config.data.tokenizer!r}"
                f"{f' of {config.data.vocab_size}' if config.data.tokenizer == 'bpe' else ''}; "
                "use a fresh --workdir.")
    else:
        specials = (END_OF_TEXT,) if config.data.end_of_text else ()
        tok = tokenizer_lib.build(config.data.tokenizer, train_text, config.data.vocab_size,
                                  specials)
    splits = data.Splits(tok.encode(train_text), tok.encode(val_text))
    data.check_long_enough(splits, config.model.block_size)
    val_chars = len(val_text)  # Tokens per character of the original text:
    if config.data.end_of_text:  # the 13-character mark stands for one.
        val_chars -= (len(END_OF_TEXT) - 1) * val_text.count(END_OF_TEXT)
    tokens_per_char = len(splits.val) / max(val_chars, 1)
    return tok, splits, source, tokens_per_char


def process_rows(batch_NT1: np.ndarray) -> np.ndarray:
    """The rows of a global batch that this process feeds to its devices."""
    n = batch_NT1.shape[0] // jax.process_count()
    i = jax.process_index()
    return batch_NT1[i * n:(i + 1) * n]


def evaluate(p_eval, rparams, splits: data.Splits, config) -> dict[str, float]:
    """Mean loss over the same `eval_steps` batches of each split every time."""
    t, m = config.train, config.model
    out = {}
    for stream, (name, tokens) in enumerate((("train", splits.train), ("val", splits.val)), 1):
        losses = []
        for i in range(t.eval_steps):
            batch = data.sample_batch(tokens, config.seed, i, t.batch_size, m.block_size, stream)
            losses.append(p_eval(rparams, train.shard_batch(process_rows(batch))))
        out[name] = float(np.mean([np.asarray(l)[0] for l in losses]))
    return out


def sample_text(params, model_cfg, tok, n_tokens: int, seed: int) -> str:
    """A short sample from the model, starting from a newline (or token 0)."""
    try:
        prompt = tok.encode("\n")
    except UserError:
        prompt = np.zeros(1, np.int32)
    ids = sampling.generate(params, model_cfg, prompt, n_tokens, jax.random.key(seed),
                            temperature=0.8, top_k=0, top_p=1.0)
    return tok.decode(ids[0])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir`; returns the final metrics."""
    validate(config)
    t, m = config.train, config.model
    micro = train.per_device_batch(t.batch_size, t.grad_accum_steps)
    os.makedirs(workdir, exist_ok=True)
    tok, splits, source, tokens_per_char = prepare_data(config, workdir)
    if jax.process_index() == 0:
        tokenizer_lib.save(tok, os.path.join(workdir, "tokenizer.json"))
        reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    model_cfg = make_model_config(config, tok.vocab_size)
    tx, schedule = train.make_optimizer(t), train.learning_rate_schedule(t)
    state = train.init_state(model_cfg, tx, config.seed)
    p_train, p_eval = train.make_parallel_steps(model_cfg, tx, schedule, config.seed)

    progress = reporting.ProgressBar(t.num_steps)
    progress.message(
        f"{source}: {len(splits.train):,} train / {len(splits.val):,} val tokens, "
        f"{tok.kind} vocabulary {tok.vocab_size}, {tokens_per_char:.3f} tokens/char")
    progress.message(
        f"model: {count_params(state.params) / 1e6:.2f}M parameters; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{micro} sequences per device per micro-batch; workdir {workdir}")

    writer = reporting.Writer(workdir)
    writer.text(0, "config", "\n" + str(config))
    rstate = flax_replicate(state)
    start_step = int(state.step)
    tokens_per_step = t.batch_size * m.block_size
    t_start = t_log = time.time()
    best_val, last = math.inf, {}
    for step in range(start_step, t.num_steps):
        batch = data.sample_batch(splits.train, config.seed, step, t.batch_size, m.block_size)
        rstate, metrics = p_train(rstate, train.shard_batch(process_rows(batch), t.grad_accum_steps))
        done = step + 1
        if done % t.log_every == 0 or done == t.num_steps:
            metrics = {k: float(np.asarray(v)[0]) for k, v in metrics.items()}
            now = time.time()
            steps_since = t.log_every if done % t.log_every == 0 else done % t.log_every
            metrics["tokens_per_sec"] = tokens_per_step * steps_since / (now - t_log)
            t_log = now
            if not math.isfinite(metrics["loss"]) or not math.isfinite(metrics["grad_norm"]):
                raise UserError(f"training diverged at step {done}: loss {metrics['loss']}, "
                                f"grad norm {metrics['grad_norm']}; lower the learning rate.")
            writer.scalars(done, {f"train/{k}": v for k, v in metrics.items()})
            progress.update(done, metrics["loss"], metrics["tokens_per_sec"])
        if done % t.eval_every == 0 or done == t.num_steps:
            losses = evaluate(p_eval, rstate.params, splits, config)
            best_val = min(best_val, losses["val"])
            last = {"eval/train_loss": losses["train"], "eval/val_loss": losses["val"],
                    "eval/val_perplexity": math.exp(losses["val"]),
                    "eval/val_bpc": train.bits_per_char(losses["val"], tokens_per_char),
                    "eval/best_val_loss": best_val}
            writer.scalars(done, last)
            params = flax_unreplicate(rstate.params)
            text = sample_text(params, model_cfg, tok, t.sample_tokens, config.seed + done)
            writer.text(done, "sample", text)
            writer.flush()
            progress.message(
                f"step {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                f"val ppl {last['eval/val_perplexity']:.2f}, val bpc {last['eval/val_bpc']:.3f}")
    wall = time.time() - t_start
    final = {**last, "steps": t.num_steps, "wall_time_s": wall}
    writer.hparams(reporting.flat_hparams(config),
                   {k: v for k, v in final.items() if k.startswith("eval/")}, t.num_steps)
    writer.close()
    if jax.process_index() == 0:
        reporting.write_json(os.path.join(workdir, "summary.json"), final)
    final["params"] = flax_unreplicate(rstate.params)
    final["model_config"], final["tokenizer"] = model_cfg, tok
    return final


def flax_replicate(tree):
    from flax.jax_utils import replicate
    return replicate(tree)


def flax_unreplicate(tree):
    from flax.jax_utils import unreplicate
    return unreplicate(tree)
