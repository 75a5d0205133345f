"""A lower bound on the memory a training run needs, from its config alone.

config.validate refuses a config whose bound is more than this machine has,
with one line, instead of a run that allocates until the machine swaps (a
batch of a hundred million sequences, a billion evaluation batches). Each
part counts only what must exist at once, so a config that is refused could
never have run here; one that passes may still not fit (XLA's temporaries,
one state copy per CPU device are not counted).

- The parameters (float32) with AdamW's two moments: 12 bytes a parameter,
  counting only the weight matrices and tables (biases and norms are small).
  They pass through host memory at every save, whatever the device.
- The token batches, built on the host: one training batch [B, T+1] and the
  evaluation's 2 x eval_steps batches (all made once, kept for the run), int32.
- When JAX computes on the host's CPU (no GPU or TPU plugin, or
  JAX_PLATFORMS=cpu), the batches' copies on the devices, and one
  micro-batch's activations that the backward pass keeps: per layer the
  block's input [b, T, D], the feed-forward hidden [b, T, F] and one
  attention matrix [b, H, T, T] (explicit or XLA's fused attention both form
  it on a CPU), and the logits [b, T, V].
"""

from __future__ import annotations

import copy
import importlib.util
import os

from smallgpt_jax.system import runtime
from smallgpt_jax.system.errors import UserError

_OTHER_ACCELERATORS = ("libtpu", "jax_rocm7_plugin", "jax_rocm60_plugin")  # CUDA: system/runtime.py.


def machine_memory() -> int:
    """Bytes of memory this process may use: the physical memory, or the
    container's (cgroup v2) limit where that is lower; 0 if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit)) if total else int(limit)
    except OSError:
        pass
    return total


def computes_on_host(environ: dict) -> bool:
    """Whether JAX will compute on this host's CPU, known without starting it."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    return not (runtime.may_use_cuda(environ) or any(
        importlib.util.find_spec(m) is not None for m in _OTHER_ACCELERATORS))


def vocabulary_floor(data) -> int:
    """The fewest tokens the vocabulary can have: bpe and word learn exactly
    vocab_size (or refuse), byte has 256; a character vocabulary is the
    corpus's, unknown before it is read."""
    return {"bpe": data.vocab_size, "word": data.vocab_size, "byte": 256}.get(
        data.tokenizer, 0)


def parameter_floor(model, data) -> int:
    """The entries of the model's weight matrices and tables (model.py);
    `model`, `data`: the config's sections."""
    m = model
    D, F = m.embed_dim, m.mlp_ratio * m.embed_dim
    mlp = 3 * int(2 * F / 3) * D if m.activation == "swiglu" else 2 * F * D
    embeddings = vocabulary_floor(data) * D * (1 if m.tie_embeddings else 2)
    positions = m.block_size * D if m.pos_encoding == "learned" else 0
    return m.num_layers * (4 * D * D + mlp) + embeddings + positions


def parts(model, train, data, environ: dict) -> list[tuple[str, int, list[str]]]:
    """(what, bytes at least, the fields that set it), largest first."""
    m, t = model, train
    T, V = m.block_size, vocabulary_floor(data)
    rows = 4 * (T + 1)  # Bytes of one int32 sequence of T+1 tokens.
    vocab = ["data.vocab_size"] if data.tokenizer in ("bpe", "word") else []
    host = computes_on_host(environ)
    copies = 2 if host else 1  # The host's, and the devices' when they are the host.
    out = [("the parameters and AdamW state", 12 * parameter_floor(m, data),
            ["model.num_layers", "model.embed_dim", "model.mlp_ratio", *vocab]),
           ("the training batch", copies * t.batch_size * rows,
            ["train.batch_size", "model.block_size"]),
           ("the evaluation batches", copies * 2 * t.eval_steps * t.batch_size * rows,
            ["train.eval_steps", "train.batch_size", "model.block_size"])]
    if host:
        b, F = t.batch_size // t.grad_accum_steps, m.mlp_ratio * m.embed_dim
        width = 2 if m.dtype in ("bfloat16", "float16") else 4
        per_layer = b * T * (m.embed_dim + F + m.num_heads * T)
        out.append(("one micro-batch's activations",
                    width * (m.num_layers * per_layer + b * T * V),
                    ["train.batch_size", "train.grad_accum_steps", "model.block_size",
                     "model.num_layers", *vocab]))
    return sorted(out, key=lambda part: -part[1])


def need(model, train, data, environ: dict) -> int:
    return sum(n for _, n, _ in parts(model, train, data, environ))


def largest_that_fits(sections: dict, field: str, environ: dict, available: int) -> int:
    """The largest value of `field` (the others as they are) whose need fits
    in `available`, by bisection (the need grows with it); 0 if none does.
    `sections`: {"model": ..., "train": ..., "data": ...}, left as they are."""
    section, name = field.split(".")
    trial = {**sections, section: copy.deepcopy(sections[section])}
    lo, hi = 0, trial[section][name]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial[section][name] = mid
        lo, hi = (mid, hi) if need(**trial, environ=environ) <= available else (lo, mid - 1)
    return lo


def gigabytes(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def check(model, train, data, environ: dict | None = None,
          available: int | None = None) -> None:
    """Refuses, with one line, a config (its `model`, `train` and `data`
    sections) whose lower bound exceeds this machine's memory."""
    environ = os.environ if environ is None else environ
    available = machine_memory() if available is None else available
    sections = {"model": model, "train": train, "data": data}
    total = need(**sections, environ=environ)
    if not available or total <= available:
        return
    what, n, fields = parts(**sections, environ=environ)[0]
    values = ", ".join(f"{f}={sections[f.split('.')[0]][f.split('.')[1]]}" for f in fields)
    advice = "make those smaller"
    for field in fields:  # The first of them that alone can make it fit.
        fits = 0 if field == "train.grad_accum_steps" else largest_that_fits(
            sections, field, environ, available)
        if fits:
            advice = f"config.{field} fits up to {fits:,} here, the rest as it is"
            break
    raise UserError(
        f"this config needs at least {gigabytes(total)} of memory, {gigabytes(n)} of it for "
        f"{what} ({values}), and this machine has {gigabytes(available)}; {advice}.")
