"""Text in, text out: a prompt's token ids, the new tokens decoded (or
streamed) as text, and `sample_texts`, which does both around
generation.py's `generate` (the token-level loop).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from smallgpt_jax.generation import generate
from smallgpt_jax.system.errors import UserError



def encode_prompt(tokenizer, text: str) -> np.ndarray:
    """Token ids of a prompt. An empty prompt starts from a newline (token 0
    if the vocabulary has no newline). Characters outside the vocabulary
    raise one UserError that lists them."""
    if text:
        try:
            return tokenizer.encode(text)
        except UserError as e:
            raise UserError(f"prompt: {e}") from None
    try:
        ids = tokenizer.encode("\n")
    except UserError:
        ids = np.zeros(0, np.int32)
    return ids if len(ids) else np.zeros(1, np.int32)


class TextStream:
    """Turns token ids into text piece by piece, for printing as they arrive.

    A token can end in the middle of a multi-byte UTF-8 character (byte
    tokenizers, byte-level BPE); such a piece decodes to U+FFFD, so it is held
    back until the next tokens complete it (at most a few).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, ids) -> str:
        self.pending.extend(int(i) for i in np.asarray(ids).reshape(-1))
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


def sample_texts(params, model_config, tokenizer, prompt: str, max_new_tokens: int,
                 seed: int, *, stream: Callable[[str], None] | None = None,
                 **options) -> list[str]:
    """`num_samples` texts, each the prompt followed by its continuation.

    `options` go to `generate` (num_samples, temperature, top_k, top_p,
    use_cache, slide_step). With `stream`, the first sample's continuation is
    passed to it piece by piece while it is generated.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    on_token = None
    if stream is not None:
        text_stream = TextStream(tokenizer)
        on_token = lambda ids_B: stream(text_stream.push(ids_B[:1]))
    ids_BN = generate(params, model_config, prompt_ids, max_new_tokens,
                      jax.random.key(seed), on_token=on_token, **options)
    if stream is not None:
        stream(text_stream.flush())
    return [prompt + tokenizer.decode(ids_N) for ids_N in ids_BN]
