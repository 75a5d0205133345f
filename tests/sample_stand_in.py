"""The sampling CLI with a stand-in for `smallgpt_jax.checkpoint.reader`.

    PYTHONPATH=tests python -m sample_stand_in --workdir=... [cli/sample.py flags]

A real checkpoint needs a training run; this stand-in lets
test_sample_cli.py run the CLI end to end on a model the test built and saved
with `save` (parameters as msgpack, the model config as JSON, the tokenizer).
Its `load_checkpoint` has the real one's signature and writes the step it was
asked for on stderr, so tests can check that --step gets through.
"""

import json
import os
import sys
import types

import flax.serialization
import ml_collections

from smallgpt_jax.system.errors import UserError
from smallgpt_jax.tokenizers import tokenizer as tokenizer_lib

PARAMS_FILE = "stand_in_params.msgpack"
TOKENIZER_FILE = "stand_in_tokenizer.json"


def save(workdir: str, params, model_config, tokenizer) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, PARAMS_FILE), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(
            flax.serialization.to_state_dict(params)))
    with open(os.path.join(workdir, "stand_in_model_config.json"), "w") as f:
        json.dump(model_config.to_dict(), f)
    # The checkpoint's tokenizer, and the workdir's copy of it (which the CLI must not read).
    tokenizer_lib.save(tokenizer, os.path.join(workdir, TOKENIZER_FILE))
    tokenizer_lib.save(tokenizer, os.path.join(workdir, "tokenizer.json"))


def load_checkpoint(workdir: str, step: str | int = "latest"):
    print(f"stand-in load_params(step={step!r})", file=sys.stderr)
    path = os.path.join(workdir, PARAMS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint in {workdir}")
    with open(path, "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    with open(os.path.join(workdir, "stand_in_model_config.json")) as f:
        model_config = ml_collections.FrozenConfigDict(json.load(f))
    # The stand-in has one set of parameters, under every step name.
    return params, model_config, tokenizer_lib.load(os.path.join(workdir, TOKENIZER_FILE)), step


if __name__ == "__main__":
    stand_in = types.ModuleType("smallgpt_jax.checkpoint.reader")
    stand_in.load_checkpoint = load_checkpoint
    sys.modules["smallgpt_jax.checkpoint.reader"] = stand_in
    from smallgpt_jax.cli import sample
    sample.run()
