"""The base configuration every experiment builds on, and its validation.

Every field a user can set lives here, with a comment. Experiment files in
`configs/` call `base_config()` and change only what differs, e.g.

    from smallgpt_jax.config import base_config
    def get_config():
        config = base_config()
        config.model.num_layers = 12
        return config

Fields are overridden on the command line with `--config.model.num_layers=4`.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import ml_collections

from smallgpt_jax.system import footprint
from smallgpt_jax.system.errors import UserError


def base_config() -> ml_collections.ConfigDict:
    """Returns the default configuration (a small CPU-sized character GPT)."""
    c = ml_collections.ConfigDict()
    # The run's name, kept in config.json and the checkpoints' config (not a
    # hyperparameter). The default workdir is runs/<config file name>, not this.
    c.name = "default"
    c.seed = 0  # One seed drives init, batch sampling and dropout (0 to 2**32 - 1).
    # How the train step is spread over devices: 'shard_map' (jit over a device
    # mesh, batch sharded on 'data': the same losses and gradients as 'pmap',
    # and fewer programs to compile), 'pmap' (one replica per local device),
    # or 'fsdp' (as shard_map, and parameters and optimizer state split over
    # the devices too: sharding.py).
    c.parallel = "shard_map"
    # Persistent XLA compilation cache, so restarts skip compiling: 'auto' (the
    # user cache, ~/.cache/smallgpt_jax/jax_compilation_cache), a path, or '' (off).
    c.compilation_cache = "auto"

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "tinyshakespeare"  # Named corpus, used when `path` is empty.
    c.data.path = ""  # A UTF-8 .txt file, a directory of them, or a glob.
    c.data.tokenizer = "char"  # 'char', 'byte', 'bpe' or 'word'.
    c.data.vocab_size = 512  # Only for 'bpe' and 'word': size of the learned vocabulary.
    # Only for 'bpe': join documents (the files of `path`) with one special
    # <|endoftext|> token instead of a blank line.
    c.data.end_of_text = False
    c.data.train_fraction = 0.9  # First 90% trains, the last 10% validates.
    # Where prepared token stores go (see store/store.py); '' is the user cache,
    # $XDG_CACHE_HOME or ~/.cache, under smallgpt_jax/stores.
    c.data.cache_dir = ""
    # Only for 'bpe' and 'word': learn the vocabulary from at most this many
    # characters of the training split (evenly spaced pieces of it, the same
    # every time); 0 = all of it. Bounds preparation time on huge corpora.
    c.data.fit_max_chars = 200_000_000

    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 4  # Transformer blocks.
    c.model.num_heads = 4  # Attention heads per block.
    c.model.embed_dim = 128  # Width D of the residual stream.
    c.model.mlp_ratio = 4  # Feed-forward hidden width = mlp_ratio * embed_dim.
    c.model.block_size = 64  # Context length T (the attention window).
    c.model.dropout = 0.0  # Dropout on embeddings, attention and residuals.
    c.model.pos_encoding = "learned"  # 'learned', 'sinusoidal', 'rope', 'none'.
    c.model.norm = "layernorm"  # 'layernorm' or 'rmsnorm'.
    c.model.norm_position = "pre"  # 'pre' (GPT-2) or 'post' (GPT-1).
    c.model.activation = "gelu"  # 'gelu', 'relu', 'relu2' (ReLU squared) or 'swiglu'.
    c.model.use_bias = True  # Biases in dense layers and norms.
    c.model.tie_embeddings = True  # Output head reuses the token embedding.
    # 'explicit' (written out), 'fused' (jax.nn.dot_product_attention; dropout 0
    # only), 'flash' (a Pallas kernel: the [T, T] arrays stay on chip, dropout
    # from a hash of positions, not threefry; TPU, or CPU in slow interpret
    # mode) or 'auto': 'flash' on a TPU where the kernel takes the shapes (the
    # same losses, benchmarks/README.md), else 'explicit'.
    c.model.attention = "auto"
    # The generator of the dropout masks, by JAX's name: 'threefry2x32' (JAX's
    # default; the same masks on every backend) or 'rbg' / 'unsafe_rbg' (XLA's
    # generator: a TPU compile takes half the time, but the bits are stored,
    # more bytes per step, and differ across backends; benchmarks/README.md);
    # or 'hash' (residual and embedding masks from a counter hash, the flash
    # kernel's: a TPU compile takes a third of the time, the same masks on
    # every backend but not Threefry's). 'auto': 'hash' on TPU, else Threefry.
    c.model.dropout_rng = "auto"
    # Compute dtype; params stay float32. 'auto': bfloat16 on GPU/TPU, float32
    # on CPU (a run records the one it used in config.json and its log).
    c.model.dtype = "auto"
    c.model.scan_layers = False  # nn.scan over blocks: compile once, not L times.
    # Activation memory for compute: the backward pass recomputes each block
    # ('block'), its attention scores ('attention', see model.REMAT_POLICIES)
    # or its feed-forward network ('mlp') instead of keeping them; 'none'
    # keeps everything. The same losses. 'auto': 'block' on a TPU with
    # scan_layers (fewer bytes and temporaries there, benchmarks/README.md),
    # else 'none'.
    c.model.remat = "auto"
    # Hand-written backward passes for dense layers and LayerNorm (kernels.py;
    # same results): 'auto' uses them on CPU, where they measure faster, and
    # lets jax.grad differentiate the plain formulas on GPU/TPU; 'on', 'off'.
    c.model.fast_backward = "auto"
    # The GPT-2 speedrun's switches (docs/15-modern-recipe.md), all off by default.
    c.model.qk_norm = False  # RMSNorm (no scale) of each head's queries and keys.
    # Zero-initialised output projections of attention and MLP (each block
    # starts as the identity) and output head (when not tied): loss starts at ln V.
    c.model.zero_init = False
    c.model.logit_softcap = 0.0  # cap * tanh(logits / cap); 0: off.
    c.model.value_embeddings = False  # Each block's values add a learned row per token.
    c.model.x0_shortcut = False  # Each block's input mixes in the embeddings (learned).
    c.model.smear = False  # Each embedding mixes in the previous token's (gated).

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # Global batch (sequences per step, all devices).
    c.train.num_steps = 2000  # Optimizer steps.
    c.train.learning_rate = 1e-3  # Peak learning rate after warmup.
    c.train.min_learning_rate = 1e-4  # Cosine decays to this at num_steps.
    c.train.warmup_steps = 100  # Linear warmup from 0 to learning_rate.
    c.train.beta1 = 0.9  # AdamW first-moment decay.
    c.train.beta2 = 0.99  # AdamW second-moment decay.
    c.train.weight_decay = 0.1  # Decoupled decay, by name: train.decay_mask.
    # The token (and value) embeddings' AdamW peak rate, in learning_rates: a
    # row is updated only by the tokens it saw, so it can take larger steps.
    c.train.embedding_learning_rate_scale = 1.0
    c.train.grad_clip = 1.0  # Clip gradients to this global norm (0: off).
    # 'adamw' (every parameter) or 'muon': Muon for the blocks' matrices, AdamW
    # (the fields above) for embeddings, head, norms, biases (smallgpt_jax/muon.py).
    c.train.optimizer = "adamw"
    c.train.muon_learning_rate = 0.02  # Muon's peak rate; the same warmup and decay.
    c.train.muon_momentum = 0.95  # Muon's Nesterov momentum after its warmup,
    c.train.muon_momentum_start = 0.85  # rising linearly from this
    c.train.muon_momentum_warmup = 300  # over this many steps.
    # Newton-Schulz steps per update, and their coefficients: 'speedrun' (its
    # quintic at every step) or 'minimax' (per-step, 3-5 steps; muon.py).
    c.train.muon_ns_steps = 5
    c.train.muon_ns_coefficients = "speedrun"
    c.train.grad_accum_steps = 1  # Micro-batches summed before one update.
    c.train.eval_every = 250  # Evaluate (and write a sample) every N steps.
    c.train.eval_steps = 20  # Batches averaged per split at each evaluation.
    c.train.log_every = 10  # Write train scalars every N steps.
    c.train.sample_tokens = 200  # Length of the text sample at each eval / end (<= 100,000).
    # Write the text sample and the attention image every N steps, at an
    # evaluation (0: at every evaluation); always at the end.
    c.train.sample_every = 0
    c.train.checkpoint_every = 500  # Save a checkpoint every N steps.
    c.train.keep_checkpoints = 2  # Newest checkpoints kept (plus the best).
    # -1: resume from the newest; N: go back to step N, once (newer ones deleted;
    # the same command again continues from its own newest, see checkpoint/writer.py).
    c.train.resume_step = -1
    # Resume even though the corpus or its split changed since the checkpoint
    # (refused otherwise); the best validation loss so far is then forgotten.
    c.train.allow_data_change = False
    # 'A:B': write a jax.profiler trace of steps A to B into the workdir, for
    # TensorBoard's profile tab (see training/profiling.py); 'A': one step; '': off.
    c.train.profile_steps = ""
    return c


TOKENIZERS = ("char", "byte", "bpe", "word")  # tokenizers/tokenizer.py builds and loads each.
_CHOICES = {
    "parallel": ("pmap", "shard_map", "fsdp"),
    "data.tokenizer": TOKENIZERS,
    "model.pos_encoding": ("learned", "sinusoidal", "rope", "none"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.norm_position": ("pre", "post"),
    "model.activation": ("gelu", "relu", "relu2", "swiglu"),
    "model.attention": ("explicit", "fused", "flash", "auto"),
    "model.dropout_rng": ("threefry2x32", "rbg", "unsafe_rbg", "hash", "auto"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.fast_backward": ("auto", "on", "off"),
    "model.remat": ("none", "block", "attention", "mlp", "auto"),
    "train.optimizer": ("adamw", "muon"),
    "train.muon_ns_coefficients": ("speedrun", "minimax"),
}
_POSITIVE = (
    "model.num_layers", "model.num_heads", "model.embed_dim", "model.mlp_ratio",
    "model.block_size", "train.batch_size", "train.num_steps", "train.eval_every",
    "train.eval_steps", "train.log_every", "train.grad_accum_steps",
    "train.checkpoint_every", "train.keep_checkpoints", "data.vocab_size",
    "train.muon_ns_steps",
)
_NON_NEGATIVE = (
    "train.learning_rate", "train.min_learning_rate", "train.warmup_steps",
    "train.weight_decay", "train.grad_clip", "train.sample_tokens", "data.fit_max_chars",
    "train.sample_every", "train.muon_learning_rate", "train.muon_momentum_warmup",
    "model.logit_softcap", "train.embedding_learning_rate_scale",
)
# Upper limits of integer fields: (fields, limit, why). Steps are counted in
# int32 (TrainState.step); past 2**31 - 1 a schedule's arithmetic fails or
# the count wraps. Sizes that only memory bounds (batch, model, evaluation)
# are system/footprint.py's.
_INT32 = 2**31 - 1
_AT_MOST = (
    (("train.num_steps", "train.warmup_steps", "train.eval_every", "train.log_every",
      "train.checkpoint_every", "train.sample_every", "train.resume_step"), _INT32,
     "the step counter is a 32-bit integer"),
    (("data.vocab_size",), _INT32, "token ids are 32-bit integers"),
    (("train.sample_tokens",), 100_000,
     "the sample of every evaluation; python -m smallgpt_jax.sample writes longer texts"),
)
_SEED_RANGE = (0, 2**32 - 1)  # jax.random.key keeps 32 bits: 2**32 would repeat seed 0.


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict (e.g. `config.to_dict()`) as {'model.num_layers': 4, ...}:
    dotted key -> leaf value, in the dict's order."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def did_you_mean(config: ml_collections.ConfigDict, key: str) -> str:
    """' (did you mean train.learning_rate?)' for a dotted key the config lacks."""
    close = difflib.get_close_matches(key, list(flatten(config.to_dict())), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def parse_steps(spec: str) -> tuple[int, int] | None:
    """train.profile_steps: 'A:B' -> (A, B), the first and last step; 'A' ->
    (A, A); '' -> None."""
    if not spec:
        return None
    first, sep, last = str(spec).partition(":")
    try:
        window = (int(first), int(last)) if sep else (int(first), int(first))
    except ValueError:
        window = (0, -1)
    if not 1 <= window[0] <= window[1]:
        raise UserError(
            f"config.train.profile_steps={spec!r} is not a step window; write 'A:B' with "
            "1 <= A <= B (e.g. '100:105' traces steps 100 to 105), or one step 'A'.")
    return window


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _check_fields(config: ml_collections.ConfigDict) -> None:
    """Every field of base_config() is there, and no number is None."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"the config is a {type(config).__name__}, not an ml_collections "
                        "ConfigDict; make get_config() start from "
                        "smallgpt_jax.config.base_config() and return it.")
    ours, base = flatten(config.to_dict()), flatten(base_config().to_dict())
    missing = [f for f in base if f not in ours]
    if missing:
        raise UserError(f"the config has no field {', '.join(missing[:3])}; every field of "
                        "base_config() must stay (set a value instead of deleting it).")
    for field, default in base.items():
        if ours[field] is None and isinstance(default, (int, float)):
            raise UserError(f"config.{field}=None must be a number (the default is "
                            f"{default!r}).")


