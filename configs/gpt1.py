"""GPT-1 as published (Radford et al. 2018, "Improving Language Understanding
by Generative Pre-Training"): 12 post-norm blocks, 768 wide, 12 heads, 512
context, GELU, learned positions, BPE vocabulary of ~40k, dropout 0.1, Adam
warmed up linearly over 2,000 steps to 2.5e-4 then cosine-annealed to 0,
batches of 64 sequences of 512 tokens. About 117M parameters.

Differences from the paper, on purpose: the BPE here is byte-level (GPT-2's
variant, no unknown tokens) rather than GPT-1's character-level BPE over
spaCy-split words, and the decoupled weight decay is AdamW's rather than the
paper's "modified L2" (both 0.01, neither on biases or gains).

It is GPU-sized. GPT-1 trained on BooksCorpus (~800M words); point
`--config.data.path` at a large corpus. Tiny Shakespeare is far too small
for it: BPE there runs out of frequent pairs at about 12k tokens, so add
`--config.data.vocab_size=8192` (expect heavy overfitting). To see it start
on a CPU, shrink it:

    python -m smallgpt_jax.main --config=configs/gpt1.py --workdir=/tmp/gpt1 \
        --config.data.vocab_size=512 --config.model.num_layers=2 \
        --config.model.embed_dim=64 --config.model.num_heads=4 \
        --config.model.block_size=64 --config.train.batch_size=8 \
        --config.train.num_steps=20 --config.train.warmup_steps=5
"""

from smallgpt_jax.config import base_config


def get_config():
    config = base_config()
    config.name = "gpt1"
    config.data.tokenizer = "bpe"
    config.data.vocab_size = 40_478  # GPT-1's size: 40,000 merges + 478 base symbols.

    m = config.model
    m.num_layers = 12
    m.num_heads = 12
    m.embed_dim = 768
    m.mlp_ratio = 4  # 3072-wide feed-forward layers.
    m.block_size = 512
    m.dropout = 0.1  # Residual, embedding and attention dropout.
    m.pos_encoding = "learned"
    m.norm = "layernorm"
    m.norm_position = "post"  # x = LayerNorm(x + sublayer(x)), no final norm.
    m.activation = "gelu"
    m.use_bias = True
    m.tie_embeddings = True  # The output layer reuses the token embedding.
    m.scan_layers = True  # Compile one block, not twelve.

    t = config.train
    t.batch_size = 64
    t.learning_rate = 2.5e-4
    t.min_learning_rate = 0.0  # Cosine annealing all the way to zero.
    t.warmup_steps = 2000
    t.num_steps = 100_000  # GPT-1 ran 100 epochs of BooksCorpus; set to your corpus.
    t.beta1, t.beta2 = 0.9, 0.999  # Adam's defaults, as in the paper's code.
    t.weight_decay = 0.01
    t.grad_clip = 1.0
    t.eval_every = 1000
    t.eval_steps = 50
    t.checkpoint_every = 2000
    return config
