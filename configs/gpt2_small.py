"""GPT-2 small's shape (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"): 12 pre-norm blocks, 768 wide, 12 heads, context 1,024,
GELU, learned positions, LayerNorm, biases, the output head tied to the token
embedding. With a vocabulary of 50,304 it has 124,475,904 parameters.

The vocabulary is this project's byte-level BPE learned on your corpus at
50,304 tokens (GPT-2's 50,257 padded to a multiple of 64, as nanoGPT does,
for faster matmuls), not OpenAI's tokenizer files: the shapes are GPT-2's,
the token ids are not. Bigger shapes: configs/gpt2_medium.py,
configs/gpt2_large.py, configs/gpt2_xl.py (README "Bigger models" says which
parallel mode and remat each needs on a TPU v5e-8, before you pay for one).

Parameter counts: `python -m smallgpt_jax.shapes --config=configs/gpt2_small.py`
prints 124,475,904; with GPT-2's own 50,257 tokens (add
`--config.data.vocab_size=50257`) it is 124,439,808, the "124M" usually quoted.
The paper's table says 117M (and 345M, 762M, 1542M for the others): those
are the same shapes counted with a 40,478-token embedding, GPT-1's
vocabulary (116.9M, 344.8M, 761.5M, 1,542.0M), which the paper did not update.

The training settings follow nanoGPT's GPT-2 reproduction (AdamW, peak
6e-4, beta2 0.95, weight decay 0.1, no dropout), with 64 sequences of 1,024
tokens per step in 8 accumulated micro-batches. It needs a large corpus:
`--config.data.path=...`. Tiny Shakespeare has too few repeated pairs for
50k BPE tokens (add `--config.data.vocab_size=8192` to try it there).
"""

from smallgpt_jax.config import base_config

# GPT-2's four shapes: blocks, width, heads.
SIZES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20),
         "xl": (48, 1600, 25)}


def get_config(size: str = "small"):
    """`size` names one of SIZES (configs/gpt2_xl.py passes 'xl')."""
    config = base_config()
    config.name = f"gpt2_{size}"
    config.data.tokenizer = "bpe"
    config.data.vocab_size = 50_304
    config.data.end_of_text = True  # <|endoftext|> between documents, as GPT-2.

    m = config.model
    m.num_layers, m.embed_dim, m.num_heads = SIZES[size]
    m.mlp_ratio = 4
    m.block_size = 1024
    m.dropout = 0.0
    m.pos_encoding = "learned"
    m.norm = "layernorm"
    m.norm_position = "pre"
    m.activation = "gelu"
    m.use_bias = True
    m.tie_embeddings = True
    m.scan_layers = True  # Compile one block, not twelve.

    t = config.train
    t.batch_size = 64  # Sequences per step (65,536 tokens), all devices together.
    t.grad_accum_steps = 8  # 8 sequences per micro-batch, over all devices.
    t.learning_rate, t.min_learning_rate = 6e-4, 6e-5
    t.warmup_steps = 2000
    t.num_steps = 100_000  # Set to your corpus.
    t.beta1, t.beta2 = 0.9, 0.95
    t.weight_decay = 0.1
    t.grad_clip = 1.0
    t.eval_every = 1000
    t.eval_steps = 20
    t.checkpoint_every = 2000
    return config
