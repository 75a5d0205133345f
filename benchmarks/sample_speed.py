"""Generation speed with and without the key/value cache.

    python -m benchmarks.sample_speed --config=configs/shakespeare_char.py

Random-init parameters of the config's model size (speed does not depend on
what the model learned), a one-token prompt, and two lengths: filling the
whole context window (block_size - 1 new tokens) and 500 new tokens (which
slides the window when block_size < 500). Three ways:
  - no cache: re-run the whole window for every token;
  - KV cache, exact slide (the default): past the window, every token
    re-runs the whole slid window, as a no-cache step does;
  - KV cache, slide_step=block_size/2 (approximate): one re-fill per
    block_size/2 tokens past the window.
Compilation is done once up front (and reported); each timing is the best of
--repeats runs, since a shared machine makes single runs noisy.
"""

from __future__ import annotations

import time

from absl import flags

from smallgpt_jax.cli import app as cli
from smallgpt_jax.cli.config_files import define_config_flag
from smallgpt_jax.system import runtime

_CONFIG = define_config_flag()
_VOCAB = flags.DEFINE_integer("vocab_size", 65, "Vocabulary size (65: Tiny Shakespeare characters).")
_BATCH = flags.DEFINE_integer("num_samples", 1, "Sequences generated together.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per case; the best is reported.")
_LONG = flags.DEFINE_integer("long_tokens", 500, "Length of the second case.")


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before NumPy or JAX start threads.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from smallgpt_jax import generation
    from smallgpt_jax.model import GPT, count_params, model_config

    config = _CONFIG.value
    cfg = model_config(config.model, _VOCAB.value)
    W, B = cfg.block_size, _BATCH.value
    params = jax.jit(lambda: GPT(cfg).init(
        jax.random.key(0), jnp.zeros((1, W), jnp.int32))["params"])()
    prompt = np.zeros(1, np.int32)
    ways = {"no cache": dict(use_cache="never"),
            "KV cache, exact slide": dict(use_cache="always")}
    if _LONG.value > W:
        ways[f"KV cache, slide_step={W // 2}"] = dict(use_cache="always", slide_step=W // 2)

    def run(n, **kw):
        start = time.perf_counter()
        generation.generate(params, cfg, prompt, n, jax.random.key(1), num_samples=B,
                            temperature=0.8, **kw)  # Returns numpy: the work is done.
        return time.perf_counter() - start

    print(f"{config.name}: {count_params(params) / 1e6:.2f}M parameters, "
          f"{cfg.num_layers} layers, width {cfg.embed_dim}, block_size {W}, batch {B}, "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s))")
    for name, kw in ways.items():  # Compile everything, outside the timings.
        print(f"  compile + 3 tokens, {name}: {run(3, **kw):.1f}s", flush=True)
    print("| new tokens | way | tokens/s | ms/token | vs no cache |")
    print("|---|---|---:|---:|---:|")
    for n in (W - 1, _LONG.value):
        base = None
        for name, kw in ways.items():
            if n <= W and "slide_step" in kw:
                continue  # Identical to the exact slide when nothing slides.
            seconds = min(run(n, **kw) for _ in range(_REPEATS.value))
            base = base or seconds
            print(f"| {n} | {name} | {B * n / seconds:,.0f} | {1000 * seconds / n:.2f} | "
                  f"{base / seconds:.1f}x |", flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    cli.run_app(main)