def validate(config: ml_collections.ConfigDict, machine: bool = True) -> None:
    """Checks the config up front; raises UserError naming the bad field.
    `machine`: also that a run fits this machine's memory (system/footprint.py);
    tools that only trace shapes or prepare data pass False."""
    _check_fields(config)
    for field, choices in _CHOICES.items():
        value = _get(config, field)
        if value not in choices:
            raise UserError(
                f"config.{field}={value!r} is not one of {', '.join(choices)}; "
                f"set --config.{field}=<one of them>.")
    for field in _POSITIVE:
        value = _get(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"config.{field}={value!r} must be a positive integer.")
    for field in _NON_NEGATIVE:
        value = _get(config, field)
        if not 0 <= value < math.inf:  # NaN and inf too: training would only diverge.
            raise UserError(f"config.{field}={value!r} must not be negative, nor NaN or "
                            "infinite.")
    seed = config.seed
    if not isinstance(seed, int) or not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        raise UserError(f"config.seed={seed!r} must be an integer from {_SEED_RANGE[0]} to "
                        f"{_SEED_RANGE[1]:,} (JAX keeps 32 bits of a seed).")
    for fields, limit, why in _AT_MOST:
        for field in fields:
            value = _get(config, field)
            if value > limit:
                raise UserError(f"config.{field}={value} is too large: at most {limit:,} "
                                f"({why}).")
    m, t = config.model, config.train
    if t.resume_step < -1:
        raise UserError(f"config.train.resume_step={t.resume_step} must be -1 (the newest "
                        "checkpoint) or a step number.")
    parse_steps(t.get("profile_steps", ""))
    if m.embed_dim % m.num_heads:
        raise UserError(
            f"config.model.embed_dim={m.embed_dim} is not divisible by "
            f"config.model.num_heads={m.num_heads}; pick sizes where it is.")
    if m.pos_encoding in ("sinusoidal", "rope") and (m.embed_dim // m.num_heads) % 2:
        if m.pos_encoding == "rope" or m.embed_dim % 2:
            raise UserError(
                f"config.model.pos_encoding={m.pos_encoding!r} needs an even "
                f"{'head size' if m.pos_encoding == 'rope' else 'embed_dim'}.")
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"config.model.dropout={m.dropout} must be in [0, 1).")
    if m.attention == "fused" and m.dropout > 0:
        # jax.nn.dot_product_attention has no dropout: it would train another model.
        raise UserError(f"config.model.attention='fused' has no attention dropout; use "
                        f"config.model.dropout=0 with it, or attention='explicit' "
                        f"(dropout={m.dropout}).")
    if m.attention == "flash":
        # Imported here: it loads JAX and Pallas, which a command's --help and
        # a config that does not ask for the kernel do not need.
        from smallgpt_jax import flash_attention
        why = flash_attention.check(m.block_size)
        if why is not None:
            raise UserError(f"config.model.attention='flash' cannot take "
                            f"config.model.block_size={m.block_size}: it needs {why}.")
    if config.data.end_of_text and config.data.tokenizer != "bpe":
        raise UserError(
            "config.data.end_of_text=True needs config.data.tokenizer='bpe': the "
            f"{config.data.tokenizer!r} vocabulary has no room for special tokens.")
    if not 0.0 < config.data.train_fraction < 1.0:
        raise UserError(
            f"config.data.train_fraction={config.data.train_fraction} must be "
            "strictly between 0 and 1.")
    if t.min_learning_rate > t.learning_rate:
        raise UserError(
            f"config.train.min_learning_rate={t.min_learning_rate} is larger than "
            f"config.train.learning_rate={t.learning_rate}.")
    for name in ("beta1", "beta2", "muon_momentum", "muon_momentum_start"):
        value = t[name]
        if not 0.0 <= value < 1.0:
            raise UserError(f"config.train.{name}={value} must be in [0, 1).")
    if t.muon_ns_coefficients == "minimax":
        from smallgpt_jax.muon import MINIMAX  # Here: only this check needs JAX.
        if t.muon_ns_steps not in MINIMAX:
            *some, last = MINIMAX
            raise UserError(
                f"config.train.muon_ns_steps={t.muon_ns_steps} has no 'minimax' coefficients:"
                f" use {', '.join(map(str, some))} or {last} steps, or "
                "config.train.muon_ns_coefficients='speedrun'.")
    if t.batch_size % t.grad_accum_steps:
        raise UserError(
            f"config.train.batch_size={t.batch_size} is not divisible by "
            f"config.train.grad_accum_steps={t.grad_accum_steps}.")
    if machine:
        footprint.check(config.model, config.train, config.data)
