"""Sweep the model's design switches one at a time on Tiny Shakespeare (CPU scale).

Every trial is `configs/char_cpu.py` with the overrides of one dict below; the
first is the unchanged baseline (learned positions, pre-LayerNorm, GELU,
biases, tied embeddings, character tokens). Compare trials by validation
bits per character (`eval/val_bpc` in each run's summary.json), which puts
char, byte and BPE runs on the same scale.

Run one trial by hand, e.g.

    python -m smallgpt_jax.main --config=configs/char_cpu.py \
        --workdir=runs/variants/rope --config.model.pos_encoding=rope

The README's "Model variants" section lists the results and the command (600 steps).
"""

CONFIG = "configs/char_cpu.py"


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
