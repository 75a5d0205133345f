"""PyTorch reference GPT for the performance benchmarks.

The model follows nanoGPT's architecture (written from scratch here, not
copied): token + learned position embeddings, pre-norm blocks with bias-free
LayerNorm, causal self-attention with one fused bias-free QKV projection and
``F.scaled_dot_product_attention(is_causal=True)``, a 4x bias-free GELU MLP,
a final LayerNorm and an output head tied to the token embedding.
``bias=True`` (nanoGPT's switch of the same name) adds biases to every
Linear and LayerNorm, to mirror a JAX config with ``model.use_bias=True``.

Training matches nanoGPT's ``train.py`` defaults where they matter for speed:
AdamW with betas (0.9, 0.95), weight decay 0.1 on parameters with 2 or more
dimensions only, and gradient clipping to global norm 1.0.  No
``torch.compile`` is used (it needs a C++ toolchain on CPU and is not what
this reference measures).

Run as a script::

    python -m benchmarks.torch_reference --layers 4 --heads 4 --embed 128 \
        --block 64 --batch 12 --vocab 65

``time_steps`` is framework-agnostic: the JAX side imports it and passes a
step function that blocks until its work is done.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GPTConfig",
    "GPT",
    "make_torch_train_step",
    "time_steps",
    "expected_num_params",
    "flops_per_step",
    "fused_adamw_supported",
]

WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
INIT_STD = 0.02


class GPTConfig:
    """Shapes and dropout of the reference GPT."""

    def __init__(self, num_layers: int, num_heads: int, embed_dim: int,
                 block_size: int, vocab_size: int, dropout: float = 0.0,
                 gelu_approximate: str = "none", bias: bool = False) -> None:
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if gelu_approximate not in ("none", "tanh"):
            raise ValueError("gelu_approximate must be 'none' or 'tanh'")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.embed_dim = embed_dim
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.dropout = dropout
        self.gelu_approximate = gelu_approximate
        self.bias = bias  # nanoGPT's `bias` switch: biases in Linear and LayerNorm.


class _SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        # (B, T, 3D) -> three (B, H, T, D/H) tensors.
        q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_drop(self.proj(y))


class _MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.embed_dim, 4 * cfg.embed_dim, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.approximate = cfg.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class _Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.embed_dim, bias=cfg.bias)
        self.attn = _SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.embed_dim, bias=cfg.bias)
        self.mlp = _MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """nanoGPT-architecture decoder; ``forward(idx, targets)`` gives (logits, loss)."""

    def __init__(self, cfg: GPTConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.embed_dim, bias=cfg.bias)
        self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self._init_weights(generator)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        # N(0, 0.02) for every matrix, with residual output projections scaled
        # down by 1/sqrt(2 * num_layers) (GPT-2 scheme); LayerNorm gains are 1,
        # biases (when bias=True) 0.
        resid_std = INIT_STD / math.sqrt(2 * self.cfg.num_layers)
        for name, p in self.named_parameters():  # tied weight appears once
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() < 2:
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, resid_std, generator=generator)
            else:
                nn.init.normal_(p, 0.0, INIT_STD, generator=generator)

    def forward(self, idx: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.shape[1]
        if t > self.cfg.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        """Unique trainable parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())


def expected_num_params(num_layers: int, embed_dim: int, block_size: int,
                        vocab_size: int) -> int:
    """Closed-form parameter count of the architecture above.

    V*D (tied embedding/head) + T*D (positions) + L*(12*D^2 + 2*D)
    (QKV 3D^2, attn proj D^2, MLP 8D^2, two LayerNorm gains) + D (final LN).
    """
    d = embed_dim
    return vocab_size * d + block_size * d + num_layers * (12 * d * d + 2 * d) + d


def flops_per_step(num_params_no_pos: int, num_layers: int, embed_dim: int,
                   block_size: int, batch_size: int) -> int:
    """Training FLOPs per step, nanoGPT/PaLM convention.

    ``6 * N + 12 * L * D * T`` per token (forward + backward, attention
    scores counted without the causal halving), times ``B * T`` tokens. ``N``
    excludes the position embedding, as nanoGPT's ``estimate_mfu`` does.
    """
    per_token = 6 * num_params_no_pos + 12 * num_layers * embed_dim * block_size
    return per_token * batch_size * block_size


