r"""Command line: generate text from a trained run.

    python -m smallgpt_jax.sample --workdir=runs/char_cpu --prompt="ROMEO:" \
        --max_new_tokens=500 --num_samples=3 --temperature=0.8 --top_k=200 \
        --top_p=0.95 --seed=1

The config, tokenizer and parameters all come from the workdir's checkpoint.
The first sample streams to the terminal as it is generated (all samples are
generated together, as one batch); `--output=FILE` writes them to a file
instead. This file only parses and checks flags and calls library code
(`loading.load_checkpoint`, `text_generation.sample_texts`).
"""

from __future__ import annotations

import os
import sys
import time

from smallgpt_jax.cli import app as cli
from smallgpt_jax.system import console, runtime

if __name__ == "__main__":  # Before the slower imports below.
    cli.quiet_ctrl_c()

from absl import flags  # noqa: E402

from smallgpt_jax.cli.app import check_output, parse_step  # noqa: E402
from smallgpt_jax.system.errors import UserError  # noqa: E402
from smallgpt_jax.system.errors import write_atomic  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir (with checkpoints).")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint to load: 'latest', 'best' or a step.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue; empty starts from a newline.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 500, "Tokens to generate per sample.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples, generated as one batch.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.8, "Divides the logits: <1 is more conservative, 0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "Sample only among the k most likely tokens (default: no top-k filter).")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Nucleus sampling: the smallest set of tokens with probability >= p.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed gives the same text.")
_USE_CACHE = flags.DEFINE_enum(
    "use_cache", "auto", ["auto", "true", "false"],
    "Key/value cache: 'true' always; 'false' re-runs the whole context for each token; "
    "'auto' uses the cache when it saves more time than compiling its step costs.")
_SLIDE_STEP = flags.DEFINE_integer(
    "slide_step", 1, "Past the context window, slide it this many tokens at a time: 1 is "
    "exact; N>1 re-fills the cache once per N tokens (faster; the context is then "
    "between block_size-N+1 and block_size tokens).")
_OUTPUT = flags.DEFINE_string("output", None, "Write the samples to this file instead.")


def check_not_training_yet(workdir: str) -> None:
    """A UserError saying so when a run trains in `workdir` and has written no
    checkpoint yet: when its first is due, and how far it is."""
    # Imported here, as main's other imports: --help stays fast.
    from smallgpt_jax.checkpoint.workdir import CHECKPOINT_DIR, STEP, read_json
    from smallgpt_jax.system import lock
    try:
        if any(STEP.match(e) for e in os.listdir(os.path.join(workdir, CHECKPOINT_DIR))):
            return
    except OSError:
        pass
    who = lock.holder(workdir)
    if not who:
        return  # Not training: the reader's own message says what is missing.
    config, _ = read_json(os.path.join(workdir, "config.json"))
    progress, _ = read_json(os.path.join(workdir, "progress.json"))
    due = ""
    try:
        t = config["train"]
        # A checkpoint every checkpoint_every steps, and at the first evaluation (a new best).
        first = min(t["checkpoint_every"], t["eval_every"], t["num_steps"])
        now = (f"now at step {progress['step']} of {progress['total']}" if progress
               else "still setting up, before step 1")
        due = f"; its first checkpoint is due at step {first} ({now})"
    except (TypeError, KeyError):  # No config.json yet: the run is starting.
        pass
    raise UserError(f"{workdir} has no checkpoint yet: a run is training there ({who}){due}. "
                    "Sample once it is written.")


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    # Imported after flags: keeps --help fast.
    import jax
    from smallgpt_jax import sampling, text_generation
    workdir, prompt, n = _WORKDIR.value, _PROMPT.value, _MAX_NEW_TOKENS.value
    knobs = dict(num_samples=_NUM_SAMPLES.value, temperature=_TEMPERATURE.value,
                 top_k=_TOP_K.value, top_p=_TOP_P.value, slide_step=_SLIDE_STEP.value)
    with cli.user_errors():
        # Everything that can be checked without the checkpoint, first.
        step = parse_step(_STEP.value)
        sampling.check_options(max_new_tokens=n, **knobs)
        if not -2**63 <= _SEED.value < 2**63:  # What a JAX random key takes.
            raise UserError(f"--seed={_SEED.value} must be between -2**63 and 2**63-1.")
        if not os.path.exists(workdir):
            raise UserError(f"workdir {workdir} does not exist; pass a training run's --workdir.")
        if not os.path.isdir(workdir):
            raise UserError(f"workdir {workdir} is a file; pass a training run's --workdir.")
        if _OUTPUT.value:
            check_output(_OUTPUT.value)

        check_not_training_yet(workdir)
        from smallgpt_jax.checkpoint import reader as loading  # Lazy: loads orbax.
        # Programs compiled by earlier runs (of this command or of training)
        # load from the user's compilation cache instead of compiling again.
        runtime.enable_compilation_cache(runtime.default_compilation_cache_dir())
        # The tokenizer is the checkpoint's own (the workdir's tokenizer.json is only a copy).
        params, model_config, tokenizer, step = loading.load_checkpoint(workdir, step)
        # The checks that need the model (slide_step <= block_size, the prompt's
        # characters), before any output.
        sampling.check_options(max_new_tokens=n, block_size=model_config.block_size, **knobs)
        text_generation.encode_prompt(tokenizer, prompt)
        console.say(f"checkpoint step {step} of {workdir}")
        use_cache = {"auto": "auto", "true": "always", "false": "never"}[_USE_CACHE.value]

        def generate(stream=None) -> list[str]:
            try:
                return text_generation.sample_texts(params, model_config, tokenizer, prompt, n,
                                               _SEED.value, stream=stream, use_cache=use_cache,
                                               **knobs)
            except (MemoryError, jax.errors.JaxRuntimeError) as e:
                if not isinstance(e, MemoryError) and "RESOURCE_EXHAUSTED" not in str(e):
                    raise
                raise UserError(f"out of memory for {knobs['num_samples']:,} sample(s) of "
                                f"{n:,} tokens; ask for fewer (--num_samples, "
                                "--max_new_tokens).") from None
        header = lambda i: f"--- sample {i + 1} of {knobs['num_samples']} ---\n"
        start = time.time()
        if _OUTPUT.value:
            texts = generate()
            write_atomic(_OUTPUT.value,
                         "".join(header(i) + text + "\n" for i, text in enumerate(texts)))
        else:  # Sample 1 streams; the others are ready when it is (one batch).
            first = []  # When the first token arrived.

            def write(text: str) -> None:
                if text and not first:
                    first.append(time.time())
                sys.stdout.write(text)
                sys.stdout.flush()

            sys.stdout.write(header(0) + prompt)
            texts = generate(stream=write)
            write("\n" + "".join(header(i) + t + "\n" for i, t in enumerate(texts) if i))
        seconds = time.time() - start
        total = knobs["num_samples"] * n
        way = {"auto": "KV cache where it pays", "true": "KV cache",
               "false": "no cache"}[_USE_CACHE.value]
        console.say(f"{total} tokens in {seconds:.1f}s, compiling included ({total / seconds:.0f} "
                    f"tokens/s, {way})"
                    + (f"; first token after {first[0] - start:.1f}s" if not _OUTPUT.value and first
                       else f"; wrote {_OUTPUT.value}" if _OUTPUT.value else ""))


def run() -> None:
    flags.mark_flag_as_required("workdir")
    cli.run_app(main)


if __name__ == "__main__":
    run()
