"""The shape tool: every activation and parameter shape of a real forward pass."""

import jax
import jax.numpy as jnp

from conftest import run_cli, tiny_config
from smallgpt_jax.cli.shapes import forward_shapes, markdown, vocab_size
from smallgpt_jax.model import GPT, count_params, model_config


def test_shapes_match_the_model_and_its_parameters():
    c = tiny_config(**{"model.num_layers": 3, "model.num_heads": 4})
    cfg = model_config(c, 13)
    outputs, params = forward_shapes(cfg, batch_size=5)
    out = dict(outputs)
    B, T, D, H = 5, cfg.block_size, cfg.embed_dim, cfg.num_heads
    assert outputs[0] == ("token_embed", (B, T, D))
    assert outputs[-1] == ("GPT (logits)", (B, T, 13))
    for i in range(3):
        assert out[f"block_{i}/attn/qkv"] == (B, T, 3, H, D // H)
        assert out[f"block_{i}/attn/attention"] == (B, H, T, T)
        assert out[f"block_{i}/mlp/fc"] == (B, T, 4 * D)
    names = [n for n, _ in outputs]  # Computed in order: attention before the MLP.
    assert names.index("block_1/attn") < names.index("block_1/mlp") < names.index("block_2/norm1")
    real = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    assert sum(int(jnp.prod(jnp.array(s))) for _, s in params) == count_params(real)
    table = markdown(outputs, params, {"B": B, "T": T, "D": D, "H": H, "K": D // H,
                                       "V": 13, "F": 4 * D, "L": 3})
    assert f"| total | | {count_params(real):,} |" in table


def test_scanned_and_fused_models_have_the_same_table():
    base = model_config(tiny_config(), 13)
    other = model_config(tiny_config(**{"model.scan_layers": True,
                                        "model.attention": "fused"}), 13)
    assert forward_shapes(base, 2) == forward_shapes(other, 2)


def test_vocab_size_reads_only_the_data_section():
    data = lambda **o: tiny_config(**{f"data.{k}": v for k, v in o.items()}).data
    assert vocab_size(data(tokenizer="char"), 65) == 65  # Known only from the text.
    assert vocab_size(data(tokenizer="byte"), 65) == 256
    assert vocab_size(data(tokenizer="bpe", vocab_size=300), 65) == 300


def test_shapes_cli_prints_the_tables():
    proc = run_cli(["--config=configs/char_cpu.py", "--config.model.num_layers=2",
                    "--vocab_size=50"], module="smallgpt_jax.shapes", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| `GPT (logits)` | BTV | [16, 64, 50] |" in proc.stdout
    assert "| `block_1` | | same as `block_0` |" in proc.stdout
