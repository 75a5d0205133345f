"""Preparing the token store in a child process, as a training run (whose
allocator is tuned) does: the same store, the same errors, a prompt stop."""

import contextlib
import multiprocessing
import os
import signal
import types

import numpy as np
import pytest

from conftest import tiny_config
from smallgpt_jax.store import passes, prepare_child, store
from smallgpt_jax.system import runtime
from smallgpt_jax.system.errors import Interrupted, UserError

WORDS = np.array(["the", "king", "shall", "speak", "of", "naïve", "café", "日本語", "🙂", "war"])
SEPARATORS = np.array([" ", " ", ", ", ".\n", "\n\n"])


def write_corpus(path, n_words: int) -> str:
    rng = np.random.default_rng(0)
    text = "".join(w + s for w, s in zip(rng.choice(WORDS, n_words),
                                         rng.choice(SEPARATORS, n_words)))
    path.write_text(text, encoding="utf-8")
    return str(path)


def prepare_as_a_run(monkeypatch) -> None:
    """From now on this process prepares as a tuned training run does; the
    passes fail if they run here (the child imports its own, unpatched)."""
    monkeypatch.setattr(runtime, "allocator_tuned", lambda: True)
    monkeypatch.delenv("SMALLGPT_PREPARE_IN_PROCESS", raising=False)

    def not_here(*args, **kwargs):
        raise AssertionError("passes.run ran in the parent process")
    monkeypatch.setattr(passes, "run", not_here)
    assert prepare_child.in_child()


def left_in(stores: str) -> list[str]:
    return [e for e in os.listdir(stores) if not e.endswith(".lock")]


class Poke:
    """A stop that never stops: at each look it sends SIGINT to the children,
    as a terminal's Ctrl-C reaches the whole process group."""

    def __init__(self):
        self.poked = set()

    @property
    def signum(self):
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):  # It just ended.
                os.kill(child.pid, signal.SIGINT)
            self.poked.add(child.pid)
        return None


def test_child_prepares_the_same_store_and_ignores_ctrl_c(tmp_path, monkeypatch, capfd):
    path = write_corpus(tmp_path / "a.txt", 20_000)
    settings = {"data.path": path, "data.tokenizer": "bpe", "data.vocab_size": 300}
    here = store.open_store(tiny_config(**settings, **{"data.cache_dir": str(tmp_path / "here")}
                                        ).data, verbose=False)
    prepare_as_a_run(monkeypatch)
    poke = Poke()
    there = store.open_store(tiny_config(**settings, **{"data.cache_dir": str(tmp_path / "s")}
                                         ).data, stop=poke)
    err = capfd.readouterr().err
    assert poke.poked  # A child ran, and got Ctrl-C while starting and while preparing...
    assert "Traceback" not in err and "KeyboardInterrupt" not in err  # ...which it ignored.
    assert "preparing (3/3: encoding)" in err  # Its progress reaches our stderr.
    assert there.tokenizer.to_dict() == here.tokenizer.to_dict()
    np.testing.assert_array_equal(there.splits().train, here.splits().train)
    np.testing.assert_array_equal(there.splits().val, here.splits().val)
    same = {"created": 0, "digest": 0}  # (The digest covers the time it was made.)
    assert {**there.manifest, **same} == {**here.manifest, **same}
    assert multiprocessing.active_children() == []


def test_an_error_in_the_child_is_raised_here(tmp_path, monkeypatch):
    path = write_corpus(tmp_path / "a.txt", 3_000)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:  # One Latin-1 byte, deep inside.
        f.write(raw[:5000] + b"\xe9" + raw[5000:])
    config = tiny_config(**{"data.path": path, "data.cache_dir": str(tmp_path / "s")})
    with pytest.raises(UserError, match="not valid UTF-8: byte 0xe9 at offset 5000") as here:
        store.open_store(config.data, verbose=False)
    prepare_as_a_run(monkeypatch)
    with pytest.raises(UserError) as there:
        store.open_store(config.data, verbose=False)
    assert str(there.value) == str(here.value)
    assert "Traceback" in str(there.value.__cause__)  # The child's, kept.
    assert left_in(str(tmp_path / "s")) == []

    # An unexpected error: the same type, with the child's traceback as its cause.
    incomplete = types.SimpleNamespace(tokenizer="bpe", end_of_text=False, train_fraction=0.9)
    with pytest.raises(AttributeError, match="has no attribute") as bug:
        prepare_child.run([write_corpus(tmp_path / "b.txt", 100)], incomplete, None,
                          str(tmp_path), False)
    assert "passes.py" in str(bug.value.__cause__)


def test_a_stop_ends_the_child_and_keeps_nothing(tmp_path, monkeypatch):
    path = write_corpus(tmp_path / "a.txt", 600_000)  # About 3.5 MB: a second or so.
    stores = str(tmp_path / "s")
    config = tiny_config(**{"data.path": path, "data.cache_dir": stores,
                            "data.tokenizer": "word", "data.vocab_size": 12})
    prepare_as_a_run(monkeypatch)

    class StopWhenWriting:  # As a SIGTERM would, once the token files are half written.
        children = []

        @property
        def signum(self):
            if any(os.path.exists(os.path.join(stores, e, "train.bin")) for e in left_in(stores)):
                self.children = [c for c in multiprocessing.active_children()]
                return signal.SIGTERM
            return None
    stop = StopWhenWriting()
    with pytest.raises(Interrupted, match="stopped while preparing the corpus"):
        store.open_store(config.data, verbose=False, stop=stop)
    assert len(stop.children) == 1  # It was still preparing...
    assert stop.children[0].exitcode == -signal.SIGTERM  # ...and was ended,
    assert left_in(stores) == []  # leaving nothing.


def test_a_child_that_dies_is_an_error(tmp_path, monkeypatch):
    path = write_corpus(tmp_path / "a.txt", 1_000)
    stores = str(tmp_path / "s")
    prepare_as_a_run(monkeypatch)

    class Kill:  # As the kernel's out-of-memory killer would.
        @property
        def signum(self):
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
            return None
    with pytest.raises(UserError, match=r"died \(killed by signal 9.*start over"):
        store.open_store(tiny_config(**{"data.path": path, "data.cache_dir": stores}).data,
                         verbose=False, stop=Kill())
    assert left_in(stores) == []
