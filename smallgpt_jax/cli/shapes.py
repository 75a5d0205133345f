"""The shape of every tensor in one forward pass, for a config (no compute).

    python -m smallgpt_jax.shapes --config=configs/char_cpu.py [--vocab_size=65]
        [--batch_size=N] [--all_layers] [--config.model.num_heads=8 ...]

Traces the model with `jax.eval_shape` (shapes only, nothing is computed),
recording each module's output as it is computed (a flax method
interceptor) and the attention weights the attention layers `sow`. Prints two Markdown tables:
the activations in the order they are computed, and the parameters.
The docs' shape tables are this command's output for configs/char_cpu.py.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from smallgpt_jax.cli import app as cli
from smallgpt_jax.cli.config_files import define_config_flag
from smallgpt_jax.config import validate
from smallgpt_jax.model import GPT, ModelConfig, model_config
from smallgpt_jax.system import runtime
from smallgpt_jax.tokenizers.tokenizer import LEARNED, ByteTokenizer

# The shape letters (see model.py) of each module's output, by module name.
_LETTERS = {"token_embed": "BTD", "norm1": "BTD", "norm2": "BTD", "norm_f": "BTD",
            "qkv": "BT3HK", "attention": "BHTS", "attn": "BTD", "fc": "BTF",
            "mlp": "BTD", "proj": "BTD", "head": "BTV", "": "BTV"}
_SKIP = ("Dropout",)  # Dropout keeps its input's shape.


def forward_shapes(cfg: ModelConfig, batch_size: int) -> tuple[list, list]:
    """([(module, output shape)] in the order outputs are computed,
    [(param, shape)]) for one forward pass on [batch_size, block_size] tokens."""
    m = cfg.to_dict()
    # Scanned blocks would show one layer only; the fused kernel sows nothing.
    m["scan_layers"], m["attention"] = False, "explicit"
    model = GPT(ml_collections.FrozenConfigDict(m))
    outputs = []

    def record(next_fn, args, kwargs, context):
        out = next_fn(*args, **kwargs)
        if context.method_name == "__call__" and hasattr(out, "shape"):
            name = "/".join(context.module.path) or "GPT (logits)"
            if not any(s in name for s in _SKIP):
                outputs.append((name, tuple(out.shape)))
        return out

    def run(tokens_BT):
        variables = model.init(jax.random.key(0), tokens_BT)
        outputs.clear()  # Keep the apply pass only.
        with nn.intercept_methods(record):
            _, state = model.apply(variables, tokens_BT, mutable=["intermediates"])
        return variables["params"], state["intermediates"]

    tokens = jax.ShapeDtypeStruct((batch_size, model.config.block_size), jnp.int32)
    params, sown = jax.eval_shape(run, tokens)
    # The attention weights are sown between the qkv and proj layers.
    for i in range(model.config.num_layers):
        att = sown[f"block_{i}"]["attn"]["attention"][0]
        at = [name for name, _ in outputs].index(f"block_{i}/attn/proj")
        outputs.insert(at, (f"block_{i}/attn/attention", tuple(att.shape)))
    param_rows = ["/".join(str(k.key) for k in p) for p, _ in
                  jax.tree_util.tree_flatten_with_path(params)[0]]
    shapes = [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)]
    return outputs, list(zip(param_rows, shapes))


def letters_for(name: str) -> str:
    """The shape letters of a module's output, from its (last) name."""
    last = name.split("/")[-1] if name != "GPT (logits)" else ""
    return _LETTERS.get(last, "BTD" if last.startswith("block_") else "")


def markdown(outputs: list, params: list, letter_values: dict[str, int],
             all_layers: bool = False) -> str:
    """The two tables as Markdown. Unless `all_layers`, blocks after the
    first are summarised in one row (they repeat block_0's shapes)."""
    L = letter_values["L"]
    later = lambda name: name.startswith("block_") and not name.startswith("block_0")
    rest = "`block_1`" if L == 2 else f"`block_1` ... `block_{L - 1}`"
    legend = ", ".join(f"{k}={v}" for k, v in letter_values.items())
    lines = [f"Sizes: {legend}.", "", "| module output | letters | shape |",
             "|---|---|---|"]
    for name, shape in outputs:
        letters = letters_for(name)
        if letters == "BTF" and shape[-1] == 2 * letter_values["F"]:
            letters = "BT(2F)"  # SwiGLU's gate and value, side by side.
        if all_layers or not later(name):
            lines.append(f"| `{name}` | {letters} | {list(shape)} |")
        elif name == f"block_{L - 1}":
            lines.append(f"| {rest} | | same as `block_0` |")
    total = sum(math.prod(s) for _, s in params)
    lines += ["", "| parameter | shape | count |", "|---|---|---|"]
    for name, shape in params:
        if all_layers or not later(name):
            lines.append(f"| `{name}` | {list(shape)} | {math.prod(shape):,} |")
    if L > 1 and not all_layers:
        per_block = sum(math.prod(s) for n, s in params if n.startswith("block_0/"))
        lines.append(f"| {rest} | same as `block_0` | "
                     f"{(L - 1) * per_block:,} |")
    lines.append(f"| total | | {total:,} |")
    return "\n".join(lines)


def _define_flags() -> None:
    """Defined only when run as a command, so importing this module (e.g. from
    tests, next to other command-line modules) defines no global flags."""
    define_config_flag()
    flags.DEFINE_integer("vocab_size", 65, "Vocabulary size V for a 'char' tokenizer "
                         "(65: the characters of Tiny Shakespeare).")
    flags.DEFINE_integer("batch_size", None, "Batch B (default config.train.batch_size).")
    flags.DEFINE_boolean("all_layers", False, "List every block, not only block_0.")


def vocab_size(data_config, char_vocab: int) -> int:
    """V of `config.data` without reading the corpus: the tokenizer's fixed
    size (byte), the configured size of a learned vocabulary (bpe, word),
    else `char_vocab` (a character vocabulary depends on the text)."""
    if data_config.tokenizer == "byte":
        return ByteTokenizer().vocab_size
    return data_config.vocab_size if data_config.tokenizer in LEARNED else char_vocab


def letter_values(m, batch_size: int) -> dict[str, int]:
    """The size each shape letter (see model.py) stands for, for ModelConfig `m`."""
    F = m.mlp_ratio * m.embed_dim
    return {"B": batch_size, "T": m.block_size, "S": m.block_size, "D": m.embed_dim,
            "H": m.num_heads, "K": m.embed_dim // m.num_heads, "V": m.vocab_size,
            # SwiGLU's hidden width is 2/3 of F (as in model.MLP).
            "F": int(2 * F / 3) if m.activation == "swiglu" else F, "L": m.num_layers}


def main(argv: list[str]) -> None:
    # Logs only: nothing here runs a step (shapes are traced, not computed),
    # and JAX is imported above, too late for the allocator setting anyway.
    runtime.quiet_library_logs()
    FLAGS = flags.FLAGS
    config = FLAGS.config
    with cli.user_errors():
        validate(config, machine=False)
        m = model_config(config.model, vocab_size(config.data, FLAGS.vocab_size))
        batch = FLAGS.batch_size or config.train.batch_size
        outputs, params = forward_shapes(m, batch)
    print(markdown(outputs, params, letter_values(m, batch), FLAGS.all_layers))


def run() -> None:
    _define_flags()
    flags.mark_flag_as_required("config")
    cli.run_app(main)


if __name__ == "__main__":
    run()