def fused_adamw_supported(device: str = "cpu") -> bool:
    """True when ``torch.optim.AdamW(fused=True)`` constructs and steps on ``device``."""
    try:
        p = nn.Parameter(torch.zeros(2, 2, device=device))
        p.grad = torch.ones_like(p)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def make_torch_train_step(num_layers: int, num_heads: int, embed_dim: int,
                          block_size: int, vocab_size: int, batch_size: int,
                          learning_rate: float = 1e-3, seed: int = 0, *,
                          dropout: float = 0.0, num_threads: int | None = None,
                          fused: bool | None = None,
                          gelu_approximate: str = "none", bias: bool = False,
                          ) -> tuple[Callable[[], float], dict[str, Any]]:
    """Build the reference model, AdamW and a fixed random batch.

    Returns ``(step, info)``. ``step()`` runs one full training step (forward,
    cross-entropy loss, backward, clip to global norm 1.0, AdamW update) on
    the same batch each call and returns that step's loss (computed before
    the update) as a float. ``info`` holds num_params, torch_version,
    threads, fused_adamw and flops_per_step.

    ``num_threads`` (default ``os.cpu_count()``) is applied process-wide with
    ``torch.set_num_threads``. ``fused=None`` uses fused AdamW when it works
    on CPU, else the default implementation.
    """
    threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)

    cfg = GPTConfig(num_layers, num_heads, embed_dim, block_size, vocab_size,
                    dropout=dropout, gelu_approximate=gelu_approximate, bias=bias)
    model = GPT(cfg, generator=gen)
    model.train()

    if fused is None:
        fused = fused_adamw_supported("cpu")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY},
              {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if fused else {}
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=BETAS, **extra)

    # Fixed batch: targets are the inputs shifted by one token.
    seq = torch.randint(0, vocab_size, (batch_size, block_size + 1), generator=gen)
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    params = list(model.parameters())

    def step() -> float:
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        return loss.item()

    n = model.num_params()
    info: dict[str, Any] = {
        "num_params": n,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "fused_adamw": bool(fused),
        "flops_per_step": flops_per_step(n - block_size * embed_dim, num_layers,
                                         embed_dim, block_size, batch_size),
        "tokens_per_step": batch_size * block_size,
    }
    return step, info


def time_steps(step_fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, Any]:
    """Time ``step_fn`` with ``time.perf_counter``; framework-agnostic.

    Calls it ``warmup`` times untimed, then ``repeats`` times timed.
    ``step_fn`` must not return before its work is finished (a JAX step
    should end with ``block_until_ready`` or a host transfer). Returns
    median_s, min_s, mean_s, max_s, times_s (per-call seconds), warmup,
    repeats and last (the last return value of ``step_fn``).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError("need warmup >= 0 and repeats >= 1")
    result: Any = None
    for _ in range(warmup):
        result = step_fn()
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = step_fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "max_s": max(times),
        "times_s": times,
        "warmup": warmup,
        "repeats": repeats,
        "last": result,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: os.cpu_count())")
    p.add_argument("--no-fused", action="store_true",
                   help="use the default (foreach) AdamW instead of fused")
    p.add_argument("--gelu-tanh", action="store_true",
                   help="tanh-approximate GELU instead of exact (nanoGPT uses exact)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: time the reference step, print a table and one JSON line."""
    a = _parse_args(argv)
    step, info = make_torch_train_step(
        a.layers, a.heads, a.embed, a.block, a.vocab, a.batch, a.lr, a.seed,
        num_threads=a.threads, fused=False if a.no_fused else None,
        gelu_approximate="tanh" if a.gelu_tanh else "none")
    first_loss = step()  # also serves as the first warm-up step
    t = time_steps(step, max(a.warmup - 1, 0), a.repeats)
    tok_s = info["tokens_per_step"] / t["median_s"]
    flop_s = info["flops_per_step"] / t["median_s"]
    rows = [
        ("model", f"L={a.layers} H={a.heads} D={a.embed} T={a.block} B={a.batch} V={a.vocab}"),
        ("params", f"{info['num_params']:,}"),
        ("torch", f"{info['torch_version']} threads={info['threads']}"),
        ("fused AdamW", str(info["fused_adamw"])),
        ("step median", f"{t['median_s'] * 1e3:.2f} ms"),
        ("step min / mean", f"{t['min_s'] * 1e3:.2f} / {t['mean_s'] * 1e3:.2f} ms"),
        ("tokens/s", f"{tok_s:,.0f}"),
        ("model FLOP/s", f"{flop_s / 1e9:.2f} GFLOP/s"),
        ("loss first/last", f"{first_loss:.4f} / {t['last']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    record = {
        "framework": "torch",
        "layers": a.layers, "heads": a.heads, "embed": a.embed, "block": a.block,
        "batch": a.batch, "vocab": a.vocab,
        **info,
        "warmup": a.warmup, "repeats": a.repeats,
        "median_s": t["median_s"], "min_s": t["min_s"], "mean_s": t["mean_s"],
        "times_s": t["times_s"], "tokens_per_s": tok_s, "model_flop_per_s": flop_s,
        "loss_first": first_loss, "loss_last": t["last"],
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
