"""Sweep the model's design switches one at a time on Tiny Shakespeare (CPU scale).

Every trial is `configs/char_cpu.py` with the overrides of one dict below; the
first is the unchanged baseline (learned positions, pre-LayerNorm, GELU,
biases, tied embeddings, character tokens). Compare trials by validation
bits per character (`eval/val_bpc` in each run's summary.json), which puts
char, byte and BPE runs on the same scale.

Run one trial by hand (`--dry-run` prints every trial's command), e.g.

    python -m smallgpt_jax.main --config=configs/char_cpu.py \
        --workdir=runs/variants_sweep/pos_encoding=rope --config.train.num_steps=600 \
        --config.train.eval_every=300 --config.train.checkpoint_every=600 \
        --config.model.pos_encoding=rope

benchmarks/README.md ("Model variants") lists the results and the command.
"""

CONFIG = "configs/char_cpu.py"
# A short schedule for every trial: 14 trials of the full 2,200 steps would take too long.
FIXED = {"train.num_steps": 600, "train.eval_every": 300, "train.checkpoint_every": 600}


def get_sweep():
    return [
        {},  # Baseline: char_cpu.py as it is.
        # Positional encoding (baseline: learned table).
        {"model.pos_encoding": "sinusoidal"},
        {"model.pos_encoding": "rope"},
        {"model.pos_encoding": "none"},
        # Normalisation (baseline: pre-LayerNorm).
        {"model.norm": "rmsnorm"},
        {"model.norm_position": "post"},
        # Feed-forward nonlinearity (baseline: GELU).
        {"model.activation": "relu"},
        {"model.activation": "swiglu"},
        # Parameters (baseline: biases on, tied input/output embedding).
        {"model.use_bias": False},
        {"model.tie_embeddings": False},
        # Everything "modern" at once: what configs/modern_char.py sets.
        {"model.pos_encoding": "rope", "model.norm": "rmsnorm",
         "model.activation": "swiglu", "model.use_bias": False},
        # The fused kernel computes the same function (a sanity row).
        {"model.attention": "fused"},
        # Tokenizers, compared in bits per character.
        {"data.tokenizer": "byte"},
        {"data.tokenizer": "bpe", "data.vocab_size": 512},
    ]
