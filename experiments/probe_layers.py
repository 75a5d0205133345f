r"""What does each layer know? Linear probes on a Tiny Shakespeare model.

    python experiments/probe_layers.py --workdir=runs/char_cpu

Task: for every character of held-out text, is it part of a speaker's name
line ("ROMEO:", "First Citizen:")? The model never saw these labels; a
logistic regression ("probe") is trained on the hidden state of each layer
(smallgpt_jax.analysis.representations) to predict them, and tested on other text.
Baselines, given the same causal view as the model: the current character
alone (one-hot), and the bag of characters of the last block_size characters
(counts, order thrown away) plus the current one. The model is causal: at
the 'R' of "ROMEO:" nothing yet says it is a name, so no probe can be perfect.

Text: the validation split (the last 10%, which the model did not train on);
the probe trains on its first --train_chars characters and is tested on the
next --test_chars. Prints a table of accuracy and F1 (of the 'speaker line'
class, rarer: accuracy alone rewards always saying 'no').
"""

import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from smallgpt_jax.cli import app as cli  # noqa: E402
from smallgpt_jax.system import runtime  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/char_cpu",
                               "A char model trained on Tiny Shakespeare.")
_TRAIN = flags.DEFINE_integer("train_chars", 60000, "Characters the probes train on.")
_TEST = flags.DEFINE_integer("test_chars", 20000, "Characters the probes are tested on.")
_STEPS = flags.DEFINE_integer("steps", 300, "Full-batch Adam steps per probe.")

SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]*:$")


def speaker_labels(text: str) -> np.ndarray:
    """1 for every character of a speaker line, its newline included: a
    name and a colon on a line of its own, after a blank line (a verse line
    can end in a colon too)."""
    out, previous = [], ""
    for line in text.splitlines(True):
        name = SPEAKER.match(line.rstrip("\n")) and previous.strip() == ""
        out += [int(bool(name))] * len(line)
        previous = line
    return np.array(out, np.int32)


def bag_of_characters(ids: np.ndarray, vocab: int, window: int) -> np.ndarray:
    """[n, 2V]: counts of each character among the last `window` (this one
    included), divided by `window`, then the current character one-hot."""
    onehot = np.eye(vocab, dtype=np.float32)[ids]
    csum = np.cumsum(onehot, axis=0)
    before = np.concatenate([np.zeros((window, vocab), np.float32), csum[:-window]])[:len(ids)]
    return np.concatenate([(csum - before) / window, onehot], axis=1)


def probe(x_train, y_train, x_test, y_test, steps: int) -> tuple[float, float]:
    """(accuracy, F1 of class 1) of a logistic regression, standardised features."""
    import jax
    import jax.numpy as jnp
    import optax
    # A feature constant in training (a character it never has) is left unscaled.
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    params = {"w": jnp.zeros(xs.shape[1]), "b": jnp.zeros(())}
    tx = optax.adam(0.05)

    def loss(p):
        logits = xs @ p["w"] + p["b"]
        fit = optax.sigmoid_binary_cross_entropy(logits, y_train).mean()
        return fit + 1e-4 * (p["w"] ** 2).sum()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    pred = np.asarray(xt @ params["w"] + params["b"] > 0)
    tp = (pred & (y_test == 1)).sum()
    f1 = 2 * tp / max(1, pred.sum() + (y_test == 1).sum())
    return float((pred == y_test).mean()), float(f1)


def main(argv: list[str]) -> None:
    runtime.setup_process()  # First: before JAX starts threads.
    from smallgpt_jax import data  # After flags: fast --help.
    from smallgpt_jax.analysis import representations
    from smallgpt_jax.checkpoint.reader import load_params
    with cli.user_errors():
        params, model_config, tok = load_params(_WORKDIR.value)
        if tok.kind != "char":
            cli.fail(f"{_WORKDIR.value} has a {tok.kind} tokenizer; this probe needs a char model.")
        _, val = data.split_text(data.read_text(data.find_dataset("tinyshakespeare")), 0.9)
        n_train, n = _TRAIN.value, _TRAIN.value + _TEST.value
        text = val[:n]
        states = representations.hidden_states(params, model_config, tok, text)
    y = speaker_labels(text)
    ids = tok.encode(text)
    features = {"majority class (always 'no')": None,
                "current character (one-hot)": np.eye(tok.vocab_size, dtype=np.float32)[ids],
                f"bag of the last {model_config.block_size} characters + current":
                    bag_of_characters(ids, tok.vocab_size, model_config.block_size)}
    for layer in range(states.shape[0]):
        name = "layer 0 (embeddings)" if layer == 0 else f"layer {layer}"
        features[name] = states[layer]
    print(f"{n_train} training / {n - n_train} test characters, "
          f"{y[n_train:].mean():.1%} of test characters in speaker lines")
    print("| features | test accuracy | F1 (speaker line) |\n|---|---|---|")
    for name, x in features.items():
        if x is None:
            acc, f1 = float((y[n_train:] == 0).mean()), 0.0
        else:
            acc, f1 = probe(x[:n_train], y[:n_train], x[n_train:], y[n_train:], _STEPS.value)
        print(f"| {name} | {acc:.3f} | {f1:.3f} |")


if __name__ == "__main__":
    cli.run_app(main)
