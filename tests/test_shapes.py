"""The shape tool: every activation and parameter shape of a real forward pass."""

import jax
import jax.numpy as jnp

from conftest import run_cli, tiny_config
from smallgpt_jax.cli.shapes import forward_shapes, markdown, vocab_size
from smallgpt_jax.model import GPT, count_params, model_config


def test_shapes_match_the_model_and_its_parameters():
    c = tiny_config(**{"model.num_layers": 3, "model.num_heads": 4})
    cfg = model_config(c.model, 13)
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
    base = model_config(tiny_config().model, 13)
    other = model_config(tiny_config(**{"model.scan_layers": True,
                                        "model.attention": "fused"}).model, 13)
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


def test_gpt2_configs_have_gpt2s_parameter_counts():
    """configs/gpt2_*.py: 124M, 355M, 774M, 1558M with GPT-2's 50,257 tokens
    (the counts usually quoted), and the paper's 117M, 345M, 762M, 1542M with
    GPT-1's 40,478-token embedding, which is how its table counted them."""
    import os
    from conftest import ROOT
    from smallgpt_jax.cli.config_files import load_config
    want = {"small": (124_439_808, 117e6), "medium": (354_823_168, 345e6),
            "large": (774_030_080, 762e6), "xl": (1_557_611_200, 1542e6)}
    for size, (quoted, paper) in want.items():
        c = load_config(os.path.join(ROOT, "configs", f"gpt2_{size}.py"))
        assert (c.model.block_size, c.model.norm_position, c.model.tie_embeddings,
                c.model.pos_encoding, c.data.vocab_size) == (1024, "pre", True, "learned", 50_304)
        counts = {}
        for V in (50_304, 50_257, 40_478):
            m = model_config(c.model, V)
            tokens = jax.ShapeDtypeStruct((1, m.block_size), jnp.int32)
            counts[V] = count_params(jax.eval_shape(
                lambda t: GPT(m).init(jax.random.key(0), t), tokens)["params"])
        assert counts[50_257] == quoted, size
        assert counts[50_304] == quoted + 47 * c.model.embed_dim  # 47 more token rows.
        assert round(counts[40_478] / 1e6) == paper / 1e6, (size, counts[40_478])
